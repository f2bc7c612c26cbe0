"""``runservice --inspect``: a local REPL into a running service, behind a secret."""

import json
import re
import socket
import threading
import time

import pytest

from cliffracer_core import call
from cliffracer_core.dev.inspection import InspectionRefused, check_options
from cliffracer_core.testing.plugin import run_async
from tests.test_runservice import run_manage, send_sleeps, wait_for

SECRET = "correct horse battery staple"
TEST_SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.settings"}


def read_until(connection: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    connection.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def open_console(port: int, secret: str) -> tuple[socket.socket, bytes]:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert read_until(connection, b"secret: ").endswith(b"secret: ")
    connection.sendall(secret.encode() + b"\n")
    return connection, read_until(connection, b">>> " if secret == SECRET else b"refused")


def console_port(process) -> int:
    wait_for(lambda: "Inspection console for" in process.output())
    return int(re.search(r"listening on 127\.0\.0\.1:(\d+)", process.output())[1])


def test_inspect_lists_in_flight_handlers_and_evaluates(nats_server, runservice_process):
    process = runservice_process(
        "testservice", "--inspect", "0", CLIFFRACER_INSPECT_SECRET=SECRET, **TEST_SETTINGS
    )
    port = console_port(process)
    caller = threading.Thread(target=lambda: run_async(send_sleeps(nats_server.url, 2, 2.0)))
    caller.start()
    wait_for(lambda: call("testservice.sleeping_now")["count"] == 2)
    connection, banner = open_console(port, SECRET)
    try:
        assert b"Cliffracer inspection of testservice" in banner
        connection.sendall(b"print(in_flight())\n")
        listing = read_until(connection, b">>> ").decode()
        assert listing.count("rpc sleep [") == 2, listing
        connection.sendall(b"print(await asyncio.sleep(0, result=6 * 7))\n")
        assert b"42" in read_until(connection, b">>> ")
        connection.sendall(b"print(service.sleeping, stats()['sleep']['requests'])\n")
        assert b"2 0" in read_until(connection, b">>> ")
        connection.sendall(b"print(len(tasks()) > 0)\n")
        assert b"True" in read_until(connection, b">>> ")
    finally:
        connection.close()
    caller.join(30)
    assert process.stop() == 0
    assert SECRET not in process.output()


def test_a_wrong_secret_is_refused(nats_server, runservice_process):
    process = runservice_process(
        "testservice", "--inspect", "0", CLIFFRACER_INSPECT_SECRET=SECRET, **TEST_SETTINGS
    )
    port = console_port(process)
    connection, answer = open_console(port, "wrong secret")
    try:
        assert answer.strip().endswith(b"refused")
        # The server closed the connection: nothing was evaluated.
        assert connection.recv(100) == b""
    finally:
        connection.close()
    wait_for(lambda: "refused a connection" in process.output())
    assert "wrong secret" not in process.output()
    assert call("testservice.echo", {"text": "still serving"}) == {"text": "still serving"}


def test_inspect_refuses_to_start_without_a_secret(nats_server):
    result = run_manage("runservice", "testservice", "--inspect", "0", **TEST_SETTINGS)
    assert result.returncode == 2
    assert "CLIFFRACER_INSPECT_SECRET" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inspection_is_local_only():
    with pytest.raises(InspectionRefused):
        check_options(host="0.0.0.0", secret="s")
    with pytest.raises(InspectionRefused):
        check_options(host="127.0.0.1", secret="")
    check_options(host="127.0.0.1", secret="s")
    check_options(host="::1", secret="s")


def test_inspection_is_off_by_default(nats_server, runservice_process):
    process = runservice_process("testservice", CLIFFRACER_INSPECT_SECRET=SECRET, **TEST_SETTINGS)
    assert call("testservice.echo", {"text": "x"}) == {"text": "x"}
    time.sleep(0.2)
    assert "Inspection console" not in process.output()
    assert json.dumps(SECRET) not in process.output()
