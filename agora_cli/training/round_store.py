"""What training rounds read from and write to the run store: the `rounds` and `adapters` tables.

The one home of this SQL (`rounds.RoundManager` drives the life of a round, `manual.py` summarises
one, the loop, `agora eval` and `agora status` read the live adapter versions). Statuses: rounds
`pending | training | live | failed`; adapters `training | ready | live | retired | failed`.
`live` means "the member's current adapter".
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_cli.store import Store, now

RETRIABLE = ("pending", "training", "failed")


def _marks(items: Any) -> str:
    return ",".join("?" * len(items))


# --------------------------------------------------------------------------- live adapters


def live_versions(store: Store, members: list[str] | None = None) -> dict[str, int]:
    """member -> live adapter version. With `members`: exactly those, 0 (the base model) for a
    member with no live adapter; without: only members that have one."""
    rows = store.query("SELECT member, MAX(version) AS v FROM adapters WHERE status = 'live' GROUP BY member")
    live = {r["member"]: int(r["v"]) for r in rows}
    if members is None:
        return live
    return {m: live.get(m, 0) for m in members}


def live_adapters(store: Store) -> dict[str, tuple[int, Path]]:
    """member -> (version, adapter dir) of its live adapter: what a restarted server must load."""
    rows = store.query("SELECT member, version, path FROM adapters WHERE status = 'live'")
    return {r["member"]: (int(r["version"]), Path(r["path"])) for r in rows}


def model_name(store: Store, member: str, version: int) -> str | None:
    """The served model name recorded when the adapter was last made live (None: never served)."""
    return store.scalar("SELECT model_name FROM adapters WHERE member = ? AND version = ?", (member, version))


def set_model_name(store: Store, member: str, version: int, name: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE adapters SET model_name = ? WHERE member = ? AND version = ?",
            (name, member, version),
        )


# --------------------------------------------------------------------------- rounds


@dataclass(frozen=True)
class BufferText:
    """One buffer row with the texts a training sample is made of."""

    id: int
    member: str
    problem: str
    solution: str


def buffer_texts(store: Store, buffer_ids: list[int]) -> list[BufferText]:
    """The buffer rows `buffer_ids` (those that exist, in no particular order) with their
    problem and solution text."""
    if not buffer_ids:
        return []
    rows = store.query(
        f"SELECT b.id, b.member, p.text AS problem, s.text AS solution FROM buffer b "
        f"JOIN solutions s ON s.id = b.solution_id JOIN problems p ON p.id = b.problem_id "
        f"WHERE b.id IN ({_marks(buffer_ids)})",
        buffer_ids,
    )
    return [BufferText(r["id"], r["member"], r["problem"], r["solution"]) for r in rows]


def recent_rounds(store: Store, n: int) -> list[dict[str, Any]]:
    """The newest `n` rounds, newest first: id, step, status, error and `n` (rows trained on)."""
    out = []
    for r in store.query(
        "SELECT id, step, status, buffer_ids, error FROM rounds ORDER BY id DESC LIMIT ?", (n,)
    ):
        row = dict(r)
        row["n"] = len(json.loads(row.pop("buffer_ids") or "[]"))
        out.append(row)
    return out


def retriable_round(store: Store) -> sqlite3.Row | None:
    """The oldest unfinished round (id, attempts), or None."""
    return store.one(
        f"SELECT id, attempts FROM rounds WHERE status IN ({_marks(RETRIABLE)}) ORDER BY id LIMIT 1",
        RETRIABLE,
    )


def own_rows_due(store: Store, members: list[str], threshold: int) -> dict[str, list[int]]:
    """The isolated control's per-member trigger: member -> the oldest `threshold` of its OWN
    unconsumed buffer rows, for each member with at least `threshold` of them (members below it
    are absent: they keep collecting). AGORA's trigger is the pooled count instead."""
    due: dict[str, list[int]] = {}
    for m in members:
        ids = [
            r[0]
            for r in store.query(
                "SELECT id FROM buffer WHERE round_id IS NULL AND member = ? ORDER BY id LIMIT ?",
                (m, threshold),
            )
        ]
        if len(ids) >= threshold:
            due[m] = ids
    return due


def create_round(
    store: Store,
    step: int,
    members: list[str],
    adapter_dir: Callable[[str, int], Path],
    *,
    limit: int | None,
    exact: bool = False,
    own_rows_only: bool = False,
) -> int | None:
    """Reserve unconsumed rows (oldest first) for a new round, in ONE transaction.

    `exact`: only when at least `limit` rows wait, and then exactly `limit`. Each member gets an
    `adapters` row (status training) with its next version; `own_rows_only` (the isolated
    control) gives one only to members with rows in the round, and with `exact` the threshold
    is per member (`own_rows_due`): the round holds `limit` own rows of each member that has
    them, and only those members train.
    """
    with store.transaction() as conn:
        if own_rows_only and exact and limit is not None:
            due = own_rows_due(store, members, limit)
            ids = sorted(i for rows in due.values() for i in rows)
        else:
            sql = "SELECT id FROM buffer WHERE round_id IS NULL ORDER BY id"
            ids = [r[0] for r in conn.execute(sql + ("" if limit is None else f" LIMIT {limit}"))]
        if not ids or (exact and limit is not None and len(ids) < limit):
            return None
        cur = conn.execute(
            "INSERT INTO rounds(step, status, buffer_ids, attempts, started_at) "
            "VALUES (?, 'pending', ?, 0, ?)",
            (step, json.dumps(ids), now()),
        )
        round_id = int(cur.lastrowid)  # type: ignore[arg-type]
        conn.execute(
            f"UPDATE buffer SET round_id = ? WHERE id IN ({_marks(ids)}) AND round_id IS NULL",
            (round_id, *ids),
        )
        learners = members
        if own_rows_only:
            authors = {
                r[0]
                for r in conn.execute(f"SELECT DISTINCT member FROM buffer WHERE id IN ({_marks(ids)})", ids)
            }
            learners = [m for m in members if m in authors]
        for member in learners:
            version = (
                1
                + conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM adapters WHERE member = ?", (member,)
                ).fetchone()[0]
            )
            conn.execute(
                "INSERT INTO adapters(member, version, round_id, path, status, created_at) "
                "VALUES (?, ?, ?, ?, 'training', ?)",
                (member, version, round_id, str(adapter_dir(member, version)), now()),
            )
    return round_id


