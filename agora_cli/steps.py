"""What the loop reads from and writes to the run store, one function per record.

The commit model is the store's (see the docstring of `agora_cli.store`): open-step work
(problems, solutions, verdicts, votes, explanations, anchor scores) is written as each request
completes and reused on resume; the step's effects are written by `commit_effects` in one
transaction. Everything the loop needs to continue (d_t, V history, ratings, elite history, anchor
history) is read back from committed rows, so a resumed run and an uninterrupted one see the same
state.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import trueskill

from agora_cli.errors import StoreError
from agora_cli.protocol.types import EliteExample
from agora_cli.store import Store, now


@dataclass
class OpenStep:
    """The steps row of the step being worked on (committed_at still NULL)."""

    step: int
    difficulty: float
    strategy: str
    v_target: float
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0


@dataclass
class Effects:
    """Everything a step commits at once (computed by the loop from the step's stored work)."""

    step: int
    rating_rows: list[tuple[str, float, float, int | None]]  # member, mu, sigma, vote_id
    correct: dict[int, bool]  # solution id -> consensus outcome
    buffer: list[tuple[int, int, str]]  # solution id, problem id, author
    elite: list[tuple[int, str, float]]  # solution id, member, score: the new Top_k (active)
    next_difficulty: float
    v_t: float | None
    v_target: float
    f_t: float | None
    strategy: str
    counts: dict[str, int]
    wall_s: float
    request_s: float
    info: dict[str, Any] = field(default_factory=dict)
    # The consensus audit (agora_cli.audit): (verifier or '@consensus', tp, fp, fn, tn), and
    # (probe solution id, truth against gold, approved by consensus).
    audit: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    audit_solutions: list[tuple[int, bool, bool]] = field(default_factory=list)
    # The isolated control's per-member difficulty (Eq. 1 on V_t^i): member -> MemberStep.
    member_steps: dict[str, MemberStep] = field(default_factory=dict)


@dataclass
class MemberStep:
    """One member's own difficulty loop in an isolated step (a `member_steps` row)."""

    difficulty: float  # d_t^i
    v_t: float | None  # V_t^i
    v_target: float  # V_target^i
    next_difficulty: float  # d_{t+1}^i
    f_t: float | None = None


@dataclass(frozen=True)
class ProblemRow:
    """One `problems` row as the loop reads it (seed ids decoded)."""

    id: int
    step: int
    author: str
    text: str
    difficulty: float
    seed_ids: tuple[str, ...]
    status: str  # ok | dropped | probe
    drop_reason: str | None
    slot: int | None

    @property
    def kept(self) -> bool:
        return self.status == "ok"

    @property
    def probe(self) -> bool:
        return self.status == PROBE


@dataclass(frozen=True)
class SolutionRow:
    """One `solutions` row as the loop and the commit read it."""

    id: int
    problem_id: int
    step: int
    member: str
    sample: int  # > 0 only for the isolated control's self-consistency samples
    text: str
    answer: str | None
    adapter_version: int
    error: str | None


@dataclass(frozen=True)
class VerdictRow:
    id: int
    solution_id: int
    verifier: str
    valid: bool


@dataclass(frozen=True)
class VoteRow:
    id: int
    problem_id: int
    solution_a: int
    solution_b: int
    voter: str
    winner: int | None


@dataclass(frozen=True)
class MemberCounts:
    """One member's cumulative numbers over committed steps: what the views show per member."""

    solutions: int = 0  # solutions of the protocol's problems (probes left out)
    validated: int = 0  # of which consensus (or self-consistency) passed
    buffered: int = 0  # rows it has in the high-quality buffer
    generated: int | None = None  # problems it wrote as a generator (None: never generated)
    dropped: int | None = None  # of which dropped


def _problem(r: sqlite3.Row) -> ProblemRow:
    return ProblemRow(
        r["id"],
        r["step"],
        r["author"],
        r["text"],
        r["difficulty"],
        tuple(json.loads(r["seed_ids"] or "[]")),
        r["status"],
        r["drop_reason"],
        r["slot"],
    )


def _solution(r: sqlite3.Row) -> SolutionRow:
    return SolutionRow(
        r["id"],
        r["problem_id"],
        r["step"],
        r["member"],
        r["sample"],
        r["text"],
        r["answer"],
        r["adapter_version"],
        r["error"],
    )


# A consensus-audit probe's problems.status (agora_cli.audit). Probe rows are solved and verified
# like any problem, and nothing of the protocol reads them: no votes, buffer, elite, V_t or counts.
PROBE = "probe"
# WHERE fragment for solutions (aliased `s`) of the protocol's problems, not of probes.
NOT_PROBE = f"s.problem_id NOT IN (SELECT id FROM problems WHERE status = '{PROBE}')"

# --------------------------------------------------------------------------- steps


def open_step(
    store: Store, step: int, difficulty: float, strategy: str, v_target: float, info: dict
) -> OpenStep:
    """Return the open row for `step`, creating it if this is the first attempt at the step.

    A resumed step keeps the d_t, strategy and generator choice it was opened with, so the work
    already stored for it stays consistent with what is asked next.
    """
    row = store.one("SELECT * FROM steps WHERE step = ?", (step,))
    if row is None:
        started = now()
        info = {**info, "v_target": v_target}
        store.execute(
            "INSERT INTO steps(step, started_at, difficulty, strategy, v_target, info) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (step, started, difficulty, strategy, v_target, json.dumps(info)),
        )
        return OpenStep(step, difficulty, strategy, v_target, info, started)
    if row["committed_at"] is not None:
        raise ValueError(f"step {step} is already committed")
    info = json.loads(row["info"] or "{}")
    return OpenStep(
        step,
        row["difficulty"],
        row["strategy"] or strategy,
        info.get("v_target", v_target),
        info,
        row["started_at"],
    )


def committed_steps(store: Store) -> list[sqlite3.Row]:
    return store.query("SELECT * FROM steps WHERE committed_at IS NOT NULL ORDER BY step")


def open_step_number(store: Store) -> int:
    """The step the run works on next: the one after the last committed step."""
    return store.last_committed_step() + 1


def next_difficulty_of(store: Store, step: int) -> float | None:
    """d_{t+1} committed by `step` (None: no such step, or not committed yet)."""
    value = store.scalar("SELECT next_difficulty FROM steps WHERE step = ?", (step,))
    return None if value is None else float(value)


def has_steps(store: Store) -> bool:
    """Whether any step was ever opened in the run (committed or not)."""
    return store.one("SELECT 1 FROM steps") is not None


def step_row(store: Store, step: int) -> dict[str, Any] | None:
    """The `steps` row of `step` as a plain dict (None: no such step)."""
    r = store.one("SELECT * FROM steps WHERE step = ?", (step,))
    return dict(r) if r is not None else None


def last_committed_row(store: Store) -> dict[str, Any] | None:
    """The newest committed `steps` row as a plain dict (None: nothing committed yet)."""
    r = store.one("SELECT * FROM steps WHERE committed_at IS NOT NULL ORDER BY step DESC LIMIT 1")
    return dict(r) if r is not None else None


def committed_count(store: Store) -> int:
    return int(store.scalar("SELECT COUNT(*) FROM steps WHERE committed_at IS NOT NULL") or 0)


def first_open_step(store: Store) -> int | None:
    """The lowest step with a steps row that has not committed (None: no open step)."""
    value = store.scalar("SELECT MIN(step) FROM steps WHERE committed_at IS NULL")
    return None if value is None else int(value)


def committed_totals(store: Store) -> tuple[int, int, float, int]:
    """(committed steps, rows they buffered, their summed wall time in s, solutions they
    validated by consensus): the throughput line."""
    r = store.one(
        "SELECT COUNT(*) AS n, SUM(n_buffered) AS buffered, SUM(wall_s) AS wall, "
        "SUM(n_correct) AS validated FROM steps WHERE committed_at IS NOT NULL"
    )
    if r is None:  # an aggregate always returns one row; kept explicit for the reader
        return 0, 0, 0.0, 0
    return int(r["n"] or 0), int(r["buffered"] or 0), float(r["wall"] or 0.0), int(r["validated"] or 0)


# The tables a step's open work is written to (one row per completed request).
WORK_TABLES = ("problems", "solutions", "verdicts", "votes", "explanations")


def work_counts(store: Store, step: int, tables: tuple[str, ...] = WORK_TABLES) -> dict[str, int]:
    """table -> rows stored for `step`, for tables among WORK_TABLES."""
    unknown = set(tables) - set(WORK_TABLES)
    if unknown:
        raise ValueError(f"not a work table: {sorted(unknown)}")
    return {t: int(store.scalar(f"SELECT COUNT(*) FROM {t} WHERE step = ?", (step,)) or 0) for t in tables}


# --------------------------------------------------------------------------- open-step work


def insert_problem(
    store: Store,
    step: int,
    author: str,
    text: str,
    difficulty: float,
    seed_ids: list[str],
    raw: str | None,
    dropped: str | None,
    slot: int | None = None,
) -> int:
    cur = store.execute(
        "INSERT INTO problems(step, author, text, difficulty, seed_ids, raw, status, drop_reason, "
        "slot, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            step,
            author,
            text,
            difficulty,
            json.dumps(seed_ids),
            raw,
            "dropped" if dropped else "ok",
            dropped,
            slot,
            now(),
        ),
    )
    return int(cur.lastrowid)  # type: ignore[arg-type]


