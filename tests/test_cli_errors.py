"""Errors at one edge: every expected failure, driven through the real CLI, is exactly one line on
stderr and a non-zero exit; `--debug` shows the traceback instead. Also the failures that used to
be swallowed: a failing event sink says so once, runs do not leave their sink on a reused bus,
and missing training packages are named instead of turning LoRA off."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli import runner
from agora_cli import store as store_mod
from agora_cli.cli import app
from agora_cli.client import ClientPool
from agora_cli.config import load_config
from agora_cli.events import EventBus, read_events
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.fakes.ensemble import MEMBERS, config_dict, responder, write_config
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = pytest.mark.timeout(180)
cli = CliRunner()


def one_error_line(res) -> str:  # noqa: ANN001
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.unit
def test_agora_error_is_one_line_and_its_text_is_never_markup(tmp_path):
    missing = tmp_path / "[bold]runs[/bold]" / "x"
    res = cli.invoke(app, ["status", str(missing)])
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "[bold]runs[/bold]" in line  # printed as written, not parsed as Rich markup
    assert res.stdout == ""


@pytest.mark.unit
def test_debug_shows_the_traceback_instead(tmp_path):
    res = cli.invoke(app, ["--debug", "status", str(tmp_path / "nope")])
    assert res.exit_code != 0
    assert type(res.exception).__name__ == "NoRunError"


@pytest.mark.integration
def test_a_locked_database_is_one_line(tmp_path, run_dir, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        assert cli.invoke(app, ["run", str(cfg), "--steps", "0", "--run-dir", str(run_dir)]).exit_code == 0
        other = sqlite3.connect(RunPaths(run_dir).store, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write lock, held
        try:
            res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert res.exit_code == 1, res.output
    assert "database is locked" in one_error_line(res)


@pytest.mark.integration
def test_disk_full_is_one_line(tmp_path, run_dir):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fill a disk on demand")
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        RunPaths(run_dir).config.symlink_to("/dev/full")  # writing the run's config: ENOSPC
        res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
    assert res.exit_code == 1, res.output
    line = one_error_line(res)
    assert "No space left on device" in line and "free some disk space" in line


@pytest.mark.integration
def test_an_exception_group_from_the_step_is_unwrapped_to_one_line(tmp_path, run_dir, monkeypatch):
    """A store write failing inside the step's TaskGroup (the database locked by another
    process while requests land) reaches the edge as an ExceptionGroup."""
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    script = responder()
    held: list[sqlite3.Connection] = []
    locked = threading.Event()

    def lock_on_solve(req):  # noqa: ANN001, ANN202
        if req.role == "solve" and not held:
            conn = sqlite3.connect(RunPaths(run_dir).store, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN IMMEDIATE")
            held.append(conn)
            locked.set()
        return script(req)

    with FakeOpenAI(lock_on_solve, latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
    for conn in held:
        conn.execute("ROLLBACK")
        conn.close()
    assert locked.is_set()
    assert res.exit_code == 1, res.output
    line = one_error_line(res)
    assert "database is locked" in line
    assert "Traceback" not in res.output


@pytest.mark.unit
def test_missing_training_packages_are_named_not_silently_skipped(tmp_path, run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    d = config_dict("http://127.0.0.1:9/v1", run_dir)
    d["ablations"]["lora"] = True  # LoRA needs a backend that loads adapters: SGLang, attached
    d["backends"] = {"gpu": {"kind": "sglang", "launch": False, "urls": {"m": "http://127.0.0.1:9"}}}
    for m in d["members"]:
        m.update(backend="gpu", model="m")
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(d))
    res = cli.invoke(app, ["run", str(tmp_path / "lora.yaml"), "--steps", "1", "--run-dir", str(run_dir)])
    assert res.exit_code == 1, res.output
    line = one_error_line(res)
    assert "peft" in line and "ablations.lora=false" in line


@pytest.mark.integration
def test_a_failing_event_sink_says_so_once_and_the_run_goes_on(tmp_path, run_dir, caplog):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to fill a disk on demand")
    seen: list[dict] = []
    bus = EventBus([seen.append])
    RunPaths(run_dir).events.symlink_to("/dev/full")  # events.jsonl on a full disk
    with FakeOpenAI(responder(), latency_s=0.0) as fake, caplog.at_level(logging.WARNING, "agora"):
        cfg = load_config(write_config(tmp_path / "fake.yaml", fake.url, run_dir))
        result = runner.run(cfg, run_dir=run_dir, steps=2, bus=bus)
    assert result.committed == 2  # the run went on
    failed = [e for e in seen if e["kind"] == "sink_failed"]
    assert len(failed) == 1 and "No space left on device" in failed[0]["error"]
    assert [e["kind"] for e in seen].count("step_committed") == 2  # the other sink kept going
    warnings = [r for r in caplog.records if "event sink" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.integration
def test_a_reused_bus_does_not_write_into_the_last_runs_closed_sink(tmp_path):
    """`agora ablate` runs the grid on one bus: each run's events.jsonl gets its own events."""
    seen: list[dict] = []
    bus = EventBus([seen.append])
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        for name in ("a", "b"):
            cfg = load_config(write_config(tmp_path / f"{name}.yaml", fake.url, tmp_path / name))
            runner.run(cfg, run_dir=tmp_path / name, steps=1, bus=bus)
    assert not [e for e in seen if e["kind"] == "sink_failed"]
    for name in ("a", "b"):
        events = read_events(RunPaths(tmp_path / name).events)
        assert {e["run_dir"] for e in events if "run_dir" in e} == {str(tmp_path / name)}
        assert [e["kind"] for e in events].count("step_committed") == 1
    with Store(RunPaths(tmp_path / "b").store) as store:
        assert store.last_committed_step() == 0


