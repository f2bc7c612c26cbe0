from cliffracer_core import ServiceAppConfig


class ServiceAppTestConfig(ServiceAppConfig):
    name = "tests.serviceapp"
    label = "testservice"
