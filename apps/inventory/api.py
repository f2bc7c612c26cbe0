"""The inventory service's REST surface: stock levels.

A thin adapter over ``apps.inventory.logic``, as the ``inventory.get_stock`` RPC is.
"""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import F
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.inventory import logic
from apps.inventory.models import StockItem
from cliffracer_core.contrib.rest.lists import ListApi
from cliffracer_core.contrib.rest.permissions import HasPermissions


class SkuInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    pass


class StockFilter(django_filters.FilterSet):
    sku = SkuInFilter(help_text="One sku, or several separated by commas.")
    name = django_filters.CharFilter(lookup_expr="icontains", help_text="Part of the name.")
    in_stock = django_filters.BooleanFilter(
        method="filter_in_stock", help_text="Only items with (true) or without (false) stock."
    )

    class Meta:
        model = StockItem
        fields: list[str] = []  # the filters above say it all

    def filter_in_stock(self, queryset: Any, name: str, value: bool) -> Any:
        available = {"quantity_on_hand__gt": F("quantity_reserved")}
        return queryset.filter(**available) if value else queryset.exclude(**available)


class StockListApi(ListApi):
    """List stock levels."""

    permission_classes = [HasPermissions("inventory.view_stockitem")]
    filterset_class = StockFilter

    class OutputSerializer(serializers.Serializer):
        sku = serializers.CharField()
        name = serializers.CharField()
        price = serializers.DecimalField(max_digits=10, decimal_places=2)
        quantity_on_hand = serializers.IntegerField()
        quantity_reserved = serializers.IntegerField()
        quantity_available = serializers.IntegerField()

        class Meta:
            ref_name = "StockLevel"

    def get_queryset(self) -> Any:
        return logic.stock_item_list()

    @extend_schema(
        summary="List stock levels",
        description="Every stock item by sku, with what is on hand, reserved and available.",
        responses={
            200: OutputSerializer(many=True),
            400: OpenApiResponse(description="A filter's value is not valid."),
            401: OpenApiResponse(description="No valid credentials."),
            403: OpenApiResponse(description="You lack inventory.view_stockitem."),
        },
    )
    def get(self, request: Request) -> Response:
        return self.list_response(self.OutputSerializer)
