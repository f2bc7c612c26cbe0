"""``manage.py grafana_dashboard``: importable JSON whose queries name only exported metrics."""

import json
import re
from collections.abc import Callable

from cliffracer_core.contrib.metrics.grafana import expressions
from cliffracer_core.core.apps import service_app_configs
from cliffracer_core.core.errors import CLIENT_ERROR, SERVER_ERROR, error_class
from tests.test_metrics import (
    SETTINGS,
    free_port_range,
    manage,
    metrics_url,
    requests,
    scrape,
    start,
)

# Words of PromQL that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset", "inf", "nan"}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    # Drop what holds label names and values, ranges and grouping: only selectors remain.
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", stripped)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        following = stripped[match.end() :].lstrip()
        if following.startswith("("):  # a function: rate(, sum(, histogram_quantile(
            continue
        if match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_reads_selectors_only():
    expression = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{service="x", le!="1"}[5m]))) '
        "/ on (service) group_left b_total + count by (service) (c)"
    )
    assert metric_names(expression) == {"a_bucket", "b_total", "c"}


def dashboard_json(*arguments: str, **environment: str) -> dict:
    result = manage("grafana_dashboard", *arguments, **environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dashboard_has_the_structure_grafana_imports(tmp_path):
    board = dashboard_json()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"]
    variables = board["templating"]["list"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= (
        variables[0].items()
    )
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(panel_id, int) for panel_id in ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        position = panel["gridPos"]
        assert all(isinstance(position[key], int) for key in ("h", "w", "x", "y"))
        assert position["w"] > 0 and position["h"] > 0
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24
        covered = {
            (x, y)
            for x in range(position["x"], position["x"] + position["w"])
            for y in range(position["y"], position["y"] + position["h"])
        }
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered
        if panel["type"] == "row":
            assert panel["panels"] == [] and panel["collapsed"] is False
            continue
        assert panel["type"] == "timeseries"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids))
        assert all(target["expr"] for target in panel["targets"])
    # A row per installed service, in name order, after the overview.
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    names = sorted(
        config.service_class.service_name()
        for config in service_app_configs()
        if config.service_class
    )
    assert rows == ["Overview", *names]
    # Each service row has the five RPC panels (when it has endpoints), 5xx and 4xx apart.
    titles = [panel["title"] for panel in panels]
    start_index = titles.index("orders")
    assert titles[start_index + 1 : start_index + 6] == [
        "Requests/s",
        "Server errors/s (5xx)",
        "Client errors/s (4xx)",
        "Latency",
        "In flight",
    ]
    latency = next(panel for panel in panels[start_index:] if panel["title"] == "Latency")
    assert [target["legendFormat"] for target in latency["targets"]] == ["p50", "p95", "p99"]
    assert all(
        target["expr"].startswith("histogram_quantile(")
        and 'cliffracer_rpc_duration_seconds_bucket{service="orders"}' in target["expr"]
        for target in latency["targets"]
    )

    output = tmp_path / "dashboard.json"
    result = manage("grafana_dashboard", "--output", str(output), "--title", "Shop")
    assert result.returncode == 0, result.stderr
    assert json.loads(output.read_text())["title"] == "Shop"


def code_matcher(expression: str) -> Callable[[str], bool]:
    """The code label matcher of an expression, as a Python pattern that matches what it
    selects (PromQL's regular expressions are anchored at both ends)."""
    [(operator, pattern)] = re.findall(r'code(=~|!~)"([^"]*)"', expression)
    anchored = re.compile(f"(?:{pattern})")
    if operator == "=~":
        return lambda code: anchored.fullmatch(code) is not None
    return lambda code: anchored.fullmatch(code) is None


def test_the_dashboard_shows_server_and_client_errors_apart():
    board = dashboard_json()
    by_title: dict[str, list[dict]] = {}
    for panel in board["panels"]:
        by_title.setdefault(panel["title"], []).append(panel)
    assert "Errors/s" not in by_title  # no panel adds refusals and failures up
    classes = {
        "Server errors/s (5xx) by service": SERVER_ERROR,
        "Client errors/s (4xx) by service": CLIENT_ERROR,
        "Server errors/s (5xx)": SERVER_ERROR,
        "Client errors/s (4xx)": CLIENT_ERROR,
    }
    codes = ["200", "400", "401", "403", "404", "408", "409", "413", "422", "499"]
    codes += ["500", "502", "503", "504", "599", "600", "999"]
    for title, expected in classes.items():
        panels = by_title[title]
        # The overview once; then one per service with endpoints.
        assert len(panels) == (1 if title.endswith("by service") else len(by_title["Latency"]))
        for panel in panels:
            [target] = panel["targets"]
            assert "cliffracer_rpc_requests_total" in target["expr"]
            selects = code_matcher(target["expr"])
            # The same split as the console's (cliffracer_core.core.errors.error_class).
            selected = [code for code in codes if selects(code)]
            assert selected == [
                code for code in codes if code != "200" and error_class(int(code)) == expected
            ], title


def test_every_query_names_metrics_a_runservice_process_exports(nats_server, runservice_process):
    # The metered test service has endpoints, an event handler and timers: every kind of panel.
    board = dashboard_json(**SETTINGS)
    titles = {panel["title"] for panel in board["panels"]}
    assert {"metered", "Events/s", "Timer runs"} <= titles
    used = set().union(*(metric_names(expression) for expression in expressions(board)))
    assert used, "no metric names found in the dashboard"

    process = start(runservice_process, free_port_range(5))
    url = metrics_url(process, nats_server.url)
    requests(nats_server.url, [("rpc.metered.echo", b'{"text": "x"}')])
    exported = {name for name, _ in scrape(url)}
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert all(name.startswith("cliffracer_") for name in used)
