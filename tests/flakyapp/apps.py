from cliffracer_core import ServiceAppConfig


class FlakyConfig(ServiceAppConfig):
    name = "tests.flakyapp"
    label = "flaky"
