from cliffracer_core import ServiceAppConfig


class EchoConfig(ServiceAppConfig):
    name = "benchmarks.echo"
    label = "echo"
    verbose_name = "Benchmark echo"
