"""Scenario files (TOML) and presets: a run's settings written down instead of typed.

A run's settings come in layers, each overriding the one before: the defaults, a ``--preset``,
a ``--scenario`` file, then the command line's own options. The load's shape is a list of
stages in fractions of a peak level, so a preset's shape keeps its form when ``--rate`` or
``--concurrency`` sets another peak, and ``--scale 0.1`` shortens every stage for a quick run.
A ``duration`` given later replaces the shape with a plateau (after ``ramp``, if any).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliffracer_core.dev.loadtest.plan import CLOSED, OPEN, LoadPlan, Stage
from cliffracer_core.dev.loadtest.results import UNBOUNDED
from cliffracer_core.dev.loadtest.targets import TargetSpec
from cliffracer_core.dev.loadtest.units import parse_duration
from cliffracer_core.dev.loadtest.websocket import MAX_CLIENTS

DEFAULT_USERS = 10.0
DEFAULT_DURATION = 10.0
MAX_RATE = 1_000_000.0
MAX_USERS = 100_000.0


class ScenarioError(ValueError):
    """Settings that cannot make a run (a bad file, a bad value); the message says which."""


@dataclass(frozen=True)
class Preset:
    """A named load shape (fractions of ``peak``) with its default thresholds."""

    description: str
    model: str
    peak: float
    start: float
    shape: tuple[tuple[float, float], ...]  # (seconds, fraction of the peak at the end)
    fail_on: str
    invalid: float = 0.0  # percent of requests sent invalid on purpose


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        "Does it work at all: 1 user for 30 s; any error fails.",
        CLOSED, 1, 1.0, ((30, 1.0),), "errors<1%",
    ),
    "load": Preset(
        "The expected load: 0 → 50 users over 30 s, then 50 users for 2 minutes.",
        CLOSED, 50, 0.0, ((30, 1.0), (120, 1.0)), "p99<500ms,errors<1%",
    ),
    "stress": Preset(
        "Where it breaks: 0 → 50 → 100 → 200 users, a minute each, then 200 users for "
        "2 minutes (5 minutes in all).",
        CLOSED, 200, 0.0, ((60, 0.25), (60, 0.5), (60, 1.0), (120, 1.0)), "errors<5%",
    ),
    "soak": Preset(
        "Leaks and drift: 20 users for an hour.",
        CLOSED, 20, 0.0, ((60, 1.0), (3540, 1.0)), "p99<500ms,errors<1%",
    ),
    # The scenarios of the framework Cliffracer replaces, with its own expectations.
    "baseline": Preset(
        "The original's baseline: 10 users for 60 s; median at most 50 ms, 100 req/s.",
        CLOSED, 10, 1.0, ((60, 1.0),), "p50<=50ms,rps>=100,errors<1%",
    ),
    "throughput": Preset(
        "The original's high throughput: 100 users for 120 s; median at most 100 ms, "
        "500 req/s.",
        CLOSED, 100, 1.0, ((120, 1.0),), "p50<=100ms,rps>=500,errors<1%",
    ),
    "resilience": Preset(
        "The original's error resilience: 50 users for 60 s, 20 % of the requests invalid; "
        "median at most 150 ms, 50 req/s, no error but the expected ones.",
        CLOSED, 50, 1.0, ((60, 1.0),), "p50<=150ms,rps>=50,errors<1%", invalid=20.0,
    ),
    # These two need targets and bodies of the system's own: a scenario file gives them
    # (loadtests/payloads.toml and loadtests/mixed.toml for the example shop).
    "payloads": Preset(
        "The original's large payloads: 10 users for 60 s sending batches of 500 to 2,000 "
        "items (the target's body); median at most 500 ms, 20 req/s.",
        CLOSED, 10, 1.0, ((60, 1.0),), "p50<=500ms,rps>=20,errors<1%",
    ),
    "mixed": Preset(
        "The original's mixed 80/20: 50 users for 60 s over the targets by weight; median at "
        "most 200 ms, 100 req/s.",
        CLOSED, 50, 1.0, ((60, 1.0),), "p50<=200ms,rps>=100,errors<1%",
    ),
}  # fmt: skip


@dataclass
class Settings:
    """Everything a run needs, merged from the layers."""

    model: str = CLOSED
    peak: float = DEFAULT_USERS
    start: float = 1.0
    # None: DEFAULT_DURATION, or as long as it takes when a number of requests is set.
    shape: list[tuple[float, float]] | None = None
    warmup: float = 0.0
    timeout: float = 5.0
    think: float = 0.0
    requests: int | None = None
    fail_on: str | None = None
    seed: int | None = None
    invalid: float = 0.0  # percent of requests sent invalid on purpose
    name: str = ""
    targets: list[TargetSpec] = field(default_factory=list)
    base: Path | None = None  # a scenario file's folder: body files are relative to it
    until_handled: bool = False  # events: measure to the handlers' completion too
    websocket: str | None = None  # events: clients on this /ws/events/ URL measure delivery
    # None: not set by any layer (1 client with a websocket; a mistake without one).
    clients: int | None = None

    def apply(self, layer: dict[str, Any]) -> None:
        """Override with what ``layer`` sets (the keys of ``Settings``, and ``level``,
        ``duration`` and ``ramp``, which reshape the load)."""
        layer = {key: value for key, value in layer.items() if value is not None}
        for key in ("model", "start", "shape", "warmup", "timeout", "think", "requests"):
            if key in layer:
                setattr(self, key, layer[key])
        for key in ("fail_on", "seed", "name", "targets", "base", "peak", "invalid",
                    "until_handled", "websocket", "clients"):  # fmt: skip
            if key in layer:
                setattr(self, key, layer[key])
        if "level" in layer:
            self.peak = layer["level"]
        if "duration" in layer or "ramp" in layer:
            duration = layer.get("duration")
            if duration is None:
                duration = UNBOUNDED if self.requests else self.plateau()
            ramp = layer.get("ramp") or 0.0
            self.start = 0.0 if ramp else 1.0
            self.shape = ([(ramp, 1.0)] if ramp else []) + [(duration, 1.0)]

    def plateau(self) -> float:
        """The length of the shape's last stage (what ``--ramp`` alone keeps)."""
        return self.full_shape()[-1][0]

    def full_shape(self) -> list[tuple[float, float]]:
        if self.shape is not None:
            return self.shape
        return [(UNBOUNDED if self.requests else DEFAULT_DURATION, 1.0)]

    def scale(self, factor: float) -> None:
        """Shorten (or lengthen) every stage and the warm-up by ``factor``."""
        self.shape = [(seconds * factor, fraction) for seconds, fraction in self.full_shape()]
        self.warmup *= factor

    def plan(self) -> LoadPlan:
        if not self.targets:
            raise ScenarioError("name what to load: service.method, --event SUBJECT, or a "
                                "scenario file's [[targets]].")  # fmt: skip
        limit = MAX_RATE if self.model == OPEN else MAX_USERS
        noun = "a rate" if self.model == OPEN else "a number of users"
        if not 0 < self.peak <= limit:
            raise ScenarioError(f"{noun} must be more than 0 and at most {limit:,.0f}.")
        if self.model == CLOSED and self.peak != int(self.peak):
            raise ScenarioError("a number of users must be a whole number.")
        stages = [Stage(seconds, fraction * self.peak) for seconds, fraction in self.full_shape()]
        duration = sum(stage.duration for stage in stages)
        if duration <= 0:
            raise ScenarioError("the run must last more than 0 seconds.")
        if self.warmup >= duration:
            raise ScenarioError("the warm-up must be shorter than the run.")
        if self.timeout <= 0:
            raise ScenarioError("the timeout must be more than 0.")
        if not 0 <= self.invalid <= 100:
            raise ScenarioError("the invalid share is a percentage, from 0 to 100.")
        if self.requests is not None and self.requests < 1:
            raise ScenarioError("the number of requests must be at least 1.")
        return LoadPlan(
            model=OPEN if self.model == OPEN else CLOSED,
            stages=stages,
            targets=[],
            timeout=self.timeout,
            start_level=self.start * self.peak,
            warmup=self.warmup,
            max_requests=self.requests,
            think_time=self.think,
            name=self.name,
            seed=self.seed,
            invalid_share=self.invalid / 100,
        )


