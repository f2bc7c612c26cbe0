"""Live inspection of a running service: an asyncio REPL on 127.0.0.1, behind a secret.

The REPL is aioconsole's ``AsynchronousConsole`` (the console aiomonitor itself uses), run on
the service's own event loop, so ``await`` works and every object is live. aiomonitor's own
servers (telnet, web UI and console port) take no credentials, so Cliffracer serves the console
itself and lets a connection in only after it has sent the configured secret.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

from aioconsole import AsynchronousConsole

from cliffracer_core.dev.console import is_loopback

if TYPE_CHECKING:
    from cliffracer_core.core.runner import ServiceRunner

logger = logging.getLogger("cliffracer.inspection")

PROMPT = b"secret: "
SECRET_WAIT = 10.0


class InspectionRefused(ValueError):
    """Inspection cannot start as asked (no secret, or not a loopback address)."""


def check_options(*, host: str, secret: str | None) -> None:
    if not secret:
        raise InspectionRefused(
            "--inspect needs a secret: set CLIFFRACER_INSPECT_SECRET (or "
            "CLIFFRACER['INSPECT_SECRET'])."
        )
    if not is_loopback(host):
        raise InspectionRefused(f"--inspect binds to the loopback address only, not {host!r}.")


def namespace(runner: ServiceRunner) -> dict[str, Any]:
    """What a person finds in the console: the runner, the service, and a few helpers."""

    def tasks() -> list[str]:
        """Every task on the service's loop, one line each."""
        lines = []
        for task in sorted(asyncio.all_tasks(runner.loop), key=lambda t: t.get_name()):
            coroutine = task.get_coro()
            where = getattr(coroutine, "__qualname__", repr(coroutine))
            lines.append(f"{task.get_name():<32} {where}")
        return lines

    def in_flight() -> list[str]:
        """The handlers running now: kind, name, correlation id and seconds so far."""
        now = time.monotonic()
        return [
            f"{kind} {name} [{correlation_id}] {now - since:.3f}s"
            for kind, name, correlation_id, since in runner.in_flight_handlers()
        ]

    def stats() -> dict[str, Any]:
        """Per-endpoint counters, as $SRV.STATS reports them."""
        return {
            name: {
                "requests": counters.num_requests,
                "errors": counters.num_errors,
                "average_ms": counters.average_processing_time / 1e6,
                "last_error": counters.last_error,
            }
            for name, counters in runner.counters.items()
        }

    return {
        "runner": runner,
        "service": runner.service,
        "tasks": tasks,
        "in_flight": in_flight,
        "stats": stats,
        "__name__": "__console__",
    }


async def start_inspection(
    runner: ServiceRunner, *, secret: str, host: str = "127.0.0.1", port: int = 0
) -> asyncio.Server:
    """Serve the console for ``runner`` on ``host:port`` (0: any free port)."""
    check_options(host=host, secret=secret)
    expected = secret.encode()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            writer.write(PROMPT)
            await writer.drain()
            offered = (await asyncio.wait_for(reader.readline(), SECRET_WAIT)).strip()
            if not hmac.compare_digest(offered, expected):
                # Never log what was offered: it may be a mistyped real secret.
                logger.warning("Inspection console: refused a connection from %s.", peer)
                writer.write(b"refused\n")
                await writer.drain()
                return
            logger.warning("Inspection console: %s connected.", peer)
            console = AsynchronousConsole(streams=(reader, writer), locals=namespace(runner))
            banner = (
                f"Cliffracer inspection of {runner.name} (instance {runner.identity.id}).\n"
                "runner, service, tasks(), in_flight(), stats(); await works. Ctrl-D leaves."
            )
            await console.interact(banner=banner, stop=False, handle_sigint=False)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, host, port)
    address = server.sockets[0].getsockname()
    logger.warning(
        "Inspection console for %s listening on %s:%d (local only; secret required).",
        runner.name,
        address[0],
        address[1],
    )
    return server
