"""``manage.py loadtest``: load against a running system, measured without coordinated omission.

The parts, each in its own module: ``units`` (durations and rates as people type them),
``histogram`` (mergeable latency histograms), ``thresholds`` (``--fail-on``), ``payloads``
(request bodies, examples from the endpoint's schema), ``plan`` (targets, load model, stages,
presets, TOML scenarios), ``generator`` (sending at the planned times), ``results`` (what was
measured, the verdict, the text summary and the JSON) and ``report`` (the HTML page).
"""
