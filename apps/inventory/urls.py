"""REST routes of the inventory service, mounted at ``/api/inventory/``."""

from django.urls import path

from apps.inventory.api import StockListApi

app_name = "inventory"

urlpatterns = [
    path("stock/", StockListApi.as_view(), name="stock-list"),
]
