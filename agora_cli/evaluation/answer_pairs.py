"""The shipped table of gold/reply pairs that pins down the one grading rule.

`agora_cli/data/answer_pairs.jsonl`: one JSON object a line, `{"category", "gold", "reply",
"match"}`, covering fractions, `\\frac12`, decimals, thousands separators, units and currency,
percentages, signs and spacing, scientific notation, `x = 5`, intervals, sets and multi-part
answers, self-corrections, prose answers and symbolic forms, each with clear non-matches.
The test suite and `agora grade --self-test` run every row through the grader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agora_cli.errors import EvaluationError
from agora_cli.paths import DATA_DIR

PAIRS_FILE = DATA_DIR / "answer_pairs.jsonl"


@dataclass(frozen=True)
class AnswerPair:
    """One row: does `reply` (a whole reply) match `gold`? `match` is the expected verdict."""

    category: str
    gold: str
    reply: str
    match: bool


def load_pairs(path: Path = PAIRS_FILE) -> list[AnswerPair]:
    """Every row of the table, in file order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvaluationError(f"cannot read the answer pairs at {path}: {e.strerror or e}") from e
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(AnswerPair(row["category"], row["gold"], row["reply"], bool(row["match"])))
        except (ValueError, KeyError, TypeError) as e:
            raise EvaluationError(f"{path}:{n}: not an answer pair ({e}); see the module docstring") from e
    return pairs


@dataclass
class TableResult:
    """How a grader did on the table: (passed, rows) per category, and the rows it got wrong."""

    per_category: dict[str, tuple[int, int]]
    wrong: list[tuple[AnswerPair, bool]]  # (row, the verdict given)

    @property
    def passed(self) -> int:
        return sum(k for k, _ in self.per_category.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.per_category.values())


def check_pairs(
    pairs: Sequence[AnswerPair], verdicts: Callable[[list[tuple[str, str]]], list[bool]]
) -> TableResult:
    """Grade every (reply, gold) with `verdicts` (e.g. `Grader.grade_many`) and compare."""
    got = verdicts([(p.reply, p.gold) for p in pairs])
    per: dict[str, list[int]] = {}
    wrong = []
    for p, ok in zip(pairs, got, strict=True):
        tally = per.setdefault(p.category, [0, 0])
        tally[1] += 1
        if bool(ok) == p.match:
            tally[0] += 1
        else:
            wrong.append((p, bool(ok)))
    return TableResult({c: (k, n) for c, (k, n) in per.items()}, wrong)
