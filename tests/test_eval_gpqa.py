"""`agora eval --benchmarks gpqa=PATH`: a user's own copy of GPQA-Diamond, read
from the official CSV (or JSONL), asked as a 4-choice question in a seeded shuffle and graded by
the chosen letter; `NAME=PATH` reads a problem/answer JSONL. Bad files are usage errors (exit 2)
that list what is wrong. The data here is synthetic, written by the tests.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.datasets import CHOICE
from agora_cli.evaluation.evaluate import MAJORITY, read_results
from agora_cli.evaluation.user_data import GPQA_COLUMNS, chosen_letter, load_spec
from tests.fakes.openai_server import FakeOpenAI, Request, scripted
from tests.test_eval import MEMBERS
from tests.test_eval_cli import write_config

pytestmark = pytest.mark.timeout(120)

N = 8
ROWS = [
    {
        "Record ID": f"rec{i}",
        "Question": f'Which value does constant {i} take,\n"roughly"?',
        "Correct Answer": f"right-{i}",
        "Incorrect Answer 1": f"wrong-{i}-a, with a comma",
        "Incorrect Answer 2": f"wrong-{i}-b",
        "Incorrect Answer 3": f"wrong-{i}-c",
        "Subdomain": "physics",
    }
    for i in range(N)
]


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def letters_of(problem: str) -> dict[str, str]:
    """{choice text: letter} as the prompt lists them."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^\(([A-D])\) (.*)$", problem, re.M)}


@pytest.mark.unit
def test_gpqa_csv_becomes_seeded_four_choice_items(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "gpqa_diamond.csv", ROWS)
    name, items = load_spec(f"gpqa={path}")
    assert name == "gpqa" and [it.id for it in items] == [f"rec{i}" for i in range(N)]
    for it, row in zip(items, ROWS, strict=True):
        assert it.kind == CHOICE and it.problem.startswith(row["Question"])
        shown = letters_of(it.problem)
        assert sorted(shown) == sorted(row[c] for c in GPQA_COLUMNS[1:])  # each choice once
        assert it.answer == shown[row["Correct Answer"]]  # gold = the right choice's letter
    assert len({it.answer for it in items}) > 1  # shuffled, not always in the same place
    assert load_spec(f"gpqa={path}")[1] == items  # the same letters every time
    # JSONL with the same fields gives the same items.
    jsonl = tmp_path / "gpqa.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_spec(f"gpqa={jsonl}")[1] == items


@pytest.mark.unit
def test_the_chosen_letter_is_what_is_graded() -> None:
    assert chosen_letter("so \\boxed{C}") == "C"
    assert chosen_letter("\\boxed{(b) 3 m/s}") == "B"
    assert chosen_letter("The answer is (D).") == "D"
    assert chosen_letter("\\boxed{42}") is None and chosen_letter("\\boxed{E}") is None


def _responder():
    """alice boxes the right letter; bob says `the answer is (X)`, right on even records only;
    carol always boxes A. On the JSONL benchmark everyone answers 12, right on item 0 only."""
    right = {r["Question"]: r["Correct Answer"] for r in ROWS}

    def evaluate(req: Request) -> str:
        problem = req.user.rsplit("Problem:", 1)[1].rsplit("Solution:", 1)[0].strip()
        if "(A) " not in problem:
            return "3 * 4 = 12\n\\boxed{12}"
        question = next(q for q in right if problem.startswith(q))
        shown = letters_of(problem)
        good = shown[right[question]]
        bad = next(v for v in "ABCD" if v != good)
        i = int(question.split("constant ")[1].split(" ")[0])
        if req.model == "alice":
            return f"Reasoning... \\boxed{{{good}}}"
        if req.model == "bob":
            return f"Thinking. The answer is ({good if i % 2 == 0 else bad})."
        return "\\boxed{A}"

    return scripted({"evaluate": evaluate})


@pytest.mark.integration
def test_eval_scores_gpqa_and_a_jsonl_benchmark_by_path(tmp_path: Path) -> None:
    gpqa = write_csv(tmp_path / "gpqa_diamond.csv", ROWS)
    mine = tmp_path / "mine.jsonl"
    mine.write_text(
        '{"problem": "What is 3 * 4?", "answer": "12"}\n'
        '{"id": "m2", "problem": "What is 5 + 6?", "answer": "11"}\n'
    )
    items = load_spec(f"gpqa={gpqa}")[1]
    with FakeOpenAI(_responder()) as fake:
        cfg = write_config(tmp_path, fake.url)
        res = CliRunner().invoke(app, ["eval", str(cfg), "--benchmarks", f"gpqa={gpqa},mine={mine}"])
        assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "evals" / "sampled"
    scores = json.loads((out / "summary.json").read_text())["scores"]
    carol = sum(it.answer == "A" for it in items)
    assert {m: v["k"] for m, v in scores["gpqa"].items()} == {
        "alice": N,
        "bob": N // 2,
        "carol": carol,
        # Plurality of letters: alice and bob agree on even records. On odd ones bob's wrong letter
        # is A unless A is right, so bob and carol outvote alice, except where A is right and
        # carol sides with alice.
        MAJORITY: N // 2 + sum(1 for i, it in enumerate(items) if i % 2 and it.answer == "A"),
    }
    assert {m: (v["k"], v["n"]) for m, v in scores["mine"].items()} == {
        m: (1, 2) for m in [*MEMBERS, MAJORITY]
    }
    rows = read_results(out / "results.jsonl")
    assert {r.answer for r in rows if r.benchmark == "gpqa" and r.member == "carol"} == {"A"}
    assert {r.item_id for r in rows if r.benchmark == "mine"} == {"mine/1", "m2"}


@pytest.mark.unit
def test_bad_benchmark_files_are_usage_errors_that_say_what_is_wrong(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9")  # never asked: the files fail first
    short = write_csv(
        tmp_path / "short.csv", ROWS, columns=["Question", "Correct Answer", "Incorrect Answer 1"]
    )
    holes = write_csv(tmp_path / "holes.csv", [{**ROWS[0], "Incorrect Answer 2": ""}, ROWS[1]])
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"problem": "1+1?"}\nnot json\n')
    cases = {
        f"gpqa={tmp_path / 'absent.csv'}": ["no such file", "absent.csv"],
        f"gpqa={short}": [
            "missing column(s) 'Incorrect Answer 2', 'Incorrect Answer 3'",
            "the file has 'Question', 'Correct Answer', 'Incorrect Answer 1'",
        ],
        f"gpqa={holes}": ["row 2: missing or empty 'Incorrect Answer 2'"],
        f"mine={bad_jsonl}": ["line 2: not JSON"],
        f"mine={short}": ["only GPQA is read from CSV"],
        f"gsm8k={bad_jsonl}": ["agora's own data"],
    }
    for spec, wanted in cases.items():
        res = CliRunner().invoke(app, ["eval", str(cfg), "--benchmarks", spec])
        assert res.exit_code == 2, (spec, res.output)
        text = " ".join(res.output.split())
        for w in wanted:
            assert w in text, (spec, res.output)
