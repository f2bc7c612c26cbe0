from cliffracer_core import ServiceAppConfig


class PaymentsConfig(ServiceAppConfig):
    name = "apps.payments"
    label = "payments"
    verbose_name = "Payments"
