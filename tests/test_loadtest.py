"""The load test's pure parts: histograms, thresholds, example bodies, the open model's
schedule and the verdict. The command against real processes is in test_loadtest_runs.py."""

import json
import random
import re

import pytest
from pydantic import BaseModel, Field

from cliffracer_core.dev.loadtest.baseline import BaselineError, compare, read_baseline
from cliffracer_core.dev.loadtest.generator import invalid_outcome
from cliffracer_core.dev.loadtest.histogram import Histogram
from cliffracer_core.dev.loadtest.payloads import (
    BodyTemplate,
    PayloadError,
    example_from_schema,
    parse_size,
    read_body,
)
from cliffracer_core.dev.loadtest.plan import CLOSED, OPEN, LoadPlan, Stage, Target
from cliffracer_core.dev.loadtest.results import UNBOUNDED, Recorder, summarize
from cliffracer_core.dev.loadtest.scenarios import (
    PRESETS,
    ScenarioError,
    Settings,
    preset_layer,
    scenario_layer,
)
from cliffracer_core.dev.loadtest.targets import TargetSpec
from cliffracer_core.dev.loadtest.thresholds import ThresholdError, parse_thresholds
from cliffracer_core.dev.loadtest.units import parse_duration
from cliffracer_core.testing.plugin import project_root

# Histograms


def exact_percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def test_histogram_percentiles_are_within_a_thousandth_of_the_exact_ones():
    generator = random.Random(7)
    values = [generator.lognormvariate(-6, 1.5) for _ in range(20_000)]
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    assert histogram.count == len(values)
    for fraction in (0.5, 0.9, 0.99, 0.999):
        exact = round(exact_percentile(values, fraction) * 1e6) / 1e6
        assert histogram.percentile(fraction) == pytest.approx(exact, rel=1 / 1024, abs=1e-6)
    assert histogram.percentile(1.0) == round(max(values) * 1e6) / 1e6


def test_histograms_merge_and_survive_json():
    first, second, both = Histogram(), Histogram(), Histogram()
    for index in range(1, 1000):
        (first if index % 2 else second).record(index / 1000)
        both.record(index / 1000)
    first.merge(Histogram.from_json(json.loads(json.dumps(second.to_json()))))
    assert first.to_json() == both.to_json()
    assert first.percentile(0.5) == both.percentile(0.5)


def test_an_empty_histogram_has_no_percentiles():
    assert Histogram().percentile(0.99) is None
    assert Histogram().mean is None


# Thresholds


def summary_with(**figures):
    summary = {
        "requests": 200,
        "ok": 190,
        "errors": 10,
        "server_errors": 2,
        "achieved_rate": 99.0,
        "latency": {"p50": 0.010, "p99": 0.300, "p99.9": 0.5, "mean": 0.02, "max": 0.6},
    }
    summary.update(figures)
    return summary


@pytest.mark.parametrize(
    ("expression", "passed"),
    [
        ("p99<250ms", False),
        ("p99<=300ms", True),
        ("p50<0.011s", True),
        ("median<10", False),
        ("p99.9<1s", True),
        ("max<600ms", False),
        ("errors<=5%", True),
        ("errors<5", False),
        ("errors<=10", True),
        ("server_errors<1.1%", True),
        ("rps>=100", False),
        ("rps>90", True),
        ("requests>=200", True),
    ],
)
def test_thresholds_judge_the_figures(expression, passed):
    [threshold] = parse_thresholds(expression)
    assert threshold.check(summary_with())["passed"] is passed


def test_several_thresholds_are_comma_separated():
    thresholds = parse_thresholds("p99<250ms, errors<1%,rps>=100")
    assert [threshold.metric for threshold in thresholds] == ["p99", "errors", "rps"]
    assert thresholds[0].limit == pytest.approx(0.25)