def step_problems(store: Store, step: int, *, only_ok: bool = True) -> list[ProblemRow]:
    """The step's problems (kept only, or kept and dropped); audit probes never."""
    where = " AND status = 'ok'" if only_ok else f" AND status != '{PROBE}'"
    return [
        _problem(r) for r in store.query(f"SELECT * FROM problems WHERE step = ?{where} ORDER BY id", (step,))
    ]


def problem(store: Store, problem_id: int) -> ProblemRow:
    """The stored problem `problem_id` (one the caller has just written: it must exist)."""
    r = store.one("SELECT * FROM problems WHERE id = ?", (problem_id,))
    if r is None:
        raise StoreError(
            f"problem {problem_id} is not in the run store just after it was written (another writer?)"
        )
    return _problem(r)


def insert_probe(store: Store, step: int, text: str, difficulty: float, seed_id: str, gold: str) -> int:
    """A consensus-audit probe (`agora_cli.audit`): a problems row marked 'probe' (author
    'seed', no slot) and its gold, which only the audit reads, in one transaction."""
    with store.transaction():
        cur = store.execute(
            "INSERT INTO problems(step, author, text, difficulty, seed_ids, raw, status, "
            "created_at) VALUES (?, 'seed', ?, ?, ?, NULL, ?, ?)",
            (step, text, difficulty, json.dumps([seed_id]), PROBE, now()),
        )
        pid = int(cur.lastrowid)  # type: ignore[arg-type]
        store.execute(
            "INSERT INTO probes(problem_id, step, seed_id, gold) VALUES (?, ?, ?, ?)",
            (pid, step, seed_id, gold),
        )
    return pid


