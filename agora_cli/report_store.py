"""What the reports and plots read from a run store (read-only): anchors, committed steps,
solutions, the buffer and the elite history, as plain values.

The loop's own reads and writes are `agora_cli.steps`; the training rounds' are
`agora_cli.training.round_store`. `agora report` and its figures (`evaluation/report.py`,
`evaluation/plots.py`) read through here.
"""

from __future__ import annotations

import json

from agora_cli.anchor_store import AnchorRow, anchor_row
from agora_cli.protocol.majority import MAJORITY
from agora_cli.store import Store


def all_anchors(store: Store) -> list[AnchorRow]:
    """Every anchor row of the run, by step then member."""
    return [anchor_row(r) for r in store.query("SELECT * FROM anchors ORDER BY step, member")]


def latest_anchors(store: Store) -> list[AnchorRow]:
    """The anchor rows of the run's newest anchored step ([] when none was anchored)."""
    rows = store.query("SELECT * FROM anchors WHERE step = (SELECT MAX(step) FROM anchors) ORDER BY id")
    return [anchor_row(r) for r in rows]


def anchor_curve_rows(store: Store) -> list[tuple[int, float, int, int]]:
    """(step, members' mean score, correct items, items graded) per anchored step, pooled over
    the members ('@majority' left out)."""
    return [
        (r["step"], r["score"], int(r["k"] or 0), int(r["n"] or 0))
        for r in store.query(
            "SELECT step, AVG(score) AS score, SUM(ROUND(score * n)) AS k, SUM(n) AS n FROM anchors "
            "WHERE member != ? GROUP BY step ORDER BY step",
            (MAJORITY,),
        )
    ]


def difficulty_points(store: Store) -> list[tuple[int, float, float, int | None]]:
    """(step, d_t, V_t, solutions) of each committed step with a V_t, oldest first."""
    return [
        (r["step"], r["difficulty"], r["v_t"], r["n_solutions"])
        for r in store.query(
            "SELECT step, difficulty, v_t, n_solutions FROM steps "
            "WHERE committed_at IS NOT NULL AND v_t IS NOT NULL ORDER BY step"
        )
    ]


def length_points(store: Store) -> list[tuple[str, int, float, float, int]]:
    """(member, step, mean completion tokens, share judged correct, solutions) per member and
    committed step, over its answered and judged solutions."""
    return [
        (r["member"], r["step"], r["tokens"], r["rate"], r["n"])
        for r in store.query(
            "SELECT s.member, s.step, AVG(s.completion_tokens) AS tokens, AVG(s.correct) AS rate, "
            "COUNT(*) AS n "
            "FROM solutions s JOIN steps t ON t.step = s.step "
            "WHERE t.committed_at IS NOT NULL AND s.error IS NULL AND s.correct IS NOT NULL "
            "AND s.completion_tokens IS NOT NULL GROUP BY s.member, s.step ORDER BY s.member, s.step"
        )
    ]


def step_times(store: Store) -> list[tuple[int, float, float]]:
    """(step, started_at, committed_at) of each committed step, oldest first."""
    return [
        (r["step"], r["started_at"], r["committed_at"])
        for r in store.query(
            "SELECT step, started_at, committed_at FROM steps WHERE committed_at IS NOT NULL ORDER BY step"
        )
    ]


def buffered_per_step(store: Store) -> dict[int, int]:
    """step -> buffer rows it added."""
    return {r[0]: r[1] for r in store.query("SELECT step, COUNT(*) FROM buffer GROUP BY step")}


def answered_per_step(store: Store) -> dict[int, int]:
    """step -> solutions answered without a request error."""
    return {
        r[0]: r[1]
        for r in store.query("SELECT step, COUNT(*) FROM solutions WHERE error IS NULL GROUP BY step")
    }


def solving_members(store: Store) -> list[str]:
    """Every member that wrote a solution or owns a buffer row."""
    return [
        r[0]
        for r in store.query("SELECT DISTINCT member FROM solutions UNION SELECT DISTINCT member FROM buffer")
    ]


def elite_authors(store: Store) -> dict[int, str]:
    """elite row id -> the member whose solution it is."""
    return {r[0]: r[1] for r in store.query("SELECT id, member FROM elite")}


def elite_shown(store: Store) -> list[tuple[str, list[int]]]:
    """(solver, elite row ids shown in its prompt) of every solution that was shown some."""
    return [
        (r["member"], json.loads(r["elite_ids"]))
        for r in store.query("SELECT member, elite_ids FROM solutions WHERE elite_ids != '[]'")
    ]


def buffer_authors(store: Store) -> dict[int, str]:
    """buffer row id -> the member whose solution it holds."""
    return {r[0]: r[1] for r in store.query("SELECT id, member FROM buffer")}


def problem_texts(store: Store) -> list[tuple[int, str]]:
    """(id, text) of every problem the run stored (generated, seed fallbacks, probes), for the
    contamination check against evaluation items."""
    return [(int(r["id"]), str(r["text"] or "")) for r in store.query("SELECT id, text FROM problems")]