def preset_layer(name: str) -> dict[str, Any]:
    preset = PRESETS.get(name)
    if preset is None:
        raise ScenarioError(f"no preset {name!r}; the presets are {', '.join(PRESETS)}.")
    return {
        "name": name,
        "model": preset.model,
        "peak": float(preset.peak),
        "start": preset.start,
        "shape": list(preset.shape),
        "fail_on": preset.fail_on,
        "invalid": preset.invalid,
    }


SCENARIO_KEYS = {
    "name", "model", "rate", "users", "duration", "ramp", "start", "stages", "warmup",
    "timeout", "think", "requests", "fail_on", "seed", "targets", "invalid",
    "until_handled", "websocket", "clients",
}  # fmt: skip
STAGE_KEYS = {"duration", "target"}
TARGET_KEYS = {"rpc", "event", "http", "method", "weight", "body", "body_file", "body_size"}


def scenario_layer(path: Path) -> dict[str, Any]:
    """The settings a TOML scenario file sets; ScenarioError names the file and the mistake."""
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise ScenarioError(f"cannot read the scenario {path}: {error.strerror}.") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path} is not valid TOML: {error}.") from None
    try:
        return _scenario(values, base=path.resolve().parent, default_name=path.stem)
    except ScenarioError as error:
        raise ScenarioError(f"{path}: {error}") from None


