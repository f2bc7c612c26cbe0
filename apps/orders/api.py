"""The orders service's REST surface: place an order, list orders, read one.

Thin adapters over ``apps.orders.logic``, which the RPC handlers call too: placing an order
here reserves its stock through the inventory service with the caller's token, exactly as
``orders.create_order`` does. Customers see their own orders; ``orders.view_all_orders``
(staff, operators) sees every order.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import django_filters
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orders import logic
from apps.orders.errors import OrderNotFound
from apps.orders.models import Order
from apps.orders.schemas import CreateOrder
from cliffracer_core.contrib.rest.auth import calls_as
from cliffracer_core.contrib.rest.contracts import validate_as
from cliffracer_core.contrib.rest.lists import ListApi
from cliffracer_core.contrib.rest.permissions import HasPermissions
from cliffracer_core.contrib.rest.schema import RpcErrorSerializer


class OrderLineOutputSerializer(serializers.Serializer):
    sku = serializers.CharField()
    name = serializers.CharField()
    quantity = serializers.IntegerField()
    unit_price = serializers.DecimalField(max_digits=10, decimal_places=2)
    line_total = serializers.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ref_name = "OrderLine"


class OrderOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    reference = serializers.UUIDField()
    customer_id = serializers.IntegerField()
    customer_email = serializers.EmailField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    total = serializers.DecimalField(max_digits=12, decimal_places=2)
    failure_reason = serializers.CharField()
    lines = OrderLineOutputSerializer(many=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    class Meta:
        ref_name = "Order"


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time, compared in UTC.

    ISO 8601 allows offsets PostgreSQL refuses (``+22:18``); in UTC every valid instant is fine.
    """

    def filter(self, queryset: Any, value: Any) -> Any:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return super().filter(queryset, value)


class OrderFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Order.Status.choices)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Order
        # customer_id narrows the list of someone who sees every order.
        fields = ["status", "customer_id"]


def own_orders_only(user: Any) -> int | None:
    """The customer whose orders ``user`` may see: their own, or everyone's (None)."""
    return None if user.has_perm("orders.view_all_orders") else user.pk


def error(description: str) -> OpenApiResponse:
    """A response with the error body services answer with."""
    return OpenApiResponse(RpcErrorSerializer, description=description)


NOT_AUTHENTICATED = OpenApiResponse(description="No valid credentials.")


class OrderListCreateApi(ListApi):
    """List orders (GET) and place one for the authenticated user (POST)."""

    permission_classes = [
        HasPermissions("orders.view_order", methods=["GET"]),
        HasPermissions("orders.add_order", methods=["POST"]),
    ]
    parser_classes = [JSONParser]
    filterset_class = OrderFilter

    class InputSerializer(serializers.Serializer):
        class LineSerializer(serializers.Serializer):
            sku = serializers.CharField(max_length=64)
            quantity = serializers.IntegerField(min_value=1, max_value=1_000_000)

            class Meta:
                ref_name = "OrderPlaceLine"

        lines = LineSerializer(many=True, allow_empty=False, max_length=100)
        payment_token = serializers.CharField(
            max_length=200, help_text="A token starting with tok_decline is declined."
        )

        class Meta:
            ref_name = "OrderPlace"

    def get_queryset(self) -> Any:
        return logic.order_list(customer_id=own_orders_only(self.request.user))

    @extend_schema(
        summary="List orders",
        description="Your orders, newest first; every order with orders.view_all_orders.",
        responses={
            200: OrderOutputSerializer(many=True),
            400: OpenApiResponse(description="A filter's value is not valid."),
            401: NOT_AUTHENTICATED,
            403: OpenApiResponse(description="You lack orders.view_order."),
        },
    )
    def get(self, request: Request) -> Response:
        return self.list_response(OrderOutputSerializer)

    @extend_schema(
        summary="Place an order",
        description=(
            "Reserves the stock in the inventory service and stores the order as "
            "pending_payment; the payment is taken asynchronously, so poll the order until "
            "it is paid or payment_failed (or cancelled, when it is not paid in time). The "
            "customer is the authenticated user."
        ),
        request=InputSerializer,
        responses={
            201: OrderOutputSerializer,
            400: OpenApiResponse(description="The body is not valid, or you have no email."),
            401: NOT_AUTHENTICATED,
            403: OpenApiResponse(
                description="You lack orders.add_order, or a permission inventory requires."
            ),
            404: error("A sku does not exist (type unknown_sku; details name them)."),
            409: error("Not enough stock (type out_of_stock; details say how much there is)."),
            503: error("The inventory service could not be asked; nothing was stored."),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = request.user
        if not user.email:
            raise serializers.ValidationError(
                {"email": ["Your account has no email address; orders need one."]}
            )
        # The body as sent (not as DRF cleaned it) is held to the RPC's contract, so REST
        # accepts what orders.create_order accepts and nothing more.
        placing = validate_as(
            CreateOrder,
            {
                "customer_id": user.pk,
                "customer_email": user.email,
                "lines": request.data["lines"],
                "payment_token": request.data["payment_token"],
            },
        )
        with calls_as(request):
            order = logic.order_place(
                customer_id=placing.customer_id,
                customer_email=placing.customer_email,
                lines=[(line.sku, line.quantity) for line in placing.lines],
                payment_token=placing.payment_token,
            )
        location = reverse("orders:detail", kwargs={"order_id": order.pk})
        return Response(
            OrderOutputSerializer(order).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": location},
        )


class OrderDetailApi(APIView):
    """Read one order with its lines."""

    permission_classes = [HasPermissions("orders.view_order")]

    @extend_schema(
        summary="Read an order",
        parameters=[OpenApiParameter("order_id", int, OpenApiParameter.PATH)],
        description="The order with its lines: yours, or any with orders.view_all_orders.",
        responses={
            200: OrderOutputSerializer,
            401: NOT_AUTHENTICATED,
            403: OpenApiResponse(description="You lack orders.view_order."),
            404: error("No such order, or it is another customer's."),
        },
    )
    def get(self, request: Request, order_id: str) -> Response:
        # Any text is routed here, so that an id that is no id is a 404 in the API's own
        # shape rather than Django's HTML page.
        if not order_id.isascii() or not order_id.isdigit():
            raise OrderNotFound(f"No order {order_id}.", details={"order_id": order_id})
        order = logic.order_get(order_id=int(order_id), customer_id=own_orders_only(request.user))
        return Response(OrderOutputSerializer(order).data)
