"""URLs of ``benchmarks/http_serving.py``: the project's URLs plus the two benchmark views."""

from django.urls import path

from benchmarks.http_views import ConstantView, OneRpcView
from settings.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    path("bench/constant", ConstantView.as_view(), name="bench-constant"),
    path("bench/rpc", OneRpcView.as_view(), name="bench-rpc"),
    *project_urlpatterns,
]