def test_nothing_measured_meets_no_threshold():
    [threshold] = parse_thresholds("p99<1s")
    assert threshold.check(summary_with(latency={"p99": None}))["passed"] is False
    [share] = parse_thresholds("errors<1%")
    assert share.check(summary_with(requests=0, errors=0))["passed"] is False


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("p99<<3", "is not a threshold"),
        ("p99", "is not a threshold"),
        ("p99<fast", "is not a latency"),
        ("latency<3ms", "unknown metric 'latency'"),
        ("p100<3ms", "unknown metric"),
        ("rps>5%", "only errors take a percentage"),
        ("errors<150%", "between 0 and 100"),
        ("errors<lots", "is not a number"),
        ("p99<1s,", "empty condition"),
        ("", "empty condition"),
    ],
)
def test_malformed_thresholds_are_refused_with_the_reason(expression, message):
    with pytest.raises(ThresholdError, match=message):
        parse_thresholds(expression)


# Durations and bodies


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("2m", 120), ("250ms", 0.25), ("1.5h", 5400), ("3", 3)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


def test_a_bad_duration_says_how_to_write_one():
    with pytest.raises(ValueError, match="examples: 60s"):
        parse_duration("soon")


class Line(BaseModel):
    sku: str = Field(min_length=3)
    quantity: int = Field(ge=1, le=10)


class Order(BaseModel):
    customer_id: int = Field(gt=0)
    email: str = Field(json_schema_extra={"format": "email"})
    lines: list[Line] = Field(min_length=2)
    note: str | None = None
    kind: str = Field(default="web", json_schema_extra={"enum": ["web", "shop"]})


def test_the_example_body_is_valid_for_the_request_model():
    example = example_from_schema(Order.model_json_schema())
    Order.model_validate(example)
    assert len(example["lines"]) == 2
    assert "note" not in example


def test_no_schema_gives_an_empty_object():
    assert example_from_schema(None) == {}


def test_bodies_come_inline_or_from_a_file(tmp_path):
    (tmp_path / "order.json").write_text('{"order_id": 1}')
    assert read_body("@order.json", base=tmp_path) == {"order_id": 1}
    assert read_body('{"a": [1]}') == {"a": [1]}
    with pytest.raises(PayloadError, match="cannot read the body file"):
        read_body("@missing.json", base=tmp_path)
    with pytest.raises(PayloadError, match="is not valid JSON"):
        read_body("{nope")


# Bodies that vary


class LineItem(BaseModel):
    sku: str
    quantity: int = Field(ge=1, le=5)


class Basket(BaseModel):
    basket_id: str
    lines: list[LineItem] = Field(min_length=1)
    weight: float
    note: str = ""


BASKET = {
    "basket_id": "{uuid}",
    "lines": ["{repeat:1..4}", {"sku": "{choice:A,B,C}", "quantity": "{int:1..5}"}],
    "weight": "{float:0.5..2}",
    "note": "{text:0..20}",
}


def test_generated_fields_vary_within_their_ranges_and_stay_valid():
    template = BodyTemplate(BASKET)
    template.seed(1)
    bodies = [Basket.model_validate_json(template.make()) for _ in range(200)]
    skus = {line.sku for body in bodies for line in body.lines}
    assert skus == {"A", "B", "C"}
    assert {line.quantity for body in bodies for line in body.lines} == {1, 2, 3, 4, 5}
    assert {len(body.lines) for body in bodies} == {1, 2, 3, 4}
    assert all(0.5 <= body.weight <= 2 for body in bodies)
    assert len({body.basket_id for body in bodies}) == 200
    assert {len(body.note) for body in bodies} <= set(range(21))
    assert len({len(body.note) for body in bodies}) > 10


def test_the_same_seed_makes_the_same_bodies_but_for_text():
    first, second = BodyTemplate(BASKET), BodyTemplate(BASKET)
    first.seed(7)
    second.seed(7)
    for _ in range(20):
        one, other = json.loads(first.make()), json.loads(second.make())
        one.pop("note"), other.pop("note")
        assert one == other


