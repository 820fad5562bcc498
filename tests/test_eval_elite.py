"""`agora eval --with-elite RUN`: the run's final H_t in the evaluate prompt,
scored beside the bare prompt on the same items with an exact McNemar test; items whose text is in
H_t are left out of both arms.

A scripted fake ensemble runs two real loop steps to build H_t (alpha wins every vote, and alpha's
solutions quote one evaluation item's text); a scripted evaluator then answers better, worse or
the same when it sees the examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli import runner
from agora_cli.cli import app
from agora_cli.config import config_from_dict
from agora_cli.datasets import load_benchmark, subset
from agora_cli.evaluation.evaluate import read_results
from agora_cli.paths import RunPaths
from agora_cli.protocol.majority import MAJORITY
from agora_cli.store import Store
from tests.fakes.ensemble import config_dict, problem_of, responder
from tests.fakes.openai_server import FakeOpenAI, Request, scripted

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N = 10
ITEMS = subset(load_benchmark("gsm8k"), N)
QUOTED = N - 1  # alpha's solutions quote this item's text, so it is in H_t
EXPLANATION = "Add what is bought and subtract what is sold."
# Items (positions in ITEMS) each member gets right without / with H_t in the prompt.
BARE = {"alpha": {0, 1}, "beta": {0, 1, 2}, "gamma": {0, 1, 2, 3, 4}}
ELITE = {"alpha": set(range(N)), "beta": {0, 1, 2}, "gamma": {0}}


def _loop_responder():
    base = responder()

    def solve(req: Request) -> str:
        text = f"I am {req.model}. For Q{problem_of(req)}, adding the numbers step by step gives \\boxed{{7}}"
        if req.model == "alpha":  # a model may copy a benchmark problem into its solution
            text += f" Compare: {ITEMS[QUOTED].problem}"
        return text

    return lambda req: solve(req) if req.role == "solve" else base(req)


def _eval_responder():
    index = {it.problem: (i, it.answer) for i, it in enumerate(ITEMS)}

    def evaluate(req: Request) -> str:
        problem = req.user.rsplit("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip()
        i, gold = index[problem]
        right = (ELITE if EXPLANATION in req.user else BARE)[req.model]
        ans = gold if i in right else str(int(gold) + 1)
        return f"Step by step, the total is {ans}.\n\\boxed{{{ans}}}"

    return scripted({"evaluate": evaluate})


def _config(tmp_path: Path, url: str, run_dir: Path) -> Path:
    data = config_dict(url, run_dir, elite_k=2)
    data["evaluation"] = {
        "benchmarks": ["gsm8k"],
        "grade_workers": 2,
        "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_with_elite_scores_beside_bare_with_a_paired_test(tmp_path: Path, run_dir: Path) -> None:
    with FakeOpenAI(_loop_responder(), latency_s=0.0) as fake:
        cfg_path = _config(tmp_path, fake.url, run_dir)
        runner.run(config_from_dict(yaml.safe_load(cfg_path.read_text())), run_dir=run_dir, steps=2)
        with Store(RunPaths(run_dir).store, readonly=True) as store:
            elite_ids = [
                r[0]
                for r in store.query(
                    "SELECT solution_id FROM elite WHERE active = 1 ORDER BY score DESC, solution_id DESC"
                )
            ]
        assert len(elite_ids) == 2
        fake.responder = _eval_responder()
        fake.clear()
        res = CliRunner().invoke(
            app,
            [
                "eval",
                str(cfg_path),
                "--run-dir",
                str(run_dir),
                "--limit",
                str(N),
                "--with-elite",
                str(run_dir),
            ],
            terminal_width=240,
        )
        assert res.exit_code == 0, res.output
        asked = fake.requests_for("evaluate")

    # Both arms asked every member about the same N - 1 items; only one arm saw H_t.
    with_h = [r for r in asked if EXPLANATION in r.user]
    bare = [r for r in asked if "Example 1" not in r.user]
    assert len(with_h) == len(bare) == 3 * (N - 1) == len(asked) / 2
    assert all(r.user.count("I am alpha") == 2 for r in with_h)  # H_t: alpha's two winners
    assert all(ITEMS[QUOTED].problem not in r.user.rsplit("Problem:", 1)[1] for r in asked)

    evals = RunPaths(run_dir).evals
    bare_rows = read_results(evals / "sampled" / "results.jsonl")
    (elite_dir,) = [d for d in evals.iterdir() if d.name.startswith("sampled-with-elite-")]
    elite_rows = read_results(elite_dir / "results.jsonl")
    assert (
        {r.item_id for r in bare_rows}
        == {r.item_id for r in elite_rows}
        == {it.id for i, it in enumerate(ITEMS) if i != QUOTED}
    )

    comparison = json.loads((elite_dir / "comparison.json").read_text())
    assert comparison["elite_solution_ids"] == elite_ids
    assert comparison["removed_elite_overlap"] == {"gsm8k": [ITEMS[QUOTED].id]}
    paired = comparison["paired"]["gsm8k"]
    # alpha: 2/9 -> 9/9, seven items right only with H_t: exact McNemar p = 2 / 2^7.
    assert (paired["alpha"]["k_a"], paired["alpha"]["k_b"]) == (2, 9)
    assert paired["alpha"]["p"] == pytest.approx(2 / 2**7) and paired["alpha"]["significant"]
    assert paired["beta"]["p"] == 1.0 and not paired["beta"]["significant"]
    # gamma: 5/9 -> 1/9, four right only bare: p = 2 / 2^4, not significant at 0.05.
    assert (paired["gamma"]["only_a"], paired["gamma"]["only_b"]) == (4, 0)
    assert paired["gamma"]["p"] == pytest.approx(0.125) and not paired["gamma"]["significant"]
    assert paired[MAJORITY]["n"] == N - 1
    assert paired["alpha"]["with_elite"]["ci95"] == pytest.approx([0.7008, 1.0], abs=1e-4)

    out = res.output
    assert "22.2% [6.3, 54.7] (2/9)" in out and "100.0% [70.1, 100.0] (9/9)" in out
    assert (
        "gsm8k alpha: bare 22.2% [6.3, 54.7] (2/9) -> with H_t 100.0% [70.1, 100.0] (9/9); "
        "right only bare 0, only with H_t 7; the difference is significant at 0.05 "
        "(p=0.016)"
    ) in out
    assert "only with H_t 0; the difference is not significant at 0.05 (p=0.125)" in out
    assert f"left out 1 item(s) whose text appears in H_t ({ITEMS[QUOTED].id})" in out


def test_with_elite_refuses_what_cannot_put_h_t_in_the_prompt(tmp_path: Path, run_dir: Path) -> None:
    with FakeOpenAI(_eval_responder()) as fake:
        cfg_path = _config(tmp_path, fake.url, run_dir)
        empty = CliRunner().invoke(
            app, ["eval", str(cfg_path), "--limit", "2", "--with-elite", str(tmp_path / "nowhere")]
        )
        assert empty.exit_code == 2 and "no run store" in empty.output
        # A run store with no elite row yet.
        RunPaths(run_dir).ensure()
        Store(RunPaths(run_dir).store).close()
        no_h = CliRunner().invoke(app, ["eval", str(cfg_path), "--limit", "2", "--with-elite", str(run_dir)])
        assert no_h.exit_code == 1 and "H_t is empty" in no_h.output
        assert fake.requests == []


def test_with_elite_refuses_an_evaluate_template_without_examples(tmp_path: Path, run_dir: Path) -> None:
    import shutil

    from agora_cli.paths import PROMPTS_DIR

    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts)
    (prompts / "evaluate.jinja").write_text("{% block user %}Problem: {{ problem }}\nSolution:{% endblock %}")
    with FakeOpenAI(_loop_responder(), latency_s=0.0) as fake:
        cfg_path = _config(tmp_path, fake.url, run_dir)
        runner.run(config_from_dict(yaml.safe_load(cfg_path.read_text())), run_dir=run_dir, steps=1)
        fake.clear()
        res = CliRunner().invoke(
            app,
            [
                "eval",
                str(cfg_path),
                f"prompts_dir={prompts}",
                "--run-dir",
                str(run_dir),
                "--limit",
                "2",
                "--with-elite",
                str(run_dir),
            ],
        )
        assert fake.requests == []  # refused before anything is asked
    assert res.exit_code == 1
    assert "does not use the `examples` variable" in " ".join(res.output.split())
