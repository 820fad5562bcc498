"""The one grader, in process: the shipped answer-pair table, extraction's idempotence, and the
isolated arm's self-consistency grouping by the same equivalence. `agora grade` through Typer's
CliRunner on answers that need no symbolic step (so no worker process starts)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.evaluation.answer_pairs import check_pairs, load_pairs
from agora_cli.protocol.answers import answers_match, extract_answer, grade
from agora_cli.protocol.majority import plurality, strict_majority

pytestmark = pytest.mark.unit

PAIRS = load_pairs()
CATEGORIES = [
    "fraction",
    "frac_shorthand",
    "decimal",
    "thousands",
    "units_currency",
    "percent",
    "sign_spacing",
    "scientific",
    "named",
    "interval",
    "set_multipart",
    "self_correction",
    "prose",
    "symbolic",
]


def test_table_covers_every_kind_with_matches_and_non_matches() -> None:
    assert len(PAIRS) >= 80
    kinds = Counter((p.category, p.match) for p in PAIRS)
    for category in CATEGORIES:
        assert kinds[(category, True)] >= 1 and kinds[(category, False)] >= 1, category
    assert {p.category for p in PAIRS} == set(CATEGORIES)


def test_every_answer_pair_gets_its_expected_verdict() -> None:
    result = check_pairs(PAIRS, lambda todo: [grade(reply, gold).correct for reply, gold in todo])
    counts = ", ".join(f"{c} {k}/{n}" for c, (k, n) in result.per_category.items())
    assert not result.wrong, f"per category: {counts}; wrong: {result.wrong}"
    assert result.passed == result.total == len(PAIRS)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p.category}-{p.gold}")
def test_final_answer_extraction_is_idempotent_and_matching_symmetric(pair) -> None:  # noqa: ANN001
    """`@majority` and the audit grade an already extracted answer: it must read the same."""
    answer = extract_answer(pair.reply)
    if answer is None:
        return
    assert extract_answer(answer) == answer
    assert grade(answer, pair.gold).correct is grade(pair.reply, pair.gold).correct
    assert answers_match(answer, pair.gold) is answers_match(pair.gold, answer)


def test_self_consistency_groups_equivalent_forms_as_one_answer() -> None:
    """The isolated arm's strict majority: five spellings of one half are one answer (the old
    rule split `\\frac12` from `\\frac{1}{2}`, and `x = 5` from `5`)."""
    halves = ["\\frac12", "\\frac{1}{2}", "0.5", "x = 0.5", "1/2", "7", None]
    winner = strict_majority(halves, 7)
    assert winner is not None and answers_match(winner, "0.5")
    assert strict_majority(["x = 5", "5", "6"], 3) is not None
    assert strict_majority(["1{,}000", "10^{3}", "1000", "999"], 4) is not None
    assert strict_majority(["3", "-3", "3.5", "x"], 4) is None  # different answers stay apart
    assert plurality(["7", "1{,}000", "10^{3}"]) == "1{,}000"  # @majority: the same grouping


def test_a_correction_is_graded_by_its_final_answer_not_every_box() -> None:
    reply = "So \\boxed{3}. Wait, I dropped a term: the total is \\boxed{5}."
    assert grade(reply, "5") == grade("5", "5")
    assert not grade(reply, "3").correct
    assert not answers_match("\\{3, 5\\}", "3")  # a set is not one of its members


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_matching_never_raises_and_an_answer_matches_itself(text: str) -> None:
    answer = extract_answer(text)
    assert answers_match(text, "7") in (True, False)
    if answer is not None:
        assert answers_match(answer, answer)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["\\frac", "{", "}", "1", "2", "^", "-", "x", ",", "(", "]", "\\sqrt", ".", "%", " "]
        ),
        max_size=30,
    )
)
def test_formula_fragments_never_raise(parts: list[str]) -> None:
    s = "".join(parts)
    answers_match(s, s)
    answers_match(s, "1")


@pytest.mark.timeout(60)  # a hang guard: each runs in well under a second
@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^{9^{9}}}}", "(" * 5000 + "1" + ")" * 5000, "1" * 10_000, "2^{-99999999}", "1e99999999"],
)
def test_huge_formulas_are_refused_not_evaluated(answer: str) -> None:
    assert answers_match(answer, "1") is False


@pytest.mark.timeout(60)  # a hang guard: exponential backtracking took minutes at 30 letters
@pytest.mark.parametrize("tail", ["a" * 40 + "!", "ab " * 3000 + "1", " m" * 5000 + "%", "x" * 20_000])
def test_unit_words_and_prose_after_a_number_stay_linear(tail: str) -> None:
    assert extract_answer(f"The answer is 5 {tail}") is not None
    assert answers_match(f"5 {tail}", "6") is False


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "stdin", "code", "answer"),
    [
        (["1000", "\\boxed{1{,}000}"], None, 0, "1000"),
        (["3", "-"], "First \\boxed{3}.\nWait, no: it is \\boxed{5}.\n", 1, "5"),
        (["-2", "The answer is - 2."], None, 0, "- 2"),
        (["18", "-"], "She makes 9 * 2 = 18 dollars.\nThe answer is 18 dollars.", 0, "18"),
        (["42", "I do not know."], None, 1, "(none)"),
    ],
)
def test_grade_command_prints_the_answer_and_exits_like_diff(
    args: list[str], stdin: str | None, code: int, answer: str
) -> None:
    result = runner.invoke(app, ["grade", *args], input=stdin)
    assert result.exit_code == code, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"answer: {answer}"
    assert lines[-1] == ("match" if code == 0 else "mismatch")


@pytest.mark.parametrize(
    "args",
    [
        ["grade"],
        ["grade", "5"],
        ["grade", "--self-test", "5"],
        ["grade", "--no-such", "5"],
        ["grade", "1", "2", "3"],
    ],
)
def test_grade_command_usage_errors_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