def test_choices_are_json_values_and_a_double_brace_is_a_literal():
    template = BodyTemplate({"code": "{choice:404,true,x}", "raw": "{{int:1..2}"})
    values = [json.loads(template.make()) for _ in range(100)]
    assert {value["code"] for value in values} == {404, True, "x"}
    assert {value["raw"] for value in values} == {"{int:1..2}"}


def test_padded_bodies_span_the_size_range():
    low, high = parse_size("100B"), parse_size("50KB")
    assert (low, high, parse_size("2KiB"), parse_size("1.5MB")) == (100, 50000, 2048, 1500000)
    template = BodyTemplate({"text": "{pad}", "n": "{int:1..9}"}, size=(low, high))
    template.seed(3)
    sizes = [len(template.make()) for _ in range(300)]
    assert all(low <= size <= high for size in sizes)
    # Log-uniform over 100 B .. 50 KB: every decade gets its share.
    assert sum(size < 1000 for size in sizes) > 50
    assert sum(size > 10_000 for size in sizes) > 50
    assert (template.smallest, template.largest) == (min(sizes), max(sizes))


@pytest.mark.parametrize(
    ("body", "size", "message"),
    [
        ({"text": "{pad}"}, None, "needs a size range"),
        ({"text": "x"}, (1, 10), 'mark it "{pad}"'),
        ({"a": "{pad}", "b": "{pad}"}, (1, 10), "one field only"),
        ({"n": "{int:5..1}"}, None, "the low end is above the high end"),
        ({"n": "{int:a..b}"}, None, "is not a whole number"),
        ({"n": "{int}"}, None, "needs a range"),
        ({"n": "{choice}"}, None, "needs options"),
        ({"n": ["{repeat:1..2}", 1, 2]}, None, "exactly one item"),
        ({"n": "{repeat:1..2}"}, None, "goes first in an array"),
        ({"n": "{text:1..big}"}, None, "is not a size"),
    ],
)
def test_a_template_that_cannot_make_bodies_is_refused(body, size, message):
    with pytest.raises(PayloadError, match=re.escape(message)):
        BodyTemplate(body, size=size)


# Plans


TEN_SECONDS_AT_50 = (Stage(10, 50),)


def plan(model=OPEN, stages=TEN_SECONDS_AT_50, **options) -> LoadPlan:
    target = Target(name="svc.echo", kind="rpc", subject="rpc.svc.echo", body=b"{}")
    return LoadPlan(model=model, stages=list(stages), targets=[target], timeout=5, **options)


def test_a_constant_rate_plans_evenly_spaced_requests():
    times = list(plan().send_times())
    assert len(times) == 500
    assert times[0] == pytest.approx(0.02)
    assert times[-1] == pytest.approx(10.0)
    assert all(later > earlier for earlier, later in zip(times, times[1:], strict=False))


def test_a_ramp_plans_the_area_under_it_and_speeds_up():
    ramp = plan(stages=[Stage(10, 100), Stage(5, 100)], start_level=0)
    times = list(ramp.send_times())
    assert len(times) == 500 + 500 == ramp.planned_requests()
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[10] > gaps[300] > gaps[-1] * 0.99
    assert ramp.level_at(5) == pytest.approx(50)
    assert ramp.level_at(12) == pytest.approx(100)


def test_weighted_targets_are_chosen_by_weight():
    targets = [
        Target(name="a.x", kind="rpc", subject="rpc.a.x", body=b"{}", weight=8),
        Target(name="a.y", kind="rpc", subject="rpc.a.y", body=b"{}", weight=2),
    ]
    mixed = LoadPlan(model=CLOSED, stages=[Stage(1, 1)], targets=targets, timeout=1, seed=3)
    chosen = [mixed.choose().name for _ in range(5000)]
    assert chosen.count("a.x") / len(chosen) == pytest.approx(0.8, abs=0.03)


# The verdict


