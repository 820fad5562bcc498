"""The run store: one SQLite file (WAL) per run directory holding everything a run learns.

Commit model (docs/architecture.md, "The run store"):
- Work of the *open* step (problems, solutions, verdicts, votes, explanations) is written as each
  request completes, tagged with its step. It is a cache: on resume the open step reuses it and only
  issues the requests still missing.
- The step's *effects* (rating history, buffer rows, elite history, difficulty, the `steps` row with
  committed=1) are written in one transaction. Until that commits, nothing validated exists.
- Buffer rows are unique per solution, and a training round records the buffer ids it consumes, so
  nothing validated is ever lost or trained on twice.

Schema changes are appended to MIGRATIONS (never edit an applied one); `user_version` tracks them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agora_cli.errors import NoRunError, StoreError

BUSY_TIMEOUT_S = 30.0  # how long a statement waits for another connection's write lock

MIGRATIONS: list[str] = [
    # v1: the protocol's tables.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE steps (
        step INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        committed_at REAL,               -- NULL while the step is open
        difficulty REAL NOT NULL,        -- d_t used for this step's generation
        next_difficulty REAL,            -- d_{t+1} (Eq. 1)
        v_t REAL,                        -- consensus pass@1 of this step
        v_target REAL,
        f_t REAL,                        -- Eq. 2 surprise (NULL when not computed)
        strategy TEXT,                   -- dynamic strategy in force ('balanced' | 'elite')
        n_problems INTEGER, n_dropped INTEGER, n_solutions INTEGER, n_correct INTEGER,
        n_buffered INTEGER, wall_s REAL, request_s REAL,
        info TEXT                        -- JSON: anything else worth keeping
    );

    CREATE TABLE problems (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        author TEXT NOT NULL,            -- generating member ('seed' for seed-pool problems)
        text TEXT NOT NULL,
        difficulty REAL NOT NULL,
        seed_ids TEXT NOT NULL DEFAULT '[]',
        raw TEXT,                        -- the generator's full reply
        status TEXT NOT NULL DEFAULT 'ok',   -- ok | dropped
        drop_reason TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX problems_step ON problems(step);

    CREATE TABLE solutions (
        id INTEGER PRIMARY KEY,
        problem_id INTEGER NOT NULL REFERENCES problems(id),
        step INTEGER NOT NULL,
        member TEXT NOT NULL,
        sample INTEGER NOT NULL DEFAULT 0,   -- >0 only for isolated self-consistency samples
        text TEXT NOT NULL,
        answer TEXT,                      -- extracted final answer; NULL = failed attempt
        adapter_version INTEGER NOT NULL DEFAULT 0,
        elite_ids TEXT NOT NULL DEFAULT '[]', -- elite rows shown in the prompt (knowledge flow)
        prompt_tokens INTEGER, completion_tokens INTEGER, latency_s REAL,
        error TEXT,                       -- request failed after retries
        correct INTEGER,                  -- consensus outcome, set at step commit
        created_at REAL NOT NULL,
        UNIQUE (problem_id, member, sample)
    );
    CREATE INDEX solutions_step ON solutions(step);

    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY,
        solution_id INTEGER NOT NULL REFERENCES solutions(id),
        step INTEGER NOT NULL,
        verifier TEXT NOT NULL,
        valid INTEGER NOT NULL,           -- 1 valid, 0 invalid or unparseable
        raw TEXT,
        latency_s REAL,
        created_at REAL NOT NULL,
        UNIQUE (solution_id, verifier)
    );

    CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        problem_id INTEGER NOT NULL REFERENCES problems(id),
        step INTEGER NOT NULL,
        solution_a INTEGER NOT NULL REFERENCES solutions(id),
        solution_b INTEGER NOT NULL REFERENCES solutions(id),
        voter TEXT NOT NULL,
        winner INTEGER,                   -- solution id, or NULL when the vote was unparseable
        raw TEXT,
        latency_s REAL,
        created_at REAL NOT NULL,
        UNIQUE (solution_a, solution_b, voter)
    );

    CREATE TABLE ratings (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        member TEXT NOT NULL,
        mu REAL NOT NULL,
        sigma REAL NOT NULL,
        vote_id INTEGER,                  -- the vote that produced this rating (NULL = initial)
        created_at REAL NOT NULL
    );
    CREATE INDEX ratings_member ON ratings(member, id);

    CREATE TABLE buffer (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        solution_id INTEGER NOT NULL UNIQUE REFERENCES solutions(id),
        problem_id INTEGER NOT NULL,
        member TEXT NOT NULL,             -- author of the solution
        round_id INTEGER REFERENCES rounds(id),  -- NULL until a training round consumes it
        created_at REAL NOT NULL
    );

    CREATE TABLE explanations (
        id INTEGER PRIMARY KEY,
        solution_id INTEGER NOT NULL UNIQUE REFERENCES solutions(id),
        step INTEGER NOT NULL,
        member TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL
    );

    -- H_t: one row per interaction that ever entered the elite history; `active` marks the
    -- current Top_k. score = peer-assessed quality (votes won / votes cast on the solution).
    CREATE TABLE elite (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        solution_id INTEGER NOT NULL UNIQUE REFERENCES solutions(id),
        member TEXT NOT NULL,
        score REAL NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL
    );

    CREATE TABLE rounds (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,            -- step after which the round was started
        status TEXT NOT NULL,             -- pending | training | live | failed
        buffer_ids TEXT NOT NULL,         -- JSON list of buffer.id consumed by this round
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    );

    CREATE TABLE adapters (
        id INTEGER PRIMARY KEY,
        member TEXT NOT NULL,
        version INTEGER NOT NULL,
        round_id INTEGER REFERENCES rounds(id),
        path TEXT NOT NULL,
        status TEXT NOT NULL,             -- training | ready | live | retired | failed
        model_name TEXT,                  -- the name requests use once live
        metrics TEXT,                     -- JSON: loss curve, tokens/s, peak memory, ...
        created_at REAL NOT NULL,
        live_at REAL,
        UNIQUE (member, version)
    );

    CREATE TABLE anchors (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        member TEXT NOT NULL,             -- member name, or '@majority' for the ensemble vote
        benchmark TEXT NOT NULL,
        score REAL NOT NULL,
        n INTEGER NOT NULL,
        adapter_version INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        UNIQUE (step, member, benchmark)
    );

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL
    );
    """,
    # v2: an anchor row may reuse an earlier score when the member's adapter did not
    # change; a problem row records the generation slot it was asked for (retries share a slot).
    """
    ALTER TABLE anchors ADD COLUMN reused_from INTEGER;  -- step really scored at; NULL = now
    ALTER TABLE problems ADD COLUMN slot INTEGER;        -- index into the step's slots
    """,
    # v3: the consensus audit. A probe is a gold-labelled seed-pool problem mixed into
    # a step (problems.status = 'probe'); its gold lives only here, read only when the step's
    # audit counts are computed. `audit` holds, per step and per verifier ('@consensus' for the
    # unanimous decision), the confusion counts of approval against gold over the probes'
    # solutions; `audit_solutions` each probe solution's grade and consensus outcome.
    """
    CREATE TABLE probes (
        problem_id INTEGER PRIMARY KEY REFERENCES problems(id),
        step INTEGER NOT NULL,
        seed_id TEXT NOT NULL,           -- the seed-pool row it was drawn from
        gold TEXT NOT NULL
    );
    CREATE TABLE audit_solutions (
        solution_id INTEGER PRIMARY KEY REFERENCES solutions(id),
        step INTEGER NOT NULL,
        truth INTEGER NOT NULL,          -- 1 when the solution's answer matches gold
        approved INTEGER NOT NULL        -- 1 when unanimous consensus approved it
    );
    CREATE TABLE audit (
        step INTEGER NOT NULL,
        verifier TEXT NOT NULL,          -- a member, or '@consensus' for the unanimous decision
        tp INTEGER NOT NULL, fp INTEGER NOT NULL, fn INTEGER NOT NULL, tn INTEGER NOT NULL,
        PRIMARY KEY (step, verifier)
    );
    """,
    # v4: the matched isolated control. Each member has its own difficulty: d_t^i it
    # wrote its problems at, its own V_t^i (validated share of its samples), V_target^i and
    # d_{t+1}^i by Eq. 1, one row per committed isolated step and member (AGORA runs write none).
    """
    CREATE TABLE member_steps (
        step INTEGER NOT NULL,
        member TEXT NOT NULL,
        difficulty REAL NOT NULL,        -- d_t^i
        v_t REAL,                        -- V_t^i (NULL: no samples this step)
        v_target REAL NOT NULL,          -- V_target^i
        next_difficulty REAL NOT NULL,   -- d_{t+1}^i (Eq. 1, then FEM on its own anchors)
        f_t REAL,                        -- Eq. 2 on the member's own anchor history
        PRIMARY KEY (step, member)
    );
    """,
    # v5: the anchor's graded answers, written as each request completes (open-step work like the
    # others), so a resumed anchor step asks only the calibration items still missing. `model` is
    # the model name asked: an answer from an adapter no longer live is not reused.
    """
    CREATE TABLE anchor_items (
        step INTEGER NOT NULL,
        member TEXT NOT NULL,
        benchmark TEXT NOT NULL,
        item_id TEXT NOT NULL,
        model TEXT NOT NULL,
        reply TEXT NOT NULL,
        answer TEXT,
        gold TEXT NOT NULL,
        correct INTEGER NOT NULL,
        adapter_version INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        latency_s REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (step, member, benchmark, item_id, model)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """A connection to one run's SQLite file, migrated to the current schema on open."""

    def __init__(self, path: Path | str, *, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise NoRunError(f"no run store at {self.path}; start a run with `agora run CONFIG`")
            uri = f"file:{self.path}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        if not readonly:
            self._migrate()
        else:
            v = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if v > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{v}; this agora knows v{SCHEMA_VERSION}")

    # -- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer agora (schema v{version}, this one knows "
                f"v{SCHEMA_VERSION}); upgrade agora"
            )
        for i in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in _split_sql(MIGRATIONS[i]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {i + 1}")

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; nested uses join the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._depth = 0

    # -- small helpers --------------------------------------------------------------------

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def require(self, sql: str, params: Any = (), *, what: str) -> sqlite3.Row:
        """The first row of `sql`; StoreError naming `what` when there is none (a row the run's
        own bookkeeping says exists is missing, so the store is inconsistent)."""
        row = self.one(sql, params)
        if row is None:
            raise StoreError(f"{what} is missing from the run store {self.path}")
        return row

    def scalar(self, sql: str, params: Any = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        self.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def has_table(self, name: str) -> bool:
        """Whether the store has table `name` (a store opened read-only may predate a migration)."""
        return (
            self.scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) == 1
        )

    def last_committed_step(self) -> int:
        """-1 when no step has committed yet."""
        v = self.scalar("SELECT MAX(step) FROM steps WHERE committed_at IS NOT NULL")
        return -1 if v is None else int(v)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now() -> float:
    return time.time()


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements: drop `--` comments, then split on `;`."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
