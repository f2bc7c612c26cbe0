"""REST routes of the notifications service, mounted at ``/api/notifications/``."""

from django.urls import path

from apps.notifications.api import NotificationListApi

app_name = "notifications"

urlpatterns = [
    path("", NotificationListApi.as_view(), name="list"),
]
