"""Benchmarks read from a user's own file: `agora eval --benchmarks gpqa=PATH,mine=PATH`.

- `gpqa=PATH`: the user's copy of GPQA-Diamond (gated, so agora cannot ship it), the official CSV
  or JSONL with its columns `Question`, `Correct Answer`, `Incorrect Answer 1..3` (`Record ID`
  when present names the item). Each item becomes a 4-choice question: the four answers in a
  shuffle seeded by the item's id (the same letters on every run and machine), the gold answer
  is the correct choice's letter, and a reply is graded by the letter it chooses
  (`chosen_letter`), not by math-verify.
- `NAME=PATH`: any other name reads a JSONL file of `{"problem", "answer"}` rows (`id` optional),
  graded like the shipped math benchmarks.

A file that is missing, unreadable or lacks a column raises BenchmarkFileError (exit 2) listing
every problem found. Items of user files pass the same calibration-overlap check in `agora eval`
as the shipped ones.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

from agora_cli.datasets import (
    BENCHMARK_FILES,
    CHOICE,
    SEED_POOL_FILES,
    SUBSET_SEED,
    Item,
    load_benchmark,
)
from agora_cli.errors import EvaluationError
from agora_cli.protocol.answers import extract_answer

GPQA = "gpqa"
GPQA_COLUMNS = (
    "Question",
    "Correct Answer",
    "Incorrect Answer 1",
    "Incorrect Answer 2",
    "Incorrect Answer 3",
)
LETTERS = "ABCD"
_LETTER = re.compile(r"^\(?([A-Da-d])\)?(?:[\s.:)]|$)")


class BenchmarkFileError(EvaluationError):
    """A user's benchmark file is missing or not in the expected shape (a usage error)."""

    exit_code = 2


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """`gsm8k` -> ("gsm8k", None); `gpqa=~/data/gpqa_diamond.csv` -> ("gpqa", that path)."""
    name, sep, raw = spec.partition("=")
    name = name.strip()
    if not sep:
        return name, None
    if not name or not raw.strip():
        raise BenchmarkFileError(f"--benchmarks {spec!r}: expected NAME=PATH (e.g. gpqa=diamond.csv)")
    if name in BENCHMARK_FILES or name in SEED_POOL_FILES:
        raise BenchmarkFileError(
            f"--benchmarks {spec!r}: {name!r} is agora's own data; give your file another name"
        )
    return name, Path(raw.strip()).expanduser()


def load_spec(spec: str) -> tuple[str, list[Item]]:
    """(name, items) of one `--benchmarks` entry: a shipped benchmark or NAME=PATH."""
    name, path = parse_spec(spec)
    return name, load_benchmark(name) if path is None else load_user_benchmark(name, path)


def load_user_benchmark(name: str, path: Path) -> list[Item]:
    """The items of a user's file: GPQA when `name` is `gpqa`, else problem/answer JSONL."""
    if not path.is_file():
        raise BenchmarkFileError(f"--benchmarks {name}={path}: no such file")
    if name == GPQA:
        return _gpqa_items(path)
    if path.suffix.lower() == ".csv":
        raise BenchmarkFileError(
            f"--benchmarks {name}={path}: only GPQA is read from CSV (as gpqa=PATH); other "
            'benchmarks are JSONL with one {"problem": ..., "answer": ...} object per line'
        )
    rows = _jsonl_rows(name, path)
    bad = [
        f"line {n}: missing {', '.join(k for k in ('problem', 'answer') if k not in row)}"
        for n, row in rows
        if not {"problem", "answer"} <= row.keys()
    ]
    if bad:
        raise BenchmarkFileError(_listing(name, path, bad, "problem and answer fields"))
    return [
        Item(name, str(row.get("id", f"{name}/{n}")), str(row["problem"]), str(row["answer"]))
        for n, row in rows
    ]


def _listing(name: str, path: Path, problems: list[str], want: str) -> str:
    shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    return (
        f"--benchmarks {name}={path}: {len(problems)} problem(s); every row needs {want}:\n  "
        + "\n  ".join(shown)
    )


def _jsonl_rows(name: str, path: Path) -> list[tuple[int, dict]]:
    rows, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            bad.append(f"line {n}: not a JSON object")
            continue
        rows.append((n, row))
    if bad:
        raise BenchmarkFileError(_listing(name, path, bad, "one JSON object per line"))
    if not rows:
        raise BenchmarkFileError(f"--benchmarks {name}={path}: the file has no rows")
    return rows


def _gpqa_items(path: Path) -> list[Item]:
    want = ", ".join(repr(c) for c in GPQA_COLUMNS)
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in GPQA_COLUMNS if c not in columns]
            if missing:
                raise BenchmarkFileError(
                    f"--benchmarks gpqa={path}: missing column(s) "
                    f"{', '.join(repr(c) for c in missing)}; the file has "
                    f"{', '.join(repr(c) for c in columns) or 'no header'}; GPQA needs {want} "
                    "(the official gpqa_diamond.csv)"
                )
            rows = [(n, row) for n, row in enumerate(reader, 2)]
    else:
        rows = _jsonl_rows(GPQA, path)
    bad = []
    for n, row in rows:
        empty = [c for c in GPQA_COLUMNS if not str(row.get(c) or "").strip()]
        if empty:
            bad.append(
                f"{'row' if path.suffix.lower() == '.csv' else 'line'} {n}: "
                f"missing or empty {', '.join(repr(c) for c in empty)}"
            )
    if bad:
        raise BenchmarkFileError(_listing(GPQA, path, bad, want))
    if not rows:
        raise BenchmarkFileError(f"--benchmarks gpqa={path}: the file has no rows")
    return [_gpqa_item(str(row.get("Record ID") or f"{GPQA}/{n}"), row) for n, row in rows]


def _gpqa_item(item_id: str, row: dict) -> Item:
    """A 4-choice item: choices shuffled by a seed of the item's id, gold = the right letter."""
    right = str(row["Correct Answer"]).strip()
    choices = [right] + [str(row[f"Incorrect Answer {i}"]).strip() for i in (1, 2, 3)]
    random.Random(f"{GPQA}:{item_id}:{SUBSET_SEED}").shuffle(choices)
    listed = "\n".join(f"({letter}) {c}" for letter, c in zip(LETTERS, choices, strict=True))
    problem = (
        f"{str(row['Question']).strip()}\n\n{listed}\n\n"
        "Answer with the letter (A, B, C or D) of the correct choice."
    )
    return Item(GPQA, item_id, problem, LETTERS[choices.index(right)], kind=CHOICE)


def chosen_letter(reply: str) -> str | None:
    """The choice a reply makes: the letter its final answer (\\boxed{B}, `the answer is (B)`)
    starts with; None when that answer is not a letter A-D."""
    answer = extract_answer(reply)
    if answer is None:
        return None
    answer = re.sub(r"\\text\{([^}]*)\}", r"\1", answer).strip().strip("$").strip()
    m = _LETTER.match(answer)
    return m.group(1).upper() if m else None