def test_a_run_where_every_request_failed_is_a_failure_without_thresholds():
    recorder = Recorder(warmup=0)
    for number in range(810):
        recorder.sending(0.0)
        recorder.record(
            "svc.echo",
            planned=number / 100,
            answered=number / 100 + 0.01,
            outcome="503 no_responders",
        )
    recorder.sending_ended = 8.1
    summary = summarize(recorder, plan(), [])
    assert summary["passed"] is False
    assert summary["requests"] == 810
    assert summary["errors_by_code"] == {"503": 810}
    assert summary["failures"] == ["every request failed (810 errors)"]


def test_warmup_requests_are_counted_apart():
    recorder = Recorder(warmup=1.0)
    for number in range(20):
        recorder.sending(0.0)
        recorder.record("svc.echo", planned=number / 10, answered=number / 10 + 0.005, outcome="ok")
    recorder.sending_ended = 2.0
    summary = summarize(recorder, plan(warmup=1.0), [])
    assert (summary["warmup_requests"], summary["requests"]) == (10, 10)
    assert summary["achieved_rate"] == pytest.approx(10.0)
    assert summary["passed"] is True


# Layers: defaults, preset, scenario, options


def test_the_defaults_are_ten_users_for_ten_seconds():
    settings = Settings()
    settings.apply({"targets": [TargetSpec("svc.echo")]})
    built = settings.plan()
    assert (built.model, built.duration, built.first_level) == (CLOSED, 10, 10)


def test_a_request_count_alone_runs_as_long_as_it_takes():
    settings = Settings()
    settings.apply({"targets": [TargetSpec("svc.echo")], "requests": 40})
    assert settings.plan().duration == UNBOUNDED


def test_a_preset_keeps_its_shape_at_another_peak_and_scales():
    settings = Settings()
    settings.apply(preset_layer("stress"))
    settings.apply({"targets": [TargetSpec("svc.echo")], "model": OPEN, "level": 400.0})
    settings.scale(0.1)
    built = settings.plan()
    assert built.model == OPEN
    shape = [number for stage in built.stages for number in (stage.duration, stage.level)]
    assert shape == pytest.approx([6, 100, 6, 200, 6, 400, 12, 400])
    assert built.first_level == 0
    assert settings.fail_on == "errors<5%"


def test_a_duration_given_later_replaces_the_shape_with_a_plateau():
    settings = Settings()
    settings.apply(preset_layer("load"))
    settings.apply({"targets": [TargetSpec("svc.echo")], "duration": 5.0, "ramp": 2.0})
    built = settings.plan()
    assert [(stage.duration, stage.level) for stage in built.stages] == [(2, 50), (5, 50)]
    assert built.first_level == 0


def test_a_scenario_file_sets_targets_stages_and_thresholds(tmp_path):
    (tmp_path / "order.json").write_text('{"customer_id": 7}')
    path = tmp_path / "checkout.toml"
    path.write_text(
        """
        model = "open"
        warmup = "1s"
        fail_on = "p99<250ms"
        start = 5
        [[stages]]
        duration = "10s"
        target = 20
        [[stages]]
        duration = "5s"
        target = 0
        [[targets]]
        rpc = "orders.create_order"
        weight = 4
        body_file = "order.json"
        [[targets]]
        event = "orders.viewed"
        body = { order_id = 1 }
        """
    )
    settings = Settings()
    settings.apply(scenario_layer(path))
    built = settings.plan()
    assert settings.name == "checkout"
    assert built.model == OPEN
    assert [(stage.duration, stage.level) for stage in built.stages] == [(10, 20), (5, 0)]
    assert built.first_level == 5
    assert built.warmup == 1
    assert settings.targets == [
        TargetSpec("orders.create_order", body="@order.json", weight=4),
        TargetSpec("orders.viewed", kind="event", data={"order_id": 1}),
    ]
    assert settings.base == tmp_path
    assert built.planned_requests() == pytest.approx(125 + 50)


def command_settings(*arguments: str) -> Settings:
    """The settings ``manage.py loadtest ARGUMENTS`` runs with: its parser, then its layers."""
    from cliffracer_core.management.commands.loadtest import Command

    command = Command()
    options = vars(command.create_parser("manage.py", "loadtest").parse_args(arguments))
    return command.settings(options)


