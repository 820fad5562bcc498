"""The one grader as `agora eval`, the anchor and the audit run it: in `Grader` worker processes
with math-verify as its symbolic step. The shipped table gets the same verdicts there (the
symbolic step never flips a row), and `agora grade` reaches the symbolic step for answers the
rule cannot read as values."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.evaluation.answer_pairs import check_pairs, load_pairs
from agora_cli.evaluation.grading import Grader

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

runner = CliRunner()


def test_worker_grader_gives_every_answer_pair_its_expected_verdict() -> None:
    with Grader(workers=2, timeout_s=10.0) as g:
        result = check_pairs(load_pairs(), g.grade_many)
        assert g.timeouts == 0 and g.errors == 0
    counts = ", ".join(f"{c} {k}/{n}" for c, (k, n) in result.per_category.items())
    assert not result.wrong, f"per category: {counts}; wrong: {result.wrong}"


def test_grade_self_test_prints_every_category_and_passes() -> None:
    result = runner.invoke(app, ["grade", "--self-test"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1].split() == ["total", f"{len(load_pairs())}/{len(load_pairs())}"]
    assert len(lines) == 1 + len({p.category for p in load_pairs()})


@pytest.mark.parametrize(
    ("gold", "reply", "code"),
    [
        ("3", "\\boxed{\\log_2 8}", 0),
        ("\\binom{5}{2}", "So there are \\boxed{10} ways.", 0),
        ("\\text{Tuesday}", "The answer is Monday.", 1),
    ],
)
def test_grade_command_uses_the_symbolic_step_for_formulas_it_cannot_evaluate(
    gold: str, reply: str, code: int
) -> None:
    result = runner.invoke(app, ["grade", gold, reply])
    assert result.exit_code == code, result.output
