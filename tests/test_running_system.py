"""The record of where ``runsystem`` runs NATS (``var/runsystem.json``)."""

import json
import os
import stat
import subprocess

import pytest

from cliffracer_core.dev.running_system import (
    read_record,
    record_path,
    remove_record,
    write_record,
)


@pytest.fixture(autouse=True)
def var_dir(tmp_path, settings):
    settings.VAR_DIR = tmp_path / "var"
    return settings.VAR_DIR


def test_a_record_is_written_for_its_owner_only_and_read_back(var_dir):
    written = write_record("nats://user:secret@127.0.0.1:4333")
    assert record_path() == var_dir / "runsystem.json"
    assert stat.S_IMODE(record_path().stat().st_mode) == 0o600
    assert read_record() == written
    assert (written.url, written.pid) == ("nats://user:secret@127.0.0.1:4333", os.getpid())
    remove_record()
    assert not record_path().exists()
    assert read_record() is None


def test_a_runsystem_removes_its_own_record_only(var_dir):
    other = subprocess.Popen(["sleep", "30"])
    try:
        var_dir.mkdir(parents=True)
        record_path().write_text(
            json.dumps({"url": "nats://127.0.0.1:4333", "pid": other.pid, "started": "now"})
        )
        remove_record()  # another runsystem's, running: left alone
        assert read_record().pid == other.pid
    finally:
        other.kill()
        other.wait()
    # Its process is gone: the record no longer counts.
    assert read_record() is None
    assert read_record(alive_only=False).pid == other.pid


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"url": "nats://x:1"}', '{"pid": "x"}'])
def test_an_unreadable_record_is_none(var_dir, text):
    var_dir.mkdir(parents=True)
    record_path().write_text(text)
    assert read_record() is None
