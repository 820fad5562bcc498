"""`agora eval` on a real small model (SmolLM2-135M-Instruct, embedded transformers backend)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agora_cli.datasets import load_benchmark, subset
from agora_cli.evaluation.evaluate import read_results
from agora_cli.evaluation.grading import Grader
from agora_cli.protocol.answers import extract_answer
from agora_cli.protocol.common import strip_prompt_echo
from agora_cli.protocol.prompts import Prompts

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_eval_smollm2_two_items(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "agora_cli",
        "eval",
        "configs/tiny-transformers.yaml",
        "evaluation.sampling.max_tokens=32",
        "--members",
        "smol-a",
        "--limit",
        "2",
        "--benchmarks",
        "gsm8k",
        "--run-dir",
        str(run_dir),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # pass@1 with its 95% Wilson interval and k/n, e.g. `50.0% [9.5, 90.5] (1/2)`.
    assert "smol-a" in p.stdout and re.search(r"% \[\d+\.\d, \d+\.\d\] \([012]/2\)", p.stdout)

    out = run_dir / "evals" / "sampled"
    rows = read_results(out / "results.jsonl")
    items = {it.id: it for it in subset(load_benchmark("gsm8k"), 2)}
    assert sorted(r.item_id for r in rows) == sorted(items)
    prompts = Prompts()
    with Grader(1, 10) as grader:
        for r in rows:
            assert r.member == "smol-a" and r.reply.strip() and 0 < r.completion_tokens <= 32
            assert r.gold == items[r.item_id].answer
            messages = prompts.render("evaluate", problem=items[r.item_id].problem)
            text = strip_prompt_echo(r.reply, messages)
            assert r.answer == extract_answer(text)
            assert r.correct == grader.grade(text, r.gold)  # stored grade = a fresh regrade
    summary = json.loads((out / "summary.json").read_text())
    s = summary["scores"]["gsm8k"]["smol-a"]
    assert s["n"] == 2 and s["score"] == sum(r.correct for r in rows) / 2
    assert summary["sampling"]["max_tokens"] == 32 and summary["adapter_versions"] == {"smol-a": 0}
