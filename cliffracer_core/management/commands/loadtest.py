"""``manage.py loadtest service.method``: load a running system and measure it.

A thin command over ``cliffracer_core.dev.loadtest``: it reads the options into a plan, sends
the load, prints the summary (or the JSON), writes the HTML report, records the run where the
admin lists it (``--no-record``: not), and exits 1 when the run failed (a ``--fail-on``
threshold missed, or no request succeeded), so it can gate CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from cliffracer_core.core.client import caller_headers
from cliffracer_core.core.headers import AUTHORIZATION
from cliffracer_core.dev.console import (
    FAILURE,
    USAGE_ERROR,
    add_header_argument,
    add_nats_url_argument,
    connect_once,
    nats_url,
    parse_headers,
    quiet_connection_logs,
    use_running_system,
)
from cliffracer_core.dev.loadtest import results
from cliffracer_core.dev.loadtest.baseline import BaselineError, read_baseline
from cliffracer_core.dev.loadtest.generator import Generator, service_stats, stats_difference
from cliffracer_core.dev.loadtest.handled import HandledError, HandledWatch, find_handlers
from cliffracer_core.dev.loadtest.plan import CLOSED, OPEN, LoadPlan
from cliffracer_core.dev.loadtest.processes import (
    READY,
    START_WAIT,
    WorkerError,
    Workers,
    parse_share,
)
from cliffracer_core.dev.loadtest.records import RecordError, save_record, shown_command
from cliffracer_core.dev.loadtest.report import render_html
from cliffracer_core.dev.loadtest.scenarios import (
    PRESETS,
    ScenarioError,
    Settings,
    preset_layer,
    scenario_layer,
)
from cliffracer_core.dev.loadtest.targets import TargetError, TargetSpec, resolve
from cliffracer_core.dev.loadtest.thresholds import ThresholdError, parse_thresholds
from cliffracer_core.dev.loadtest.units import format_seconds, parse_duration
from cliffracer_core.dev.loadtest.websocket import MAX_CLIENTS, Listeners, WebSocketError


def usage(message: str) -> CommandError:
    return CommandError(message, returncode=USAGE_ERROR)


def duration_option(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise usage(f"{name}: {error}") from None
    return seconds


MAX_PROCESSES = 64
# The copies of --processes start this long after the last one said it is ready.
START_DELAY = 0.2
# A --user token outlives the run by this many seconds (a run bounded by requests: a day).
USER_TOKEN_MARGIN = 60.0


def user_token(username: str, seconds: float) -> str:
    """An access token for ``username`` valid for ``seconds`` (usage error: no such user)."""
    from django.contrib.auth import get_user_model
    from django.db import DatabaseError

    from cliffracer_core.core.auth.tokens import session_access_token

    model = get_user_model()
    try:
        user = model._default_manager.get(**{model.USERNAME_FIELD: username})
    except model.DoesNotExist:
        raise usage(f"--user: no user {username!r}.") from None
    except DatabaseError as error:
        raise CommandError(
            f"--user: cannot read the users ({error}).", returncode=FAILURE
        ) from None
    if not user.is_active:
        raise usage(f"--user: {username!r} is not active.")
    return session_access_token(user, lifetime=timedelta(seconds=min(seconds, 86400.0)))


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}


def report_path(option: str | None) -> Path | None:
    """Where ``--report`` goes, its folder made now: a run must not end unable to write it."""
    if option is None:
        return None
    path = Path(option).expanduser()
    if path.is_dir():
        raise usage(f"--report {option}: a folder; name the file, e.g. {path / 'report.html'}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise usage(f"--report {option}: cannot make its folder ({error.strerror}).") from None
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write aside and rename, so a half-written report never stands in for a whole one."""
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)


