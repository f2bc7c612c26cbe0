from cliffracer_core import ServiceAppConfig


class DurableTestConfig(ServiceAppConfig):
    name = "tests.durableapp"
    label = "durabletest"
