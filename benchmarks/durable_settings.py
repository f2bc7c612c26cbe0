"""Settings of ``benchmarks/durable_events.py``: the project's own, plus the benchmark's stream.

The stream is declared here, so that the benchmark's publishers, its service and its outbox
relay (each a process of its own) all know ``bench.durable.>`` goes through JetStream.
"""

import os

from settings.settings import *  # noqa: F403

CLIFFRACER = {
    **CLIFFRACER,  # noqa: F405
    "STREAMS": {
        "BENCH": {
            "subjects": ["bench.durable.>"],
            "storage": "file",
            "retention": "limits",
            "max_age": 3600,
            "duplicate_window": 120,
        }
    },
    "OUTBOX_BATCH_SIZE": int(os.environ.get("BENCH_OUTBOX_BATCH", "100")),
}
