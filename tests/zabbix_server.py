"""A private Zabbix 6.0 server and API frontend for the tests, on a database of their own.

Debian's ``zabbix-server-pgsql`` and ``zabbix-frontend-php`` (.ci/run installs them): the
schema loads into a new database on the machine's PostgreSQL (never another's), the server runs
in the foreground with a configuration of the test's (its own trapper port, a configuration
cache that syncs every second, few workers), and ``php -S`` serves a copy of the frontend whose
configuration path points at the test's file (the Debian frontend reads only
``/etc/zabbix/zabbix.conf.php``, which the test must not touch).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from cliffracer_core.testing.polling import wait_for
from cliffracer_core.transports.nats.embedded import free_port

SERVER = Path("/usr/sbin/zabbix_server")
FRONTEND = Path("/usr/share/zabbix")
SCHEMA = Path("/usr/share/zabbix-server-pgsql")
POSTGRES = {"host": "127.0.0.1", "port": "5432", "user": "postgres"}
WORKERS = {
    "StartPollers": 1,
    "StartPollersUnreachable": 1,
    "StartTrappers": 2,
    "StartPingers": 0,
    "StartDiscoverers": 0,
    "StartHTTPPollers": 0,
    "StartTimers": 1,
    "StartEscalators": 1,
    "StartAlerters": 1,
    "StartPreprocessors": 1,
    "StartLLDProcessors": 1,
    "StartHistoryPollers": 1,
    "StartDBSyncers": 1,
    "StartProxyPollers": 0,
    "StartReportWriters": 0,
    "StartODBCPollers": 0,
    "StartVMwareCollectors": 0,
    "StartJavaPollers": 0,
}


def zabbix_port() -> int:
    """A free loopback port Zabbix accepts as ListenPort (1024-32767)."""
    import random
    import socket

    for _ in range(200):
        port = random.randint(20000, 32767)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for Zabbix")


def missing() -> str | None:
    """Why no Zabbix can run here, or None."""
    for path in (SERVER, FRONTEND, SCHEMA / "schema.sql.gz"):
        if not path.exists():
            return f"Zabbix is not installed ({path} is missing; .ci/run installs it)"
    if shutil.which("php") is None or shutil.which("psql") is None:
        return "php or psql is not installed"
    answer = subprocess.run(
        ["psql", "-h", POSTGRES["host"], "-U", POSTGRES["user"], "-tAc", "select 1"],
        capture_output=True,
        text=True,
    )
    if answer.returncode != 0:
        return f"no PostgreSQL with trust authentication at 127.0.0.1:5432: {answer.stderr}"
    return None


class ZabbixServer:
    """Starts in ``directory``; ``trapper_port`` and ``url`` (the API frontend)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.database = f"cliffracer_zabbix_{uuid.uuid4().hex[:12]}"
        self.trapper_port = zabbix_port()
        self.http_port = free_port("127.0.0.1")
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def _psql(self, *arguments: str, stdin: bytes | None = None, database: str = "postgres"):
        subprocess.run(
            [
                "psql",
                "-h",
                POSTGRES["host"],
                "-U",
                POSTGRES["user"],
                "-d",
                database,
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                *arguments,
            ],
            input=stdin,
            check=True,
            capture_output=True,
        )

    def start(self) -> ZabbixServer:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> ZabbixServer:
        self._psql("-c", f"CREATE DATABASE {self.database}")
        # One transaction per file: far faster than a commit per statement.
        for name in ("schema", "images", "data"):
            sql = gzip.decompress((SCHEMA / f"{name}.sql.gz").read_bytes())
            self._psql("-1", stdin=sql, database=self.database)
        configuration = self.directory / "zabbix_server.conf"
        settings = {
            "ListenIP": "127.0.0.1",
            "ListenPort": self.trapper_port,
            "DBHost": POSTGRES["host"],
            "DBPort": POSTGRES["port"],
            "DBName": self.database,
            "DBUser": POSTGRES["user"],
            "PidFile": self.directory / "zabbix_server.pid",
            "LogType": "console",
            "SocketDir": self.directory,
            "AllowRoot": 1,
            "CacheUpdateFrequency": 1,
            "Timeout": 4,
            **WORKERS,
        }
        configuration.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        frontend = self.directory / "frontend"
        shutil.copytree(FRONTEND, frontend, symlinks=True)
        config_file = frontend / "include/classes/core/CConfigFile.php"
        php_configuration = self.directory / "zabbix.conf.php"
        config_file.write_text(
            config_file.read_text().replace(
                "'/etc/zabbix/zabbix.conf.php'", f"'{php_configuration}'"
            )
        )
        php_configuration.write_text(
            "<?php\n"
            "$DB['TYPE'] = 'POSTGRESQL';\n"
            f"$DB['SERVER'] = '{POSTGRES['host']}';\n"
            f"$DB['PORT'] = '{POSTGRES['port']}';\n"
            f"$DB['DATABASE'] = '{self.database}';\n"
            f"$DB['USER'] = '{POSTGRES['user']}';\n"
            "$DB['PASSWORD'] = '';\n$DB['SCHEMA'] = '';\n$DB['ENCRYPTION'] = false;\n"
            "$DB['KEY_FILE'] = '';\n$DB['CERT_FILE'] = '';\n$DB['CA_FILE'] = '';\n"
            "$DB['VERIFY_HOST'] = false;\n$DB['CIPHER_LIST'] = '';\n$DB['VAULT_URL'] = '';\n"
            "$DB['VAULT_DB_PATH'] = '';\n$DB['VAULT_TOKEN'] = '';\n"
            "$DB['DOUBLE_IEEE754'] = true;\n"
            "$ZBX_SERVER = '127.0.0.1';\n"
            f"$ZBX_SERVER_PORT = '{self.trapper_port}';\n"
            "$ZBX_SERVER_NAME = 'cliffracer-test';\n"
            "$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;\n"
        )
        self._spawn("server", [str(SERVER), "-f", "-c", str(configuration)])
        self._spawn("frontend", ["php", "-S", f"127.0.0.1:{self.http_port}", "-t", str(frontend)])
        wait_for(lambda: self._answers(self.trapper_port), 30, what="the Zabbix trapper")
        wait_for(lambda: self._answers(self.http_port), 30, what="the Zabbix frontend")
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115  (the process's)
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        )

    @staticmethod
    def _answers(port: int) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._psql("-c", f"DROP DATABASE IF EXISTS {self.database}")