@pytest.mark.integration
def test_a_backend_that_fails_to_stop_is_reported_and_the_others_still_stop(tmp_path, caplog):
    from agora_cli.serving import Serving

    class Backend:
        def __init__(self, fail: bool):
            self.fail, self.stopped = fail, False

        def stop(self) -> None:
            self.stopped = True
            if self.fail:
                raise OSError("permission denied sending SIGTERM to pid 1234")

    seen: list[dict] = []
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = load_config(write_config(tmp_path / "fake.yaml", fake.url, tmp_path / "run"))
    serving = Serving(cfg, RunPaths(tmp_path / "run"), EventBus([seen.append]))
    broken, fine = Backend(fail=True), Backend(fail=False)
    serving.backends = {"broken": broken, "fine": fine}  # two backends, one that cannot stop
    with caplog.at_level(logging.WARNING, "agora"):
        serving.stop()
    assert broken.stopped and fine.stopped
    failed = [e for e in seen if e["kind"] == "server_stop_failed"]
    assert len(failed) == 1 and failed[0]["backend"] == "broken"
    assert "permission denied" in failed[0]["error"]
    assert any("broken failed to stop" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_ping_shows_a_failing_members_error_as_text_not_markup(tmp_path, run_dir):
    with FakeOpenAI(lambda r: Reply(status=400, text="[b]x[/b]"), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(app, ["models", "ping", str(cfg), "--run-dir", str(run_dir)])
    assert res.exit_code == 1, res.output
    assert res.stdout.count("[b]x") == 3  # one row per member, the brackets kept as written


@pytest.mark.integration
def test_ping_shows_a_cancelled_request_as_a_failed_member(tmp_path, run_dir, monkeypatch):
    """gather() returns a cancelled chat as CancelledError (a BaseException, not an Exception):
    its member's row shows it and the command exits 1 instead of crashing on the table."""
    real_chat = ClientPool.chat

    async def chat(self, member, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if member == MEMBERS[0]:
            raise asyncio.CancelledError
        return await real_chat(self, member, *args, **kwargs)

    monkeypatch.setattr(ClientPool, "chat", chat)
    with FakeOpenAI(lambda r: Reply(text="pong"), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        res = cli.invoke(app, ["models", "ping", str(cfg), "--run-dir", str(run_dir)])
    assert res.exit_code == 1, res.output
    assert res.stdout.count("CancelledError") == 1
    assert res.stdout.count("pong") == len(MEMBERS) - 1
