"""The console's routes, included under ``admin/`` before the admin site's own.

A service's page is ``services/<name>/`` and service names are NATS subject tokens (letters,
digits, ``_`` and ``-``), so the JSON views end in ``.json`` and the errors page lives beside
``services/``, where no service name can take their place.
"""

from django.urls import path

from cliffracer_core.contrib.operations import views

app_name = "operations"

urlpatterns = [
    path("services/", views.services, name="services"),
    path("services/status.json", views.services_status, name="services-status"),
    path("services/<str:name>/", views.service, name="service"),
    path("services/<str:name>/status.json", views.service_status, name="service-status"),
    path("service-errors/", views.errors, name="errors"),
    path("service-errors/status.json", views.errors_status, name="errors-status"),
]
