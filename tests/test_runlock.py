"""One writer per run directory, with real processes: a second writer exits 2 with one line naming
the first; readers never block; a SIGKILLed holder leaves nothing stuck and the next run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli import runlock
from agora_cli.cli import app
from agora_cli.errors import RunLockedError
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.fakes.ensemble import REPO, config_dict, responder, write_config
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = pytest.mark.timeout(300)
cli = CliRunner()
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def agora(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agora_cli", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
        **kw,
    )


def holder(path: Path, name: str = runlock.RUN_LOCK) -> subprocess.Popen:
    """A tiny python process holding the lock until killed; returns once it holds it."""
    code = (
        "import sys; from agora_cli import runlock\n"
        f"with runlock.hold({str(path)!r}, name={name!r}, command='holder-process'):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.integration
def test_second_run_exits_2_naming_the_first_and_a_sigkilled_run_resumes(tmp_path, run_dir):
    script = responder()
    stalled = threading.Event()
    stall = [True]

    def stall_votes(req):
        if req.role == "vote" and stall[0]:
            stalled.set()
            return Reply(text="A", delay_s=120)
        return script(req)

    with FakeOpenAI(stall_votes, latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        first = subprocess.Popen(
            [sys.executable, "-m", "agora_cli", "run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert stalled.wait(120)  # mid-step, holding the lock
            second = agora("run", str(cfg), "--steps", "1", "--run-dir", str(run_dir))
            assert second.returncode == 2, second.stderr
            line = one_line(second.stderr)
            assert f"pid {first.pid}" in line and "agora run" in line and "since" in line
            for stage in ("solve", "vote"):
                res = agora(stage, "--run-dir", str(run_dir))
                assert res.returncode == 2 and f"pid {first.pid}" in one_line(res.stderr)
            # Readers never block on it.
            st = agora("status", str(run_dir))
            assert st.returncode == 0, st.stderr
            assert "step 0 open" in st.stdout
            with Store(RunPaths(run_dir).store, readonly=True) as store:
                assert store.scalar("SELECT COUNT(*) FROM votes") == 0
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(30)
        # The kernel dropped the dead holder's lock: the next run takes it and resumes step 0.
        stall[0] = False
        res = agora("run", str(cfg), "--steps", "1", "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert f"resuming run {run_dir} at step 0" in res.stdout
    with Store(RunPaths(run_dir).store) as store:
        assert store.last_committed_step() == 0
    assert runlock.holder(run_dir / runlock.RUN_LOCK) is None  # released on exit: nobody named


@pytest.mark.integration
def test_train_and_stage_commands_refuse_a_held_run_dir(tmp_path, run_dir):
    d = config_dict("http://127.0.0.1:9/v1", run_dir)
    d["ablations"]["lora"] = True  # LoRA needs a backend that loads adapters: SGLang, attached
    d["backends"] = {"gpu": {"kind": "sglang", "launch": False, "urls": {"m": "http://127.0.0.1:9"}}}
    for m in d["members"]:
        m.update(backend="gpu", model="m")
    RunPaths(run_dir).config.write_text(yaml.safe_dump(d))
    Store(RunPaths(run_dir).store).close()
    p = holder(run_dir)
    try:
        for args in (["train", "--run-dir", str(run_dir)], ["generate", "--run-dir", str(run_dir)]):
            res = cli.invoke(app, args)
            assert res.exit_code == 2, res.output
            line = one_line(res.stderr)
            assert f"pid {p.pid} (`holder-process`)" in line, line
            assert res.stdout.strip() == ""
    finally:
        p.kill()
        p.wait()
    # SIGKILLed holder: the lock is free at once.
    with runlock.hold(run_dir, command="next"):
        assert runlock.holder(run_dir / runlock.RUN_LOCK)["command"] == "next"


@pytest.mark.integration
def test_serve_has_its_own_lock(tmp_path, run_dir):
    with FakeOpenAI(responder(), latency_s=0.0) as fake:
        cfg = write_config(tmp_path / "fake.yaml", fake.url, run_dir)
        p = holder(run_dir, runlock.SERVE_LOCK)
        try:
            res = cli.invoke(app, ["serve", str(cfg), "--run-dir", str(run_dir)])
            assert res.exit_code == 2, res.output
            assert "is served by pid" in one_line(res.stderr)
            # A store writer is not blocked by `agora serve` (it attaches to its servers).
            res = cli.invoke(app, ["run", str(cfg), "--steps", "1", "--run-dir", str(run_dir)])
            assert res.exit_code == 0, res.output
        finally:
            p.kill()
            p.wait()


@pytest.mark.unit
def test_lock_in_one_process_is_exclusive_and_released(run_dir):
    with runlock.hold(run_dir, command="a"):
        with pytest.raises(RunLockedError, match=r"in use by pid \d+ \(`a`\)"):
            with runlock.hold(run_dir, command="b"):
                pass
    with runlock.hold(run_dir, command="b"):
        pass