def step_probes(store: Store, step: int) -> list[ProblemRow]:
    """The step's probe problems (problems rows: no gold)."""
    rows = store.query("SELECT * FROM problems WHERE step = ? AND status = ? ORDER BY id", (step, PROBE))
    return [_problem(r) for r in rows]


def probe_seed_ids(store: Store) -> set[str]:
    """Seed-pool ids already used as probes in the run (a probe is never drawn twice)."""
    return {r["seed_id"] for r in store.query("SELECT seed_id FROM probes")}


def probe_golds(store: Store, step: int) -> dict[int, str]:
    """problem id -> gold answer of the step's probes. Read by the audit only."""
    return {
        r["problem_id"]: r["gold"]
        for r in store.query("SELECT problem_id, gold FROM probes WHERE step = ?", (step,))
    }


def authors_done(store: Store, step: int) -> set[str]:
    """Generators whose batch for `step` is stored (a batch is written in one transaction)."""
    rows = store.query("SELECT DISTINCT author FROM problems WHERE step = ?", (step,))
    return {r["author"] for r in rows}


def generation_counts(store: Store) -> dict[str, tuple[int, int]]:
    """author -> (problems written, of which dropped) over the whole run, seed fills left out:
    each member's drop rate as a generator."""
    return {
        r["author"]: (r["n"], r["dropped"] or 0)
        for r in store.query(
            "SELECT author, COUNT(*) AS n, SUM(status != 'ok') AS dropped FROM problems "
            "WHERE author != 'seed' GROUP BY author"
        )
    }


