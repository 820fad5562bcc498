"""The anchors' SQL: the external validation an anchored step records (`anchors`: each member's
calibration score, and the majority vote's as '@majority'; `anchor_items`: each graded answer, so a
resumed anchor asks no item twice), and what the loop reads back from committed steps (Eq. 2's
anchor history, FEM's counts). The rest of the loop's records are `agora_cli.steps`; the report
reads anchors through `agora_cli.report_store`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agora_cli.datasets import ItemResult
from agora_cli.protocol.majority import MAJORITY
from agora_cli.store import Store, now


@dataclass(frozen=True)
class AnchorRow:
    """One `anchors` row: a member's calibration score at a step (`reused_from`: the step it was
    really measured at, when carried over unchanged)."""

    step: int
    member: str
    benchmark: str
    score: float
    n: int
    adapter_version: int
    reused_from: int | None


def anchor_row(r: sqlite3.Row) -> AnchorRow:
    return AnchorRow(
        r["step"], r["member"], r["benchmark"], r["score"], r["n"], r["adapter_version"], r["reused_from"]
    )


def insert_anchor(
    store: Store,
    step: int,
    member: str,
    benchmark: str,
    score: float,
    n: int,
    version: int,
    reused_from: int | None = None,
) -> None:
    """One anchor score; `reused_from` is the step it was really measured at when it is reused."""
    store.execute(
        "INSERT OR IGNORE INTO anchors(step, member, benchmark, score, n, adapter_version, "
        "reused_from, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (step, member, benchmark, score, n, version, reused_from, now()),
    )


def insert_anchor_item(store: Store, step: int, a: ItemResult) -> None:
    """Keep one graded anchor answer of the open step (a resumed anchor does not ask it again)."""
    store.execute(
        "INSERT OR IGNORE INTO anchor_items(step, member, benchmark, item_id, model, reply, answer, "
        "gold, correct, adapter_version, completion_tokens, latency_s) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            step,
            a.member,
            a.benchmark,
            a.item_id,
            a.model,
            a.reply,
            a.answer,
            a.gold,
            int(a.correct),
            a.adapter_version,
            a.completion_tokens,
            a.latency_s,
        ),
    )


def anchor_items(store: Store, step: int) -> list[ItemResult]:
    """The graded anchor answers stored at `step`, in the order they were graded."""
    rows = store.query(
        "SELECT member, benchmark, item_id, model, reply, answer, gold, correct, adapter_version, "
        "completion_tokens, latency_s FROM anchor_items WHERE step = ? ORDER BY rowid",
        (step,),
    )
    return [
        ItemResult(
            r["member"],
            r["benchmark"],
            r["item_id"],
            r["model"],
            r["reply"],
            r["answer"],
            r["gold"],
            bool(r["correct"]),
            int(r["adapter_version"]),
            int(r["completion_tokens"]),
            float(r["latency_s"]),
        )
        for r in rows
    ]


def step_anchors(store: Store, step: int) -> dict[str, tuple[float, int]]:
    rows = store.query("SELECT member, score, n FROM anchors WHERE step = ?", (step,))
    return {r["member"]: (r["score"], r["n"]) for r in rows}


def rescored_anchors(store: Store, step: int) -> dict[str, tuple[float, int]]:
    """The step's anchor scores when at least one member was scored anew at it, else {}: a step
    whose scores are all reused measured nothing new (no point for Eq. 2)."""
    fresh = store.scalar(
        "SELECT COUNT(*) FROM anchors WHERE step = ? AND member != ? AND reused_from IS NULL",
        (step, MAJORITY),
    )
    return step_anchors(store, step) if fresh else {}


def anchor_history(store: Store) -> list[float]:
    """The ensemble's average anchor score (members' mean, '@majority' left out) per committed
    anchored step at which some member was scored anew (a step of reused scores only measured no
    change), oldest first: the input of Eq. 2 and the dynamic strategy."""
    rows = store.query(
        "SELECT a.step, AVG(a.score) AS score FROM anchors a JOIN steps s ON s.step = a.step "
        "WHERE s.committed_at IS NOT NULL AND a.member != ? AND a.n > 0 GROUP BY a.step "
        "HAVING SUM(a.reused_from IS NULL) > 0 ORDER BY a.step",
        (MAJORITY,),
    )
    return [r["score"] for r in rows]


def anchor_counts(store: Store) -> list[tuple[float, int]]:
    """The same anchors as `anchor_history`, as counts with members pooled: (items right, items
    scored) per anchored step, oldest first. FEM's noise test reads them (protocol/surprise.py)."""
    rows = store.query(
        "SELECT a.step, SUM(a.score * a.n) AS k, SUM(a.n) AS n FROM anchors a JOIN steps s "
        "ON s.step = a.step WHERE s.committed_at IS NOT NULL AND a.member != ? AND a.n > 0 GROUP BY a.step "
        "HAVING SUM(a.reused_from IS NULL) > 0 ORDER BY a.step",
        (MAJORITY,),
    )
    return [(r["k"], r["n"]) for r in rows]


def member_anchor_history(store: Store, member: str) -> list[float]:
    """The member's own anchor scores at committed steps where it was scored anew, oldest
    first: Eq. 2's input for an isolated member (no ensemble average couples the members). A
    score over no items (n = 0, written by stores before a failed anchor was left unstored) is
    not a score and is skipped, here and in `anchor_history`."""
    return [
        r["score"]
        for r in store.query(
            "SELECT a.score FROM anchors a JOIN steps s ON s.step = a.step "
            "WHERE s.committed_at IS NOT NULL AND a.member = ? AND a.reused_from IS NULL AND a.n > 0 "
            "ORDER BY a.step",
            (member,),
        )
    ]


def member_anchor_counts(store: Store, member: str) -> list[tuple[float, int]]:
    """`member_anchor_history` as counts: (items right, items scored) per anchor."""
    return [
        (r["score"] * r["n"], r["n"])
        for r in store.query(
            "SELECT a.score, a.n FROM anchors a JOIN steps s ON s.step = a.step "
            "WHERE s.committed_at IS NOT NULL AND a.member = ? AND a.reused_from IS NULL AND a.n > 0 "
            "ORDER BY a.step",
            (member,),
        )
    ]


def fresh_anchor_scores(store: Store, step: int) -> dict[str, tuple[float, int]]:
    """member -> its anchor (score, n) at `step` when it was scored anew there (not reused)."""
    return {
        r["member"]: (r["score"], r["n"])
        for r in store.query(
            "SELECT member, score, n FROM anchors WHERE step = ? AND member != ? AND reused_from IS NULL "
            "AND n > 0",
            (step, MAJORITY),
        )
    }
