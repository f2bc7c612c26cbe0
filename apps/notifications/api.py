"""The notifications service's REST surface: the notifications sent to customers.

A thin adapter over ``apps.notifications.logic``, as the ``notifications.list_for_customer``
RPC is. Customers see their own; ``notifications.view_all_notifications`` sees everyone's.
"""

from __future__ import annotations

from typing import Any

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from apps.notifications import logic
from apps.notifications.models import Notification
from cliffracer_core.contrib.rest.lists import ListApi
from cliffracer_core.contrib.rest.permissions import HasPermissions


class NotificationFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=Notification.Kind.choices)

    class Meta:
        model = Notification
        # customer_id narrows the list of someone who sees every customer's notifications.
        fields = ["kind", "order_id", "customer_id"]


class NotificationListApi(ListApi):
    """List notifications, newest first."""

    permission_classes = [HasPermissions("notifications.view_notification")]
    filterset_class = NotificationFilter

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        order_id = serializers.IntegerField()
        customer_id = serializers.IntegerField()
        kind = serializers.ChoiceField(choices=Notification.Kind.choices)
        email = serializers.EmailField()
        message = serializers.CharField()
        created_at = serializers.DateTimeField()

        class Meta:
            ref_name = "Notification"

    def get_queryset(self) -> Any:
        user = self.request.user
        everyone = user.has_perm("notifications.view_all_notifications")
        return logic.notification_list(customer_id=None if everyone else user.pk)

    @extend_schema(
        summary="List notifications",
        description="Yours, newest first; everyone's with notifications.view_all_notifications.",
        responses={
            200: OutputSerializer(many=True),
            400: OpenApiResponse(description="A filter's value is not valid."),
            401: OpenApiResponse(description="No valid credentials."),
            403: OpenApiResponse(description="You lack notifications.view_notification."),
        },
    )
    def get(self, request: Request) -> Response:
        return self.list_response(self.OutputSerializer)