def existing_problem_texts(store: Store) -> list[str]:
    return [r["text"] for r in store.query("SELECT text FROM problems WHERE status = 'ok'")]


def upsert_solution(
    store: Store,
    step: int,
    problem_id: int,
    member: str,
    sample: int,
    text: str,
    answer: str | None,
    adapter_version: int,
    elite_ids: list[int],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    latency_s: float | None,
    error: str | None,
) -> int:
    """Write one solution; a failed attempt stored earlier is replaced by the retry."""
    store.execute(
        "INSERT INTO solutions(problem_id, step, member, sample, text, answer, adapter_version, "
        "elite_ids, prompt_tokens, completion_tokens, latency_s, error, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(problem_id, member, sample) DO UPDATE SET text = excluded.text, "
        "answer = excluded.answer, adapter_version = excluded.adapter_version, "
        "elite_ids = excluded.elite_ids, prompt_tokens = excluded.prompt_tokens, "
        "completion_tokens = excluded.completion_tokens, latency_s = excluded.latency_s, "
        "error = excluded.error, created_at = excluded.created_at WHERE solutions.error IS NOT NULL",
        (
            problem_id,
            step,
            member,
            sample,
            text,
            answer,
            adapter_version,
            json.dumps(elite_ids),
            prompt_tokens,
            completion_tokens,
            latency_s,
            error,
            now(),
        ),
    )
    return int(
        store.scalar(
            "SELECT id FROM solutions WHERE problem_id = ? AND member = ? AND sample = ?",
            (problem_id, member, sample),
        )
    )


def solution(store: Store, solution_id: int) -> SolutionRow:
    """The stored solution `solution_id` (one the caller has just written: it must exist)."""
    r = store.one("SELECT * FROM solutions WHERE id = ?", (solution_id,))
    if r is None:
        raise StoreError(
            f"solution {solution_id} is not in the run store just after it was written (another writer?)"
        )
    return _solution(r)


def member_samples(store: Store, problem_id: int, member: str) -> list[SolutionRow]:
    """The isolated control's answered self-consistency samples of one member on one problem."""
    rows = store.query(
        "SELECT * FROM solutions WHERE problem_id = ? AND member = ? AND sample > 0 AND error IS NULL",
        (problem_id, member),
    )
    return [_solution(r) for r in rows]


def step_solutions(store: Store, step: int) -> list[SolutionRow]:
    """The step's solutions of its problems (probe solutions are `probe_solutions`)."""
    rows = store.query(f"SELECT * FROM solutions s WHERE step = ? AND {NOT_PROBE} ORDER BY id", (step,))
    return [_solution(r) for r in rows]


def probe_solutions(store: Store, step: int) -> list[SolutionRow]:
    """The step's solutions of its audit probes."""
    rows = store.query(f"SELECT * FROM solutions s WHERE step = ? AND NOT {NOT_PROBE} ORDER BY id", (step,))
    return [_solution(r) for r in rows]


def insert_verdict(
    store: Store,
    step: int,
    solution_id: int,
    verifier: str,
    valid: bool,
    raw: str | None,
    latency_s: float | None,
) -> None:
    store.execute(
        "INSERT OR IGNORE INTO verdicts(solution_id, step, verifier, valid, raw, latency_s, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (solution_id, step, verifier, int(valid), raw, latency_s, now()),
    )


def step_verdicts(store: Store, step: int) -> list[VerdictRow]:
    return [
        VerdictRow(r["id"], r["solution_id"], r["verifier"], bool(r["valid"]))
        for r in store.query("SELECT * FROM verdicts WHERE step = ? ORDER BY id", (step,))
    ]


