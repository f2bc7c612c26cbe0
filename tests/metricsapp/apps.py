from cliffracer_core import ServiceAppConfig


class MetricsAppTestConfig(ServiceAppConfig):
    name = "tests.metricsapp"
    label = "metered"