EVENTS_SCENARIO = """
rate = 5
duration = "1s"
until_handled = true
websocket = "ws://127.0.0.1:8000/ws/events/"
clients = 4
[[targets]]
event = "orders.viewed"
body = {}
"""


def test_a_scenario_sets_until_handled_websocket_and_clients(tmp_path):
    path = tmp_path / "events.toml"
    path.write_text(EVENTS_SCENARIO)
    settings = command_settings("--scenario", str(path))
    assert settings.until_handled is True
    assert (settings.websocket, settings.clients) == ("ws://127.0.0.1:8000/ws/events/", 4)


def test_the_command_line_overrides_the_scenarios_websocket_and_clients(tmp_path):
    path = tmp_path / "events.toml"
    path.write_text(EVENTS_SCENARIO)
    settings = command_settings(
        "--scenario", str(path), "--websocket", "ws://other:9000/ws/events/", "--clients", "2"
    )
    assert (settings.websocket, settings.clients) == ("ws://other:9000/ws/events/", 2)
    # Options not given leave the scenario's: --clients defaults to nothing, not to 1.
    settings = command_settings("--scenario", str(path), "--websocket", "ws://other/ws/events/")
    assert (settings.websocket, settings.clients, settings.until_handled) == (
        "ws://other/ws/events/",
        4,
        True,
    )


def test_without_a_scenario_the_options_alone_set_them():
    plain = command_settings("--event", "a.b", "--body", "{}")
    assert (plain.until_handled, plain.websocket, plain.clients) == (False, None, None)
    given = command_settings("--event", "a.b", "--body", "{}", "--until-handled", "--clients", "3")
    assert (given.until_handled, given.clients) == (True, 3)


def test_a_preset_leaves_them_unset_and_a_scenario_over_it_sets_them(tmp_path):
    path = tmp_path / "events.toml"
    path.write_text(EVENTS_SCENARIO)
    settings = command_settings("--preset", "smoke", "--scenario", str(path))
    assert (settings.until_handled, settings.clients, settings.fail_on) == (True, 4, "errors<1%")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("until_handled = 'yes'", "until_handled is true or false, not 'yes'"),
        ("until_handled = 1", "until_handled is true or false, not 1"),
        ("websocket = 8000", "websocket must be a ws:// or wss:// URL, not 8000"),
        ("websocket = 'http://x/'", "websocket must be a ws:// or wss:// URL, not 'http://x/'"),
        ("clients = 2.5", "clients must be a whole number, not 2.5"),
        ("clients = true", "clients must be a whole number, not True"),
        ("clients = 0", "clients must be between 1 and 10,000"),
    ],
)
def test_wrong_types_for_the_event_keys_are_refused(tmp_path, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"rate = 5\n{line}\n")
    with pytest.raises(ScenarioError, match=re.escape(message)) as raised:
        scenario_layer(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_an_unknown_preset_names_the_presets():
    with pytest.raises(
        ScenarioError,
        match=(
            "the presets are smoke, load, stress, soak, baseline, throughput, resilience, "
            "payloads, mixed"
        ),
    ):
        preset_layer("spike")


# Several processes


def test_the_parts_of_a_plan_share_its_requests_exactly():
    whole = plan(stages=[Stage(3, 40)], start_level=0, max_requests=101)
    parts = [whole.part(share, 3) for share in range(3)]
    times = sorted(time for part in parts for time in part.send_times())
    assert times == pytest.approx(list(whole.send_times()))
    assert [part.max_requests for part in parts] == [34, 34, 33]


def test_parts_measured_apart_merge_into_the_whole():
    whole, first, second = Recorder(warmup=0), Recorder(warmup=0), Recorder(warmup=0)
    for number in range(100):
        outcome = "ok" if number % 10 else "500 internal_error"
        for recorder in (whole, first if number % 2 else second):
            recorder.sending(0.0)
            recorder.record(
                "svc.echo", planned=number / 50, answered=number / 50 + number / 1e4,
                outcome=outcome,
            )  # fmt: skip
    first.merge_json(json.loads(json.dumps(second.to_json())))
    assert summarize(first, plan(), [])["latency"] == summarize(whole, plan(), [])["latency"]
    assert first.total.errors == whole.total.errors == {"500 internal_error": 10}
    assert first.sent == 100


def test_an_invalid_request_is_expected_to_fail_with_a_4xx():
    assert invalid_outcome("400 invalid_json") == "expected 400 invalid_json"
    assert invalid_outcome("ok") == "200 accepted_invalid"
    assert invalid_outcome("500 internal_error") == "500 internal_error"
    assert invalid_outcome("408 timeout") == "408 timeout"


# --baseline


def baseline_figures(rate, p99, errors, requests=1000):
    return {
        "achieved_rate": rate,
        "requests": requests,
        "errors": errors,
        "latency": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99},
        "file": "before.json",
    }


