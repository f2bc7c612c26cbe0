"""REST routes of the orders service, mounted at ``/api/orders/``."""

from django.urls import path

from apps.orders.api import OrderDetailApi, OrderListCreateApi

app_name = "orders"

urlpatterns = [
    path("", OrderListCreateApi.as_view(), name="list"),
    path("<str:order_id>/", OrderDetailApi.as_view(), name="detail"),
]
