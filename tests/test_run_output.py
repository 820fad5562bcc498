"""What a researcher sees, through a real `agora run` process with stdout not a terminal (the
plain printer): a line for each server ready, the anchor's progress, each member's training
progress, each adapter swap with its latency, the wait for the last round, and on Ctrl-C what was
kept and the exact command that resumes. The members are served by the fake SGLang server
(tests/fakes/sglang_server.py, real HTTP) and trained by the stub worker (tests/fakes/stub_agora.py),
so the whole run takes seconds."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from tests.fakes.ensemble import REPO
from tests.fakes.openai_server import scripted
from tests.fakes.sglang_server import FakeSGLang

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BASE = "org/base-ui"  # a hub id passes through `prepare` unchanged
LAUNCHER = REPO / "tests" / "fakes" / "stub_agora.py"


def responder():
    counter = iter(range(10**6))

    def generate(req) -> str:  # noqa: ANN001
        n = next(counter)
        return f"Problem: Q{n} A shop has {n + 12} pens and sells {n % 7 + 2} of them. How many are left?"

    return scripted(
        {
            "generate": generate,
            "solve": "We subtract the pens sold from the pens the shop had. \\boxed{7}",
            "verify": "VALID",
            "vote": "A",
            "explain": "Subtract what was sold.",
            "evaluate": "The answer is \\boxed{7}",
        }
    )


def write_config(path: Path, fake: FakeSGLang, run_dir: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": "ui-run",
                "run_dir": str(run_dir),
                "backends": {
                    "gpu": {
                        "kind": "sglang",
                        "launch": False,
                        "urls": {BASE: fake.url},
                        "startup_timeout_s": 30,
                    }
                },
                "members": [
                    {"name": m, "model": BASE, "backend": "gpu", "request_timeout_s": 30} for m in ("a", "b")
                ],
                "client": {"max_retries": 1, "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
                # 2 problems x 2 members, all validated: 4 rows per step, a round after each step.
                "protocol": {
                    "problems_per_step": 2,
                    "generators_per_step": 2,
                    "seed_examples": 1,
                    "buffer_threshold": 4,
                    "anchor_every": 1,
                    "elite_k": 2,
                },
                "ablations": {"quality_vote": False, "external_anchor": True},
                "evaluation": {"calibration_size": 2, "grade_workers": 1},
                "training": {"r": 4, "alpha": 8, "batch_size": 2, "max_length": 320, "epochs": 1},
            }
        )
    )
    return path


def agora(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LAUNCHER), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,  # not a terminal: the plain printer
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_run_says_what_it_does_at_every_stage_and_how_to_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with FakeSGLang(BASE, responder=responder()) as fake:
        cfg = write_config(tmp_path / "ui.yaml", fake, run_dir)
        p = agora("run", str(cfg), "--steps", "2", "--run-dir", str(run_dir))
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, (out + err)[-3000:]
        lines = out.splitlines()

        def find(prefix: str) -> list[str]:
            return [line for line in lines if line.startswith(prefix)]

        assert find(f"server ready: gpu {BASE} at {fake.url} after "), out
        anchor = find("anchor step 0: ")
        assert any(line.endswith(" answered") for line in anchor), out  # its progress, e.g. 4/4
        progress = find("training round 1 a: step 1/2 loss 1.5000 99 tok/s")
        assert progress, out
        swaps = [line for line in find("adapter swap: a v1 live after ") if line.endswith(" s")]
        assert swaps, out
        # The last step brings a round (in flight or just started): the run says it waits for it.
        assert find("all steps committed; waiting for training round "), out
        # The step line names the buffer's untrained rows apart from its running total.
        assert "buffer untrained 4/4, total 4" in find("step 0 |")[0], out
        assert "| approval 1.000 [0.510, 1.000] (4/4) " in find("step 0 |")[0], out

        # Ctrl-C (SIGINT) mid-run: what was kept, and the exact command that resumes.
        p = agora("run", str(cfg), "protocol.elite_k=2", "--steps", "50", "--run-dir", str(run_dir))
        deadline = time.monotonic() + 120
        events = RunPaths(run_dir).events
        while sum(e["kind"] == "step_committed" for e in read_events(events)) < 3:
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out + err)[-3000:]
    assert "interrupted: " in err and "step(s) committed" in err, err
    command = err.split("resume with: ", 1)[1].strip().splitlines()[0]
    assert shlex.split(command) == [
        "agora",
        "run",
        str(cfg),
        "protocol.elite_k=2",
        "--steps",
        "50",
        "--run-dir",
        str(run_dir),
    ]