def test_a_figure_worse_than_the_tolerance_is_a_regression():
    before = baseline_figures(rate=500, p99=0.200, errors=5)
    now = baseline_figures(rate=440, p99=0.215, errors=30)
    figures = {row["figure"]: row for row in compare(now, before, 0.10)["figures"]}
    assert figures["rate"]["regression"] is True  # -12 %
    assert figures["p99"]["regression"] is False  # +7.5 %
    assert figures["errors"]["change"] == pytest.approx(2.5)  # 0.5 % → 3 %: 2.5 points
    assert figures["errors"]["regression"] is True


def test_the_same_figures_are_no_regression():
    same = baseline_figures(rate=500, p99=0.2, errors=0)
    assert not any(row["regression"] for row in compare(same, same, 0.0)["figures"])


def test_a_baseline_must_be_a_load_tests_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(BaselineError, match="is not the --json output of a load test"):
        read_baseline(path)


def test_the_resilience_preset_sends_a_fifth_invalid():
    settings = Settings()
    settings.apply(preset_layer("resilience"))
    settings.apply({"targets": [TargetSpec("svc.echo")]})
    built = settings.plan()
    assert built.invalid_share == pytest.approx(0.2)
    assert (built.model, built.first_level, built.duration) == (CLOSED, 50, 60)
    assert settings.fail_on == "p50<=150ms,rps>=50,errors<1%"


def test_the_target_rate_of_a_run_bounded_by_requests_is_the_planned_rate():
    assert plan(stages=[Stage(UNBOUNDED, 100)], max_requests=500).target_rate() == pytest.approx(
        100
    )
    assert plan().target_rate() == pytest.approx(50)
    assert plan(model=CLOSED).target_rate() is None


@pytest.mark.parametrize("name", ["payloads", "mixed"])
def test_the_example_shops_scenario_files_make_valid_requests_under_their_presets(name):
    """loadtests/payloads.toml and loadtests/mixed.toml: the original's two scenarios that
    need bodies, with bodies the example's endpoints accept."""
    from apps.inventory.schemas import GetStock
    from apps.notifications.schemas import ListForCustomer

    contracts = {
        "inventory.get_stock": GetStock,
        "notifications.list_for_customer": ListForCustomer,
    }
    settings = Settings()
    settings.apply(preset_layer(name))
    settings.apply(scenario_layer(project_root() / "loadtests" / f"{name}.toml"))
    built = settings.plan()
    assert (built.model, built.duration) == (CLOSED, 60)
    assert settings.fail_on == PRESETS[name].fail_on
    weights = {spec.name: spec.weight for spec in settings.targets}
    assert weights == (
        {"inventory.get_stock": 1}
        if name == "payloads"
        else {"inventory.get_stock": 80, "notifications.list_for_customer": 20}
    )
    for spec in settings.targets:
        template = BodyTemplate(spec.data if spec.data is not None else json.loads(spec.body))
        template.seed(3)
        for _ in range(20):
            request = contracts[spec.name].model_validate_json(template.make())
            if name == "payloads":
                assert 500 <= len(request.skus) <= 2000