def start_attempt(store: Store, round_id: int) -> int:
    """Mark the round training for one more attempt; returns the attempt number."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE rounds SET status = 'training', attempts = attempts + 1, error = NULL WHERE id = ?",
            (round_id,),
        )
    return int(store.scalar("SELECT attempts FROM rounds WHERE id = ?", (round_id,)))


def round_row(store: Store, round_id: int) -> sqlite3.Row:
    """The round's rounds row; StoreError when there is no such round."""
    return store.require("SELECT * FROM rounds WHERE id = ?", (round_id,), what=f"training round {round_id}")


def buffer_ids(store: Store, round_id: int) -> list[int]:
    """The buffer rows reserved for the round, in training order."""
    return json.loads(store.scalar("SELECT buffer_ids FROM rounds WHERE id = ?", (round_id,)))


def finish_round(store: Store, round_id: int, status: str, error: str | None) -> None:
    """`live` (every member's adapter is live: its rows are consumed), or back to `pending` /
    `failed` with the members' errors."""
    with store.transaction() as conn:
        if status == "live":
            conn.execute(
                "UPDATE rounds SET status = 'live', error = NULL, finished_at = ? WHERE id = ?",
                (now(), round_id),
            )
        else:
            conn.execute("UPDATE rounds SET status = ?, error = ? WHERE id = ?", (status, error, round_id))


# --------------------------------------------------------------------------- a round's adapters


def round_adapters(store: Store, round_id: int) -> list[sqlite3.Row]:
    """The round's adapters rows (member, version, path, status, model_name, metrics)."""
    return store.query(
        "SELECT member, version, path, status, model_name, metrics FROM adapters "
        "WHERE round_id = ? ORDER BY id",
        (round_id,),
    )


def adapter_of(store: Store, round_id: int, member: str) -> sqlite3.Row:
    """The member's adapters row in the round (version, path, status); StoreError when the round
    reserved no adapter for the member."""
    return store.require(
        "SELECT version, path, status FROM adapters WHERE round_id = ? AND member = ?",
        (round_id, member),
        what=f"the adapter of {member!r} in training round {round_id}",
    )


def previous_live_path(store: Store, member: str, round_id: int) -> str | None:
    """The directory of the member's live adapter from an earlier round (None: base model)."""
    return store.scalar(
        "SELECT path FROM adapters WHERE member = ? AND status = 'live' AND round_id != ? "
        "ORDER BY version DESC LIMIT 1",
        (member, round_id),
    )


def mark_ready(store: Store, round_id: int, member: str, metrics: dict[str, Any]) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE adapters SET status = 'ready', metrics = ? WHERE round_id = ? AND member = ?",
            (json.dumps(metrics), round_id, member),
        )


def mark_failed(store: Store, round_id: int, member: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE adapters SET status = 'failed' WHERE round_id = ? AND member = ?",
            (round_id, member),
        )


def make_live(store: Store, round_id: int, member: str, name: str | None) -> int:
    """The member's adapter of the round becomes its live one (the previous one `retired`), in
    one transaction; returns its version."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE adapters SET status = 'retired' WHERE member = ? AND status = 'live'",
            (member,),
        )
        conn.execute(
            "UPDATE adapters SET status = 'live', model_name = ?, live_at = ? "
            "WHERE round_id = ? AND member = ?",
            (name, now(), round_id, member),
        )
    return int(adapter_of(store, round_id, member)["version"])


# --------------------------------------------------------------------------- reads for reports


TRAINED = ("ready", "live", "retired")  # adapters that finished training


def trained_metrics(store: Store) -> list[tuple[str, int, str]]:
    """(member, version, metrics JSON) of every adapter that finished training and recorded
    metrics, by member then version."""
    return [
        (r["member"], int(r["version"]), r["metrics"])
        for r in store.query(
            f"SELECT member, version, metrics FROM adapters WHERE metrics IS NOT NULL "
            f"AND status IN ({_marks(TRAINED)}) ORDER BY member, version",
            TRAINED,
        )
    ]


def trained_rounds(store: Store) -> list[tuple[str, int, str | None]]:
    """(member, round id, metrics JSON or None) of every adapter a round trained to the end."""
    return [
        (r["member"], int(r["round_id"]), r["metrics"])
        for r in store.query(
            f"SELECT member, round_id, metrics FROM adapters WHERE round_id IS NOT NULL "
            f"AND status IN ({_marks(TRAINED)})",
            TRAINED,
        )
    ]


def round_buffer_ids(store: Store) -> dict[int, list[int]]:
    """round id -> the buffer rows it reserved."""
    return {r["id"]: json.loads(r["buffer_ids"]) for r in store.query("SELECT id, buffer_ids FROM rounds")}