def insert_vote(
    store: Store,
    step: int,
    problem_id: int,
    solution_a: int,
    solution_b: int,
    voter: str,
    winner: int | None,
    raw: str | None,
    latency_s: float | None,
) -> None:
    store.execute(
        "INSERT OR IGNORE INTO votes(problem_id, step, solution_a, solution_b, voter, winner, raw, "
        "latency_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (problem_id, step, solution_a, solution_b, voter, winner, raw, latency_s, now()),
    )


def step_votes(store: Store, step: int) -> list[VoteRow]:
    return [
        VoteRow(r["id"], r["problem_id"], r["solution_a"], r["solution_b"], r["voter"], r["winner"])
        for r in store.query("SELECT * FROM votes WHERE step = ? ORDER BY id", (step,))
    ]


def insert_explanation(store: Store, step: int, solution_id: int, member: str, text: str) -> None:
    store.execute(
        "INSERT OR IGNORE INTO explanations(solution_id, step, member, text, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (solution_id, step, member, text, now()),
    )


def explanation_of(store: Store, solution_id: int) -> str | None:
    return store.scalar("SELECT text FROM explanations WHERE solution_id = ?", (solution_id,))


# --------------------------------------------------------------------------- committed state


def v_history(store: Store) -> list[float]:
    """V_t of every committed step, oldest first (the outer loop's input)."""
    return [r["v_t"] for r in committed_steps(store) if r["v_t"] is not None]


def latest_ratings(store: Store) -> dict[str, tuple[float, float]]:
    """member -> (mu, sigma) of its newest rating row (members never rated are absent)."""
    return {
        r["member"]: (r["mu"], r["sigma"])
        for r in store.query(
            "SELECT member, mu, sigma FROM ratings WHERE id IN (SELECT MAX(id) FROM ratings GROUP BY member)"
        )
    }


def current_ratings(store: Store, env: trueskill.TrueSkill, members: list[str]) -> dict:
    """The latest committed rating per member (a fresh rating for a member never rated)."""
    latest = latest_ratings(store)
    return {m: env.create_rating(*latest[m]) if m in latest else env.create_rating() for m in members}


@dataclass(frozen=True)
class DecidedVote:
    """A vote of a committed step with a winner, and the authors of the two solutions."""

    id: int
    step: int
    winner: int  # solution id
    solution_a: int
    solution_b: int
    author_a: str
    author_b: str

    def winner_loser(self) -> tuple[str, str]:
        """(winner author, loser author)."""
        if self.winner == self.solution_a:
            return self.author_a, self.author_b
        return self.author_b, self.author_a


def committed_votes(store: Store) -> list[DecidedVote]:
    """Votes of committed steps with a winner, in vote-id order, with both authors."""
    return [
        DecidedVote(
            r["id"], r["step"], r["winner"], r["solution_a"], r["solution_b"], r["author_a"], r["author_b"]
        )
        for r in store.query(
            "SELECT v.id, v.step, v.winner, sa.member AS author_a, sb.member AS author_b, "
            "v.solution_a, v.solution_b FROM votes v "
            "JOIN steps s ON s.step = v.step AND s.committed_at IS NOT NULL "
            "JOIN solutions sa ON sa.id = v.solution_a JOIN solutions sb ON sb.id = v.solution_b "
            "WHERE v.winner IS NOT NULL ORDER BY v.id"
        )
    ]


def active_elite(store: Store) -> list[sqlite3.Row]:
    """H_t: the active elite rows with their problem, solution and explanation."""
    return store.query(
        "SELECT e.id, e.solution_id, e.member, e.score, e.step, p.text AS problem, "
        "s.text AS solution, s.problem_id, x.text AS explanation FROM elite e "
        "JOIN solutions s ON s.id = e.solution_id JOIN problems p ON p.id = s.problem_id "
        "LEFT JOIN explanations x ON x.solution_id = e.solution_id "
        "WHERE e.active = 1 ORDER BY e.score DESC, e.solution_id DESC"  # ties: newer first
    )


def elite_examples(store: Store) -> list[EliteExample]:
    """H_t as solvers see it (best first): what the loop's solve prompts and
    `agora eval --with-elite` show."""
    return [
        EliteExample(
            problem=r["problem"],
            solution=r["solution"],
            explanation=r["explanation"],
            member=r["member"],
            solution_id=r["solution_id"],
            score=r["score"],
        )
        for r in active_elite(store)
    ]


