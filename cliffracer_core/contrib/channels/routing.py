"""WebSocket routes of the project: ``/ws/events/``."""

from django.urls import path

from cliffracer_core.contrib.channels.consumer import EventsConsumer

websocket_urlpatterns = [
    path("ws/events/", EventsConsumer.as_asgi(), name="events"),
]