class Command(BaseCommand):
    help = (
        "Load test an RPC endpoint (or event subject) of the running system: open model "
        "(--rate) or closed model (--concurrency), a summary of requests, errors by code and "
        "latency percentiles, --fail-on thresholds for CI, --json and --report."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", nargs="?", help="The endpoint, as service.method.")
        parser.add_argument(
            "--body",
            help="The request: inline JSON, or @file.json; default: an example built from the "
            "endpoint's request schema ($SRV.INFO).",
        )
        parser.add_argument(
            "--body-size",
            metavar="RANGE",
            help='Pad the body\'s "{pad}" field so bodies span this size range, e.g. '
            "100B..50KB (docs/loadtest.md#bodies-that-vary).",
        )
        parser.add_argument(
            "--event",
            metavar="SUBJECT",
            help="Publish events on SUBJECT (with --body) instead of calling an endpoint.",
        )
        parser.add_argument(
            "--http",
            metavar="URL",
            help="Send HTTP requests to URL (the gateway, any REST view) instead.",
        )
        parser.add_argument(
            "--method", help="The HTTP method of --http (GET; POST when there is a --body)."
        )
        parser.add_argument(
            "--until-handled",
            action="store_true",
            help="Events: also measure the time from publish to the handlers' completion, from "
            "their counts in $SRV.STATS; wait up to --timeout for them after the last publish.",
        )
        parser.add_argument(
            "--websocket",
            metavar="URL",
            help="Events: N clients (--clients) on this /ws/events/ URL subscribe to the "
            "published subjects; measure the delivery from publish to frame (needs --user).",
        )
        parser.add_argument(
            "--clients",
            type=int,
            help="How many WebSocket clients --websocket opens (1).",
        )
        parser.add_argument(
            "--user",
            metavar="USERNAME",
            help="Call as this Django user: an access token minted for them goes with every "
            "request (RPC, event and HTTP).",
        )
        load = parser.add_mutually_exclusive_group()
        load.add_argument(
            "--rate",
            type=float,
            help="Open model: requests per second, sent on schedule whether answered or not.",
        )
        load.add_argument(
            "--concurrency",
            "-c",
            type=int,
            help="Closed model: virtual users, each waiting for its answer (10).",
        )
        parser.add_argument("--duration", "-d", help="How long to send, e.g. 60s, 2m (10s).")
        parser.add_argument("--requests", "-n", type=int, help="Stop after sending this many.")
        parser.add_argument("--ramp", help="Ramp from 0 to the rate or users over this time first.")
        parser.add_argument("--warmup", help="Leave the first part of the run out of the figures.")
        parser.add_argument("--think", help="Closed model: pause between a user's requests.")
        parser.add_argument("--timeout", help="How long to wait for a reply (5s).")
        parser.add_argument(
            "--scenario",
            metavar="FILE",
            help="A TOML scenario: targets with weights, load model, stages, thresholds.",
        )
        parser.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            help="A named load shape with default thresholds (docs/loadtest.md#presets).",
        )
        parser.add_argument(
            "--scale",
            type=float,
            help="Multiply every stage's duration (and the warm-up), e.g. 0.1 for a quick run.",
        )
        parser.add_argument(
            "--fail-on",
            metavar="THRESHOLDS",
            help="Conditions to pass, e.g. 'p99<250ms,errors<1%%,rps>=100'; exit 1 otherwise.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print every figure as JSON on standard output."
        )
        parser.add_argument(
            "--report",
            metavar="FILE",
            help="Write a self-contained HTML report with charts (opens offline).",
        )
        parser.add_argument(
            "--baseline",
            metavar="FILE",
            help="Compare with an earlier run's --json output; a regression fails the run.",
        )
        parser.add_argument(
            "--tolerance",
            type=float,
            default=10.0,
            metavar="PERCENT",
            help="How much worse than the baseline a figure may be (10).",
        )
        parser.add_argument(
            "--invalid",
            type=float,
            metavar="PERCENT",
            help="Send this share of the requests with a malformed body: their 4xx answers "
            "count as expected errors, apart from real failures.",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="Send from N processes (this one and N-1 copies), merged into one result.",
        )
        parser.add_argument(
            "--no-record",
            action="store_true",
            help="Do not save the run in the database (the admin's load-test reports).",
        )
        parser.add_argument("--share", help=argparse.SUPPRESS)
        parser.add_argument("--seed", type=int, help="Seed the choice among weighted targets.")
        add_header_argument(parser)
        add_nats_url_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        settings = self.settings(options)
        try:
            thresholds = parse_thresholds(settings.fail_on) if settings.fail_on else []
        except ThresholdError as error:
            raise usage(f"--fail-on: {error}") from None
        try:
            plan = settings.plan()
        except ScenarioError as error:
            raise usage(str(error)) from None
        report = report_path(options["report"])
        baseline = None
        if options["baseline"]:
            try:
                baseline = read_baseline(Path(options["baseline"]).expanduser())
            except BaselineError as error:
                raise usage(f"--baseline: {error}") from None
        if options["tolerance"] < 0:
            raise usage("--tolerance must be 0 or more.")
        given = parse_headers(options["header"])
        if options["user"]:
            lifetime = plan.duration + plan.timeout + USER_TOKEN_MARGIN
            given[AUTHORIZATION] = f"Bearer {user_token(options['user'], lifetime)}"
        # The system identity for endpoints that need one; a public endpoint is called as its
        # usual callers call it, anonymously, unless --header gives an Authorization.
        headers = caller_headers(given)
        anonymous = headers if AUTHORIZATION in given else without(headers, AUTHORIZATION)
        quiet_connection_logs(options["verbosity"])
        use_running_system(options["nats_url"], self.stderr)
        share = self.share(options)
        if settings.until_handled and options["processes"] > 1:
            raise usage("--until-handled counts what one process publishes: no --processes.")
        websocket = self.websocket(settings, options["processes"], given)
        arguments = dict(
            url=nats_url(options["nats_url"]),
            specs=settings.targets,
            plan=plan,
            headers=headers,
            anonymous_headers=anonymous,
            thresholds=thresholds,
            base=settings.base,
            baseline=baseline,
            tolerance=options["tolerance"] / 100,
            until_handled=settings.until_handled,
            websocket=websocket,
        )
        if share is not None:
            # A copy started by --processes: its part of the run, as JSON, for the first one.
            part = asyncio.run(self.run(**arguments, share=share))
            self.stdout.write(json.dumps(part))
            return
        workers = None
        if options["processes"] > 1:
            workers = Workers(sys.argv, options["processes"])
        try:
            summary = asyncio.run(self.run(**arguments, workers=workers))
        except WorkerError as error:
            raise CommandError(f"--processes: {error}", returncode=FAILURE) from None
        finally:
            if workers is not None:
                workers.stop()
        text = results.render(summary)
        if options["json"]:
            self.stdout.write(json.dumps(summary, indent=2, default=str))
        else:
            self.stdout.write("\n".join(text))
        html = render_html(summary, text) if report is not None else ""
        if report is not None:
            write_atomically(report, html)
            self.stderr.write(f"report: {report}")
        if not options["no_record"]:
            self.record(summary, html)
        if not summary["passed"]:
            self.stderr.write("load test failed: " + "; ".join(summary["failures"]))
            sys.exit(FAILURE)

    def record(self, summary: dict[str, Any], html: str) -> None:
        """Save the run for the admin; a database that refuses costs a warning, not the run."""
        try:
            # The command line as typed; none when called from code (call_command).
            typed = sys.argv[1:] if sys.argv[1:2] == ["loadtest"] else []
            number = save_record(summary, report_html=html, command=shown_command(typed))
        except RecordError as error:
            self.stderr.write(f"warning: the run is not recorded in the database: {error}")
            return
        self.stderr.write(f"recorded: load-test report {number} (in the admin)")

    def share(self, options: dict[str, Any]) -> tuple[int, int] | None:
        """This process's share of a run sent by several (--share, set by --processes)."""
        processes = options["processes"]
        if not 1 <= processes <= MAX_PROCESSES:
            raise usage(f"--processes must be between 1 and {MAX_PROCESSES}.")
        if options["share"] is None:
            if processes > 1 and (len(sys.argv) < 2 or sys.argv[1] != "loadtest"):
                raise usage("--processes works from the command line (manage.py loadtest).")
            return None
        try:
            return parse_share(options["share"])
        except ValueError as error:
            raise usage(str(error)) from None

    def settings(self, options: dict[str, Any]) -> Settings:
        """The run's settings: defaults, then the preset, the scenario, the options."""
        settings = Settings()
        try:
            if options["preset"]:
                settings.apply(preset_layer(options["preset"]))
            if options["scenario"]:
                settings.apply(scenario_layer(Path(options["scenario"]).expanduser()))
            settings.apply(self.option_layer(options))
        except ScenarioError as error:
            raise usage(str(error)) from None
        if options["scale"] is not None:
            if options["scale"] <= 0:
                raise usage("--scale must be more than 0.")
            settings.scale(options["scale"])
        return settings

    def option_layer(self, options: dict[str, Any]) -> dict[str, Any]:
        """What the command line sets; None for what it leaves to the other layers."""
        layer: dict[str, Any] = {
            "requests": options["requests"],
            "fail_on": options["fail_on"],
            "seed": options["seed"],
            "invalid": options["invalid"],
            "duration": duration_option("--duration", options["duration"]),
            "ramp": duration_option("--ramp", options["ramp"]),
            "warmup": duration_option("--warmup", options["warmup"]),
            "timeout": duration_option("--timeout", options["timeout"]),
            "think": duration_option("--think", options["think"]),
            # None when not given, so a scenario's until_handled, websocket, clients stand.
            "until_handled": True if options["until_handled"] else None,
            "websocket": options["websocket"],
            "clients": options["clients"],
        }
        if options["rate"] is not None:
            layer.update(model=OPEN, level=options["rate"])
        if options["concurrency"] is not None:
            layer.update(model=CLOSED, level=float(options["concurrency"]))
        named = [name for name in ("target", "event", "http") if options[name]]
        if len(named) > 1:
            raise usage("give one of an endpoint (service.method), --event SUBJECT or --http URL.")
        if named:
            kind = {"target": "rpc", "event": "event", "http": "http"}[named[0]]
            spec = TargetSpec(
                options[named[0]],
                kind=kind,
                body=options["body"],
                method=options["method"] or "",
                body_size=options["body_size"],
            )
            layer.update(targets=[spec], base=Path.cwd())
        elif options["body"] is not None or options["body_size"] is not None:
            raise usage(
                "--body and --body-size go with a target on the command line; a scenario's "
                "targets have their own (body, body_size)."
            )
        if options["method"] and not options["http"]:
            raise usage("--method goes with --http URL.")
        return layer

    async def run(
        self,
        *,
        url: str,
        specs: list[TargetSpec],
        plan: LoadPlan,
        headers: dict[str, str],
        anonymous_headers: dict[str, str],
        thresholds: list[Any],
        base: Path | None,
        baseline: dict[str, Any] | None = None,
        tolerance: float = 0.1,
        share: tuple[int, int] | None = None,
        workers: Workers | None = None,
        until_handled: bool = False,
        websocket: tuple[str, int, str] | None = None,
    ) -> dict[str, Any]:
        """The run's summary; with ``share``, this copy's part of the run instead."""
        connection = await connect_once(url, role="cli:loadtest")
        loop = asyncio.get_running_loop()
        try:
            try:
                plan.targets = await resolve(connection, specs, base=base)
            except TargetError as error:
                raise usage(str(error)) from None
            plan.__post_init__()
            own = plan.part(*share) if share else plan.part(0, workers.count) if workers else plan
            services = {t.name.partition(".")[0] for t in plan.targets if t.kind == "rpc"}
            watch = await self.handled_watch(connection, plan) if until_handled else None
            listeners = await self.listeners(plan, websocket) if websocket else None
            before = await service_stats(connection, services) if share is None else {}
            start_at = None
            if share is not None:
                self.stdout.write(READY)
                self.stdout.flush()
                start_at = float(await loop.run_in_executor(None, sys.stdin.readline))
            elif workers is not None:
                await loop.run_in_executor(None, workers.wait_ready)
                start_at = time.time() + START_DELAY
                workers.start(start_at)
            recorder = results.Recorder(warmup=plan.warmup)
            stop = asyncio.Event()
            for number in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(number, stop.set)
            generator = Generator(
                own,
                connection,
                recorder,
                headers=headers,
                anonymous_headers=anonymous_headers,
                stop=stop,
            )
            # One live line for the run, the first process's: the copies' would overwrite it.
            progress = loop.create_task(self.show_progress(generator, stop, share is None))
            published: list[float] = []
            sent = asyncio.Event()
            watching = None
            if listeners is not None:
                generator.correlations = listeners.published
                listeners.start(lambda: generator.elapsed() if generator.start else 0.0,
                                plan.warmup)  # fmt: skip
            if watch is not None:
                generator.published = published
                watching = loop.create_task(
                    watch.watch(lambda: generator.elapsed() if generator.start else 0.0,
                                published, sent)
                )  # fmt: skip
            try:
                await generator.run(start_at)
                if listeners is not None:
                    # The frames get --timeout after the last publish to arrive.
                    with contextlib.suppress(TimeoutError):
                        await listeners.wait_delivered(plan.timeout)
                if watching is not None:
                    # The handlers get --timeout after the last publish to catch up.
                    sent.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watching, plan.timeout)
            finally:
                progress.cancel()
                if watching is not None:
                    watching.cancel()
                if listeners is not None:
                    listeners.close()
                for number in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(number)
            recorder.interrupted = stop.is_set()
            if share is not None:
                return recorder.to_json()
            if workers is not None:
                wait = plan.duration + plan.timeout + START_WAIT
                for part in await loop.run_in_executor(None, workers.collect, wait):
                    recorder.merge_json(part)
            server = None
            if services:
                after = await service_stats(connection, services)
                server = stats_difference(before, after)
                server["targets"] = [t.name for t in plan.targets if t.kind == "rpc"]
            summary = results.summarize(
                recorder, plan, thresholds, server=server, earlier=baseline, tolerance=tolerance
            )
            if watch is not None:
                waited = generator.elapsed() - recorder.sending_ended
                handled = watch.summary(published, warmup=plan.warmup, waited=waited)
                summary["handled"] = handled
                if not handled["all_handled"]:
                    summary["failures"].append(
                        f"{handled['published'] - handled['handled']} of "
                        f"{handled['published']} events were not handled within "
                        f"{format_seconds(plan.timeout)} of the last publish"
                    )
                    summary["passed"] = False
            if listeners is not None:
                summary["websocket"] = frames = listeners.summary()
                if not frames["all_delivered"]:
                    summary["failures"].append(
                        f"{frames['expected'] - frames['delivered']} of {frames['expected']} "
                        "event frames did not reach the WebSocket clients within "
                        f"{format_seconds(plan.timeout)} of the last publish"
                    )
                    summary["passed"] = False
            return summary
        finally:
            await connection.close()

    def websocket(
        self, settings: Settings, processes: int, given: dict[str, str]
    ) -> tuple[str, int, str] | None:
        """--websocket (or a scenario's websocket): the URL, the number of clients and the
        token they sign in with."""
        if settings.websocket is None:
            if settings.clients is not None:
                raise usage("--clients goes with --websocket URL.")
            return None
        clients = 1 if settings.clients is None else settings.clients
        if not 1 <= clients <= MAX_CLIENTS:
            raise usage(f"--clients must be between 1 and {MAX_CLIENTS:,}.")
        if processes > 1:
            raise usage("--websocket matches the frames of one process's events: no --processes.")
        if not settings.websocket.startswith(("ws://", "wss://")):
            raise usage(f"--websocket {settings.websocket!r} is not a ws:// or wss:// URL.")
        bearer = given.get(AUTHORIZATION, "")
        if not bearer.startswith("Bearer "):
            raise usage("--websocket: the clients sign in; give --user NAME (or a Bearer token "
                        "in --header Authorization=...).")  # fmt: skip
        return settings.websocket, clients, bearer.removeprefix("Bearer ")

    async def listeners(self, plan: LoadPlan, websocket: tuple[str, int, str]) -> Listeners:
        """--websocket: the clients, open, signed in and subscribed before the run starts."""
        subjects = sorted({t.subject for t in plan.targets if t.kind == "event"})
        if not subjects:
            raise usage("--websocket goes with event targets (--event SUBJECT).")
        url, count, token = websocket
        listeners = Listeners(url, count, subjects, token)
        try:
            await listeners.open()
        except (WebSocketError, OSError, asyncio.IncompleteReadError) as error:
            listeners.close()
            shown = str(error) or "the server closed the connection"
            raise CommandError(f"--websocket: {shown}", returncode=FAILURE) from None
        return listeners

    async def handled_watch(self, connection: Any, plan: LoadPlan) -> HandledWatch:
        """--until-handled: the handlers of the run's events, with their counts before it."""
        subjects = sorted({t.subject for t in plan.targets if t.kind == "event"})
        if not subjects:
            raise usage("--until-handled goes with event targets (--event SUBJECT).")
        try:
            handlers = await find_handlers(connection, subjects)
        except HandledError as error:
            raise usage(str(error)) from None
        watch = HandledWatch(connection, handlers)
        await watch.begin()
        return watch

    async def show_progress(self, generator: Generator, stop: asyncio.Event, show: bool) -> None:
        """A live line on a terminal: rate, p50/p99, errors, in flight, time left."""
        if not show or not sys.stderr.isatty():
            return
        recorder = generator.recorder
        while True:
            await asyncio.sleep(1.0)
            elapsed = generator.elapsed()
            last = recorder.second(int(elapsed) - 1)
            p50, p99 = last.latency.percentile(0.5), last.latency.percentile(0.99)
            left = max(0.0, generator.plan.duration - elapsed)
            sys.stderr.write(
                f"\r{last.requests:6d} req/s  p50 {format_seconds(p50) if p50 else '-':>9}"
                f"  p99 {format_seconds(p99) if p99 else '-':>9}"
                f"  errors {recorder.errors:6d}  in flight {recorder.in_flight:5d}"
                f"  {format_seconds(elapsed)} done, {format_seconds(left)} left "
            )
            sys.stderr.flush()
