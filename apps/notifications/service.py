"""The notifications service: tells customers what happened to their orders."""

from __future__ import annotations

from apps.notifications import logic
from apps.notifications.schemas import CustomerNotifications, ListForCustomer, NotificationOut
from apps.orders.schemas import OrderEvent
from cliffracer_core import Forbidden, Service, event, rpc
from cliffracer_core.contrib.channels.rules import SubjectRule


class NotificationsService(Service):
    """Tells customers what happened to their orders."""

    # Each user hears their own notifications live; who sees everyone's hears them all.
    subject_rules = [
        SubjectRule("notifications.user.{user_id}", subscribe=()),
        SubjectRule("notifications.user.*", subscribe=("notifications.view_all_notifications",)),
    ]
    # Each notification goes out live on its customer's subject (logic.py); broker
    # permissions allow this service to publish there (docs/deployment.md#broker-permissions).
    publishes = ["notifications.user.*"]

    @event("orders.*", durable=True, idempotent=True, from_system=True)
    def on_order_event(self, order: OrderEvent) -> None:
        logic.notification_for_order_status(
            order_id=order.order_id,
            customer_id=order.customer_id,
            email=order.customer_email,
            status=order.status,
            total=order.total,
        )

    @rpc(permission="notifications.view_notification")
    def list_for_customer(self, request: ListForCustomer) -> CustomerNotifications:
        """The customer's notifications, newest first; a customer may list only their own."""
        caller = self.caller
        if not caller.has_perm("notifications.view_all_notifications") and caller.user_id != str(
            request.customer_id
        ):
            raise Forbidden(
                "You may list only your own notifications.",
                details={"missing_permissions": ["notifications.view_all_notifications"]},
            )
        notifications = logic.notifications_for_customer(
            customer_id=request.customer_id, limit=request.limit
        )
        return CustomerNotifications(
            customer_id=request.customer_id,
            notifications=[
                NotificationOut(
                    id=notification.pk,
                    order_id=notification.order_id,
                    kind=notification.kind,
                    email=notification.email,
                    message=notification.message,
                    created_at=notification.created_at,
                )
                for notification in notifications
            ],
        )