def _scenario(values: dict[str, Any], *, base: Path, default_name: str) -> dict[str, Any]:
    _known(values, SCENARIO_KEYS, "the scenario")
    layer: dict[str, Any] = {"name": str(values.get("name") or default_name), "base": base}
    if "stages" in values and ("rate" in values or "users" in values):
        raise ScenarioError(
            "with [[stages]], give model = 'open' (targets in requests per second) or "
            "'closed' (targets in users) instead of rate or users."
        )
    if "rate" in values and "users" in values:
        raise ScenarioError("give rate (open model) or users (closed model), not both.")
    model = values.get("model")
    if model is not None and model not in (OPEN, CLOSED):
        raise ScenarioError(f"model is {OPEN!r} or {CLOSED!r}, not {model!r}.")
    if "rate" in values:
        layer["model"], layer["level"] = OPEN, _number(values["rate"], "rate")
    elif "users" in values:
        layer["model"], layer["level"] = CLOSED, _number(values["users"], "users")
    if model is not None:
        layer["model"] = model
    for key in ("warmup", "timeout", "think"):
        if key in values:
            layer[key] = _duration(values[key], key)
    if "requests" in values:
        layer["requests"] = int(_number(values["requests"], "requests"))
    if "fail_on" in values:
        layer["fail_on"] = str(values["fail_on"])
    if "seed" in values:
        layer["seed"] = int(_number(values["seed"], "seed"))
    if "invalid" in values:
        layer["invalid"] = _number(values["invalid"], "invalid", zero=True)
    layer.update(_events(values))
    if "stages" in values:
        if "duration" in values or "ramp" in values:
            raise ScenarioError("give stages, or duration (and ramp), not both.")
        layer.update(_stages(values["stages"], start=values.get("start", 0)))
    elif "duration" in values or "ramp" in values:
        layer["duration"] = (
            _duration(values["duration"], "duration") if "duration" in values else None
        )
        layer["ramp"] = _duration(values["ramp"], "ramp") if "ramp" in values else None
    if "targets" in values:
        layer["targets"] = [
            _target(target, index) for index, target in enumerate(values["targets"], 1)
        ]
    return layer


def _events(values: dict[str, Any]) -> dict[str, Any]:
    """until_handled, websocket and clients: what the command line's --until-handled,
    --websocket and --clients set, checked as they are."""
    layer: dict[str, Any] = {}
    if "until_handled" in values:
        if not isinstance(values["until_handled"], bool):
            raise ScenarioError(f"until_handled is true or false, not {values['until_handled']!r}.")
        layer["until_handled"] = values["until_handled"]
    if "websocket" in values:
        url = values["websocket"]
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ScenarioError(f"websocket must be a ws:// or wss:// URL, not {url!r}.")
        layer["websocket"] = url
    if "clients" in values:
        clients = values["clients"]
        if isinstance(clients, bool) or not isinstance(clients, int):
            raise ScenarioError(f"clients must be a whole number, not {clients!r}.")
        if not 1 <= clients <= MAX_CLIENTS:
            raise ScenarioError(f"clients must be between 1 and {MAX_CLIENTS:,}.")
        layer["clients"] = clients
    return layer


def _stages(stages: Any, *, start: Any) -> dict[str, Any]:
    if not isinstance(stages, list) or not stages:
        raise ScenarioError("stages is a list of [[stages]] tables with duration and target.")
    pairs = []
    for index, stage in enumerate(stages, 1):
        if not isinstance(stage, dict):
            raise ScenarioError(f"stage {index} is not a table.")
        _known(stage, STAGE_KEYS, f"stage {index}")
        if "duration" not in stage or "target" not in stage:
            raise ScenarioError(f"stage {index} needs a duration and a target.")
        pairs.append(
            (_duration(stage["duration"], f"stage {index}'s duration"),
             _number(stage["target"], f"stage {index}'s target", zero=True))
        )  # fmt: skip
    first = _number(start, "start", zero=True)
    peak = max([first, *(level for _, level in pairs)])
    if peak <= 0:
        raise ScenarioError("every stage's target is 0: nothing would be sent.")
    return {
        "peak": peak,
        "start": first / peak,
        "shape": [(seconds, level / peak) for seconds, level in pairs],
    }


def _target(target: Any, index: int) -> TargetSpec:
    where = f"target {index}"
    if not isinstance(target, dict):
        raise ScenarioError(f"{where} is not a table.")
    _known(target, TARGET_KEYS, where)
    kinds = [kind for kind in ("rpc", "event", "http") if kind in target]
    if len(kinds) != 1:
        raise ScenarioError(
            f"{where} needs one of rpc = 'service.method', event = 'subject' or http = 'URL'."
        )
    if "method" in target and kinds != ["http"]:
        raise ScenarioError(f"{where}: method goes with http.")
    if "body" in target and "body_file" in target:
        raise ScenarioError(f"{where}: give body or body_file, not both.")
    kind = kinds[0]
    return TargetSpec(
        method=str(target.get("method") or ""),
        name=str(target[kind]),
        kind=kind,
        body=f"@{target['body_file']}" if "body_file" in target else None,
        data=target.get("body"),
        weight=_number(target.get("weight", 1), f"{where}'s weight"),
        body_size=str(target["body_size"]) if "body_size" in target else None,
    )


def _known(values: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ScenarioError(
            f"{where} has unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(allowed))})."
        )


def _number(value: Any, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{name} must be a number, not {value!r}.")
    if value < 0 or (value == 0 and not zero):
        raise ScenarioError(f"{name} must be more than 0.")
    return float(value)


def _duration(value: Any, name: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise ScenarioError(f"{name}: {error}") from None