def member_steps(store: Store, step: int) -> dict[str, MemberStep]:
    """member -> its `member_steps` row of `step` (empty for an AGORA step or an older run)."""
    return {
        r["member"]: MemberStep(r["difficulty"], r["v_t"], r["v_target"], r["next_difficulty"], r["f_t"])
        for r in store.query("SELECT * FROM member_steps WHERE step = ?", (step,))
    }


def member_v_history(store: Store, member: str) -> list[float]:
    """V_t^i of every committed isolated step of `member`, oldest first (its outer loop)."""
    return [
        r["v_t"]
        for r in store.query(
            "SELECT m.v_t FROM member_steps m JOIN steps s ON s.step = m.step "
            "WHERE s.committed_at IS NOT NULL AND m.member = ? AND m.v_t IS NOT NULL "
            "ORDER BY m.step",
            (member,),
        )
    ]


def pool_problem_ids(store: Store) -> set[str]:
    """Seed-pool ids the run has solved as problems (seed_pool source, seed fallbacks)."""
    return {
        i
        for r in store.query("SELECT seed_ids FROM problems WHERE author = 'seed' AND status = 'ok'")
        for i in json.loads(r["seed_ids"])
    }


def member_counts(store: Store) -> dict[str, MemberCounts]:
    """member -> its cumulative numbers over the run: solutions and validated ones of committed
    steps (probes left out), buffer rows, problems written and dropped. The one reader of these
    numbers: the commit's events and `agora status` both show them."""
    solved: dict[str, tuple[int, int]] = {
        r["member"]: (r["n"], r["ok"] or 0)
        for r in store.query(
            "SELECT s.member, COUNT(*) AS n, SUM(s.correct = 1) AS ok FROM solutions s "
            f"JOIN steps t ON t.step = s.step AND t.committed_at IS NOT NULL WHERE {NOT_PROBE} "
            "GROUP BY s.member"
        )
    }
    buffered: dict[str, int] = {
        r["member"]: r["n"] for r in store.query("SELECT member, COUNT(*) AS n FROM buffer GROUP BY member")
    }
    generated = generation_counts(store)
    out: dict[str, MemberCounts] = {}
    for m in [*solved, *(m for m in buffered if m not in solved)] + [
        m for m in generated if m not in solved and m not in buffered
    ]:
        n, ok = solved.get(m, (0, 0))
        gen, dropped = generated.get(m, (None, None))
        out[m] = MemberCounts(n, ok, buffered.get(m, 0), gen, dropped)
    return out


def member_usage(store: Store) -> dict[str, tuple[int, float]]:
    """member -> (completion tokens, request seconds) over its answered solutions."""
    return {
        r["member"]: (r["tok"] or 0, r["busy"] or 0.0)
        for r in store.query(
            "SELECT member, SUM(completion_tokens) AS tok, SUM(latency_s) AS busy "
            "FROM solutions WHERE error IS NULL GROUP BY member"
        )
    }


def insert_prior_ratings(store: Store, priors: dict[str, tuple[float, float]]) -> None:
    """An initial rating row (step 0, no vote) for each member of `priors` never rated yet, in
    one transaction, so status shows every member from the start."""
    with store.transaction():
        for member, (mu, sigma) in priors.items():
            if store.scalar("SELECT COUNT(*) FROM ratings WHERE member = ?", (member,)) == 0:
                store.execute(
                    "INSERT INTO ratings(step, member, mu, sigma, vote_id, created_at) "
                    "VALUES (0, ?, ?, ?, NULL, ?)",
                    (member, mu, sigma, now()),
                )


def audit_rows(store: Store) -> list[tuple[int, str, int, int, int, int]]:
    """(step, verifier, tp, fp, fn, tn) of the committed steps' consensus audit, oldest step
    first; empty for a store written before the audit existed."""
    if not store.has_table("audit"):
        return []
    return [
        (r["step"], r["verifier"], r["tp"], r["fp"], r["fn"], r["tn"])
        for r in store.query(
            "SELECT a.* FROM audit a JOIN steps s ON s.step = a.step AND s.committed_at IS NOT NULL "
            "ORDER BY a.step, a.verifier"
        )
    ]


