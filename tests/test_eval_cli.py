"""`agora eval` end to end against the scripted fake server: exact scores, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.datasets import load_benchmark, subset
from agora_cli.evaluation.evaluate import MAJORITY, read_results
from tests.fakes.openai_server import FakeOpenAI
from tests.test_eval import MEMBERS, RIGHT, make_responder

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited


def write_config(tmp_path: Path, url: str, concurrency: int = 4) -> Path:
    cfg = {
        "name": "eval-cli",
        "run_dir": str(tmp_path / "run"),
        "backends": {"fake": {"kind": "openai", "base_url": url}},
        "members": [
            {"name": m, "model": m, "backend": "fake", "max_concurrency": concurrency} for m in MEMBERS
        ],
        "ablations": {"lora": False},
        "client": {"max_retries": 1, "backoff_initial_s": 0.05},
        "evaluation": {
            "benchmarks": ["gsm8k"],
            "grade_workers": 2,
            "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64},
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_eval_command_scores_and_greedy(tmp_path: Path) -> None:
    items = subset(load_benchmark("gsm8k"), 6)
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = write_config(tmp_path, fake.url)
        result = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "6", "--greedy"])
        assert result.exit_code == 0, result.output
        bodies = [r.body for r in fake.requests_for("evaluate")]
    assert len(bodies) == 18 and all(b["temperature"] == 0.0 for b in bodies)
    summary = json.loads((tmp_path / "run" / "evals" / "greedy" / "summary.json").read_text())
    scores = {m: v["score"] for m, v in summary["scores"]["gsm8k"].items()}
    assert scores == {"alice": 4 / 6, "bob": 3 / 6, "carol": 2 / 6, MAJORITY: 2 / 6}
    assert "66.7% [30.0, 90.3] (4/6)" in result.output  # alice, with her 95% Wilson interval
    # Not a terminal: progress as lines, per member and benchmark, a few per pair (not per item).
    for m in MEMBERS:
        assert f"eval {m} gsm8k: 6/6 answered" in result.output
    assert len([x for x in result.output.splitlines() if x.startswith("eval alice gsm8k: ")]) <= 4
    assert summary["scores"]["gsm8k"]["alice"]["ci95"] == pytest.approx([0.2999, 0.9032], abs=1e-4)


def test_eval_command_member_subset_and_bad_version(tmp_path: Path) -> None:
    items = subset(load_benchmark("gsm8k"), 4)
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = write_config(tmp_path, fake.url)
        out = tmp_path / "out"
        ok = CliRunner().invoke(
            app, ["eval", str(cfg), "--limit", "4", "--members", "carol", "--out", str(out)]
        )
        assert ok.exit_code == 0, ok.output
        assert {r.model for r in fake.requests} == {"carol"}
        bad = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "4", "--adapter-version", "carol=3"])
        assert bad.exit_code == 2 and "no adapter v3" in bad.output
        unknown = CliRunner().invoke(app, ["eval", str(cfg), "--members", "dave"])
        assert unknown.exit_code == 2 and "unknown member" in unknown.output
    rows = read_results(out / "results.jsonl")
    assert {r.member for r in rows} == {"carol"} and len(rows) == 4  # no majority of one


@pytest.mark.timeout(180)
def test_killed_evaluation_resumes_without_repeating_items(tmp_path: Path) -> None:
    n_items, kill_after = 12, 9
    items = subset(load_benchmark("gsm8k"), n_items)
    # One request at a time per member, each taking 0.3 s: the kill lands mid-evaluation.
    with FakeOpenAI(make_responder(items), latency_s=0.3) as fake:
        cfg = write_config(tmp_path, fake.url, concurrency=1)
        results = tmp_path / "run" / "evals" / "sampled" / "results.jsonl"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "agora_cli", "eval", str(cfg), "--limit", str(n_items)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(read_results(results)) >= kill_after:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        children = _children(proc.pid)
        assert children  # grader workers (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        # The grader's workers die with the killed evaluation instead of lingering as orphans.
        gone_by = time.monotonic() + 30
        while time.monotonic() < gone_by and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)]
        before = read_results(results)
        assert kill_after <= len(before) < n_items * len(MEMBERS)
        done_before = {(r.model, r.item_id) for r in before}
        first_requests = len(fake.requests)
        fake.clear()

        result = CliRunner().invoke(app, ["eval", str(cfg), "--limit", str(n_items)])
        assert result.exit_code == 0, result.output
        by_problem = {it.problem: it.id for it in items}
        asked_again = [
            (r.model, by_problem[r.user.split("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip()])
            for r in fake.requests
        ]
    # Nothing finished before the kill was asked (or graded) again ...
    assert not done_before & set(asked_again)
    assert len(asked_again) == n_items * len(MEMBERS) - len(before)
    assert first_requests >= len(before)
    # ... every item was evaluated exactly once ...
    rows = read_results(results)
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys)) == n_items * (len(MEMBERS) + 1)
    # ... and the scores are those of an uninterrupted evaluation.
    summary = json.loads(results.with_name("summary.json").read_text())["scores"]["gsm8k"]
    expected = {
        m: sum(i in right for i in range(n_items)) / n_items
        for m, right in {"alice": {0, 1, 2, 3}, "bob": {0, 1, 4}, "carol": {0, 5}}.items()
    }
    assert {m: summary[m]["score"] for m in MEMBERS} == expected
    assert summary[MAJORITY]["score"] == 2 / n_items


def _commit_steps(store_path: Path, steps: range, open_step: int | None = None) -> None:
    from agora_cli.store import Store

    with Store(store_path) as s:
        for t in steps:
            s.execute(
                "INSERT INTO steps(step, started_at, committed_at, difficulty) "
                "VALUES (?, ?, ?, 1.0) ON CONFLICT(step) DO UPDATE "
                "SET committed_at = excluded.committed_at",
                (t, 10.0 * t, 10.0 * t + 8),
            )
        if open_step is not None:  # a step still running has no committed_at: it must not count
            s.execute(
                "INSERT INTO steps(step, started_at, difficulty) VALUES (?, ?, 1.0)",
                (open_step, 10.0 * open_step),
            )


def test_eval_records_the_runs_step_and_the_report_draws_it_there(tmp_path: Path) -> None:
    from agora_cli.evaluation.report import build_report
    from agora_cli.paths import RunPaths

    items = subset(load_benchmark("gsm8k"), 4)
    run = RunPaths(tmp_path / "run").ensure()
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = write_config(tmp_path, fake.url)
        before = CliRunner().invoke(
            app, ["eval", str(cfg), "--limit", "4", "--members", "alice", "--out", str(run.evals / "base")]
        )
        assert before.exit_code == 0, before.output
        _commit_steps(run.store, range(0, 3), open_step=3)
        first = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "4", "--out", str(run.evals / "step2")])
        assert first.exit_code == 0, first.output
        # Two more steps commit; bob now answers item 2 right as well.
        _commit_steps(run.store, range(3, 5))
        fake.responder = make_responder(items, right={**RIGHT, "bob": {0, 1, 2, 4}})
        second = CliRunner().invoke(
            app, ["eval", str(cfg), "--limit", "4", "--out", str(run.evals / "step4")]
        )
        assert second.exit_code == 0, second.output

    def summary(name: str) -> dict:
        return json.loads((run.evals / name / "summary.json").read_text())

    assert summary("base")["step"] is None  # no committed step yet
    assert summary("step2")["step"] == 2  # step 3 was still open
    assert summary("step4")["step"] == 4
    assert summary("step4")["adapter_versions"] == {m: 0 for m in MEMBERS}

    fig1 = json.loads((build_report([run.root]).parent / "run-fig1-anchor.json").read_text())
    assert fig1["anchors"] == {}  # this run had no anchors: the panel is the evaluations'
    got = fig1["evals"]["gsm8k"]
    assert got["alice"]["step"] == [2, 4] and got["alice"]["score"] == [1.0, 1.0]
    assert got["bob"]["score"] == [2 / 4, 3 / 4]
    assert got["carol"]["score"] == [1 / 4, 1 / 4]
    assert got[MAJORITY]["score"] == [2 / 4, 3 / 4]
    assert fig1["evals_without_step"] == ["base"]


def test_repeated_evals_into_one_directory_each_leave_a_point(tmp_path: Path) -> None:
    from agora_cli.evaluation.report import build_report
    from agora_cli.paths import RunPaths

    items = subset(load_benchmark("gsm8k"), 4)
    run = RunPaths(tmp_path / "run").ensure()
    out = str(run.evals / "sampled")  # what `agora eval` uses when --out is not given
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = write_config(tmp_path, fake.url)
        _commit_steps(run.store, range(0, 3))
        first = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "4", "--out", out])
        assert first.exit_code == 0, first.output
        _commit_steps(run.store, range(3, 5))
        for _ in range(2):  # the second evaluation at step 4 replaces the first, not adds to it
            again = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "4", "--out", out])
            assert again.exit_code == 0, again.output

    history = (run.evals / "sampled" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [2, 4, 4]
    assert json.loads((run.evals / "sampled" / "summary.json").read_text())["step"] == 4
    fig1 = json.loads((build_report([run.root]).parent / "run-fig1-anchor.json").read_text())
    got = fig1["evals"]["gsm8k"]
    assert got["alice"]["step"] == [2, 4] and got["alice"]["eval"] == ["sampled", "sampled"]
    assert got["bob"]["score"] == [2 / 4, 2 / 4]  # same adapters: the items were reused
    assert fig1["evals_without_step"] == []
