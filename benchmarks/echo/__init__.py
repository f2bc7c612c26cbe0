"""The echo service of ``benchmarks/rpc_overhead.py``, as an app ``runservice echo`` can run."""