def buffer_size(store: Store) -> int:
    return int(store.scalar("SELECT COUNT(*) FROM buffer") or 0)


def unconsumed_buffer(store: Store) -> int:
    return int(store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") or 0)


def unconsumed_by_member(store: Store) -> dict[str, int]:
    """member -> its own buffer rows no round has taken yet (the isolated control's trigger)."""
    return {
        r["member"]: r["n"]
        for r in store.query(
            "SELECT member, COUNT(*) AS n FROM buffer WHERE round_id IS NULL GROUP BY member"
        )
    }


def waiting_rows(store: Store, isolated: bool) -> int:
    """The unconsumed count the training threshold is compared with: the pooled count in AGORA
    mode, the largest member's own count in the isolated control (its threshold is per member)."""
    if isolated:
        return max(unconsumed_by_member(store).values(), default=0)
    return unconsumed_buffer(store)


# --------------------------------------------------------------------------- commit


def commit_effects(store: Store, fx: Effects) -> None:
    """Write one step's effects in ONE transaction; the steps row's committed_at seals it."""
    t = now()
    with store.transaction():
        for member, mu, sigma, vote_id in fx.rating_rows:
            store.execute(
                "INSERT INTO ratings(step, member, mu, sigma, vote_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (fx.step, member, mu, sigma, vote_id, t),
            )
        for sid, ok in fx.correct.items():
            store.execute("UPDATE solutions SET correct = ? WHERE id = ?", (int(ok), sid))
        for sid, pid, author in fx.buffer:
            store.execute(
                "INSERT OR IGNORE INTO buffer(step, solution_id, problem_id, member, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (fx.step, sid, pid, author, t),
            )
        keep = {sid for sid, _, _ in fx.elite}
        for row in store.query("SELECT solution_id FROM elite WHERE active = 1"):
            if row["solution_id"] not in keep:
                store.execute("UPDATE elite SET active = 0 WHERE solution_id = ?", (row["solution_id"],))
        for sid, member, score in fx.elite:
            store.execute(
                "INSERT INTO elite(step, solution_id, member, score, active, created_at) "
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(solution_id) DO UPDATE SET active = 1",
                (fx.step, sid, member, score, t),
            )
        for verifier, tp, fp, fn, tn in fx.audit:
            store.execute(
                "INSERT OR REPLACE INTO audit(step, verifier, tp, fp, fn, tn) VALUES (?, ?, ?, ?, ?, ?)",
                (fx.step, verifier, tp, fp, fn, tn),
            )
        for sid, truth, approved in fx.audit_solutions:
            store.execute(
                "INSERT OR REPLACE INTO audit_solutions(solution_id, step, truth, approved) "
                "VALUES (?, ?, ?, ?)",
                (sid, fx.step, int(truth), int(approved)),
            )
        for member, m in fx.member_steps.items():
            store.execute(
                "INSERT OR REPLACE INTO member_steps(step, member, difficulty, v_t, v_target, "
                "next_difficulty, f_t) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fx.step, member, m.difficulty, m.v_t, m.v_target, m.next_difficulty, m.f_t),
            )
        c = fx.counts
        store.execute(
            "UPDATE steps SET committed_at = ?, next_difficulty = ?, v_t = ?, v_target = ?, "
            "f_t = ?, strategy = ?, n_problems = ?, n_dropped = ?, n_solutions = ?, "
            "n_correct = ?, n_buffered = ?, wall_s = ?, request_s = ?, info = ? WHERE step = ?",
            (
                t,
                fx.next_difficulty,
                fx.v_t,
                fx.v_target,
                fx.f_t,
                fx.strategy,
                c.get("problems", 0),
                c.get("dropped", 0),
                c.get("solutions", 0),
                c.get("correct", 0),
                c.get("buffered", 0),
                fx.wall_s,
                fx.request_s,
                json.dumps(fx.info),
                fx.step,
            ),
        )
