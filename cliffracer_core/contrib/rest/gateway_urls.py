"""Routes of the RPC gateway, included under ``api/rpc/`` by the project's URLs."""

from django.urls import path

from cliffracer_core.contrib.rest.gateway import RpcGatewayView

urlpatterns = [
    path("<str:service>/<str:method>", RpcGatewayView.as_view(), name="rpc-gateway"),
]
