"""Every SQL statement lives in the store layer: a module outside it that spells out a query is
a second home for a fact the store layer already owns (or should)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parent.parent / "agora_cli"
# The modules that own the run store's SQL: the store itself, the loop's records, the anchors',
# the training rounds' records, the reports' reads.
STORE_LAYER = {"store.py", "steps.py", "anchor_store.py", "training/round_store.py", "report_store.py"}
# An SQL statement as written here: an upper-case keyword, then more SQL (prose that starts with
# "Create" or "with" is not one).
SQL = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|WITH)\s+\S")


def sql_strings(source: str) -> list[tuple[int, str]]:
    """(line, start of the text) of every string constant or f-string in `source` that starts
    with an SQL statement."""
    tree = ast.parse(source)
    # An f-string's literal parts are constants too: the f-string is checked whole, once.
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):  # an f-string: its literal parts, holes left out
            text = "".join(
                v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
        else:
            continue
        if SQL.match(text):
            found.append((node.lineno, text[:60]))
    return found


def test_the_scan_finds_sql_and_only_sql():
    source = (
        'q = "SELECT * FROM problems WHERE id = ?"\n'
        'f = f"SELECT COUNT(*) FROM {table} WHERE step = ?"\n'
        'doc = "Create (or check) the run directory"\n'
        'prose = "with transformers (CPU)"\n'
        'w = "WITH x AS (SELECT 1) SELECT * FROM x"\n'
    )
    assert [line for line, _ in sql_strings(source)] == [1, 2, 5]


def test_no_sql_outside_the_store_layer():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in STORE_LAYER:
            continue
        offenders += [f"agora_cli/{rel}:{line}: {text!r}" for line, text in sql_strings(path.read_text())]
    assert not offenders, (
        "SQL outside the store layer (move it into the store layer: "
        + ", ".join(sorted(STORE_LAYER))
        + "):\n"
        + ("\n".join(offenders))
    )
