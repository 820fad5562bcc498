"""The contamination check: evaluation items sharing a word 13-gram with a problem the run
generated are flagged in the summary, in `agora eval`'s output and in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.datasets import Item, load_benchmark, normalize_text, subset
from agora_cli.evaluation.contamination import contaminated
from agora_cli.evaluation.report import build_report
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.fakes.openai_server import FakeOpenAI
from tests.test_eval import make_responder
from tests.test_eval_cli import write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_thirteen_words_in_a_row_flag_an_item_and_twelve_do_not() -> None:
    item = subset(load_benchmark("gsm8k"), 3)[1]
    words = normalize_text(item.problem).split()  # the words the check compares
    assert len(words) > 20
    copied = "Here is a NEW problem!! " + " ".join(words[3:16]).upper() + " ... and more."
    twelve = "A different story: " + " ".join(words[3:15]) + " ends here."
    short = Item(id="toy/1", problem="What is 2 + 2?", answer="4", benchmark="toy")
    flagged = contaminated(
        {"gsm8k": [item], "toy": [short]},
        [(7, copied), (8, twelve), (9, "Compute: what is 2 + 2? Then double it.")],
    )
    # Case and punctuation are normalised away; 12 shared words are not 13; a short item is
    # flagged when all of it appears in a problem.
    assert flagged == {"gsm8k": {item.id: [7]}, "toy": {"toy/1": [9]}}


def test_eval_flags_an_item_the_run_generated_and_the_report_says_so(tmp_path: Path) -> None:
    items = subset(load_benchmark("gsm8k"), 6)
    leaked = items[2]
    run = RunPaths(tmp_path / "run").ensure()
    with Store(run.store) as s:
        for text in ("Tom has 3 apples and buys 4 more. How many apples does he have?", leaked.problem):
            s.execute(
                "INSERT INTO problems(step, author, text, difficulty, created_at) "
                "VALUES (0, 'alice', ?, 1.0, 0)",
                (text,),
            )
        leaked_id = s.scalar("SELECT id FROM problems WHERE text = ?", (leaked.problem,))
        s.execute("INSERT INTO steps(step, started_at, committed_at, difficulty) VALUES (0, 0, 1, 1.0)")
    with FakeOpenAI(make_responder(items)) as fake:
        cfg = write_config(tmp_path, fake.url)
        result = CliRunner().invoke(app, ["eval", str(cfg), "--limit", "6"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert (
        f"contamination: gsm8k: 1 item(s) share a 13-gram with one of the run's 2 problem(s): "
        f"{leaked.id} (problem {leaked_id})"
    ) in out
    summary = json.loads((run.evals / "sampled" / "summary.json").read_text())
    c = summary["contamination"]
    assert c["count"] == 1 and c["problems_checked"] == 2
    assert c["items"] == {"gsm8k": {leaked.id: [leaked_id]}}
    assert summary["scores"]["gsm8k"]["alice"]["n"] == 6  # flagged, not removed
    md = build_report([run.root], tmp_path / "report").read_text()
    assert "### Contamination check" in md
    assert (
        f"`sampled`: gsm8k: 1 item(s) share a 13-gram with one of the run's 2 problem(s): {leaked.id}" in md
    )
