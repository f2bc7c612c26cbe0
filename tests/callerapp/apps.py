from cliffracer_core import ServiceAppConfig


class CallerConfig(ServiceAppConfig):
    name = "tests.callerapp"
    label = "caller"
