"""A step's effects: computed from its stored work, written in one transaction, announced.

Everything here reads the run store and what the loop hands it as plain data (`StepWork`: the
open step, its members and each solution's outcome), and nothing calls a model. Ratings are a
pure function of the committed votes (`replay_ratings`), so the rating history can always be
recomputed and checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agora_cli import anchor_store, steps
from agora_cli.audit import CONSENSUS, Counts, step_counts, totals
from agora_cli.config import Config
from agora_cli.events import EventBus
from agora_cli.protocol.difficulty import next_difficulty
from agora_cli.protocol.majority import MAJORITY
from agora_cli.protocol.select import indicator
from agora_cli.protocol.surprise import NO_ANCHOR_NOTE, fem_move, fem_text, step_strategy
from agora_cli.protocol.types import EliteExample
from agora_cli.protocol.vote import apply_vote, make_env
from agora_cli.store import Store


@dataclass
class StepWork:
    """What the loop knows about the open step that the store does not: plain data."""

    open: steps.OpenStep
    members: list[str]
    isolated: bool  # the isolated-evolution control (no votes, own problems, own difficulty)
    correct: dict[int, bool]  # solution id -> unanimous consensus (or self-consistency) outcome
    failures: int  # requests that failed after retries in this invocation
    # The consensus audit of the step's probes (agora_cli.audit), already graded: stored as is,
    # read by nothing that steers the run.
    audit: dict[str, Counts] = field(default_factory=dict)
    audit_solutions: dict[int, tuple[bool, bool]] = field(default_factory=dict)  # id: truth, ok


def member_difficulty(
    cfg: Config, store: Store, run: StepWork, solutions: list[steps.SolutionRow], correct: dict[int, bool]
) -> tuple[dict[str, steps.MemberStep], dict[str, dict]]:
    """The isolated control's own difficulty loop per member (protocol step 1, per member):
    V_t^i = the share of member i's samples that self-consistency validated, d_{t+1}^i by Eq. 1
    from its d_t^i and V_target^i (fixed when the step opened), then FEM (Eq. 2) on the member's
    OWN anchor history when it was scored anew at this step. Nothing pooled enters. Returns the
    member rows and FEM's moves by member."""
    plan = run.open.info.get("members") or {}  # absent: a step opened by an older agora
    fresh = anchor_store.fresh_anchor_scores(store, run.open.step)
    out: dict[str, steps.MemberStep] = {}
    moves: dict[str, dict] = {}
    for m in run.members:
        if m not in plan:
            continue
        d, v_target = float(plan[m]["d"]), float(plan[m]["v_target"])
        mine = [s.id for s in solutions if s.member == m]
        v = sum(1 for sid in mine if correct.get(sid)) / len(mine) if mine else None
        d_next = (
            d
            if v is None
            else next_difficulty(d, v, v_target, cfg.protocol.difficulty, cfg.ablations.difficulty_control)
        )  # Eq. 1
        f_t = None
        if m in fresh:
            score, n = fresh[m]
            d_next, f_t, move = fem_move(
                cfg, anchor_store.member_anchor_counts(store, m) + [(score * n, n)], d_next
            )
            if move:
                moves[m] = move
        out[m] = steps.MemberStep(d, v, v_target, d_next, f_t)
    return out, moves


def replay_ratings(store: Store, members: list[str]) -> dict[str, tuple[float, float]]:
    """Ratings recomputed from the committed votes alone, in vote-id order (protocol step 4)."""
    env = make_env()
    ratings = {m: env.create_rating() for m in members}
    for v in steps.committed_votes(store):
        winner, loser = v.winner_loser()
        apply_vote(env, ratings, winner, loser)
    return {m: (r.mu, r.sigma) for m, r in ratings.items()}


def init_ratings(cfg: Config, store: Store) -> None:
    """Initial TrueSkill rows (vote_id NULL) for members never rated, so status shows them."""
    env = make_env()
    priors = {m.name: env.create_rating() for m in cfg.members}
    steps.insert_prior_ratings(store, {m: (r.mu, r.sigma) for m, r in priors.items()})


def member_stats(store: Store, cfg: Config, versions: dict[str, int]) -> dict[str, dict]:
    """Cumulative per-member numbers for the views (committed steps only). The isolated control
    has no votes, so no ratings: its members carry no mu/sigma (a prior would read as a result)."""
    out: dict[str, dict] = {
        m.name: {"solutions": 0, "validated": 0, "buffered": 0, "version": versions.get(m.name, 0)}
        for m in cfg.members
    }
    if cfg.protocol.mode != "isolated":
        for m, r in steps.current_ratings(store, make_env(), list(out)).items():
            out[m].update(mu=round(r.mu, 3), sigma=round(r.sigma, 3))
    for m, c in steps.member_counts(store).items():
        if m in out:
            out[m].update(solutions=c.solutions, validated=c.validated, buffered=c.buffered)
            if c.generated is not None:
                out[m].update(generated=c.generated, dropped=c.dropped)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def compute_effects(
    cfg: Config,
    store: Store,
    run: StepWork,
    elite: list[EliteExample],
    anchors: dict[str, tuple[float, int]],
    wall_s: float,
    request_s: float,
) -> steps.Effects:
    """The step's effects from its stored work (pure apart from reads)."""
    t = run.open.step
    all_solutions = steps.step_solutions(store, t)
    correct = run.correct

    # Protocol step 4: every vote of the step updates the two authors, in vote-id order.
    env = make_env()
    ratings = steps.current_ratings(store, env, run.members)
    rating_rows: list[tuple[str, float, float, int | None]] = []
    if not run.isolated:
        authors = {s.id: s.member for s in all_solutions}
        for v in steps.step_votes(store, t):
            if v.winner is None:
                continue
            loser_id = v.solution_b if v.winner == v.solution_a else v.solution_a
            w, lo = authors[v.winner], authors[loser_id]
            apply_vote(env, ratings, w, lo)
            for m in (w, lo):
                rating_rows.append((m, ratings[m].mu, ratings[m].sigma, v.id))

    # Eq. 4: consensus AND the author's mu above the ensemble mean (after this step's votes).
    mean_mu = _mean([r.mu for r in ratings.values()])
    buffer: list[tuple[int, int, str]] = []
    seen: set[tuple[int, str]] = set()
    for s in all_solutions:
        if not correct.get(s.id):
            continue
        if run.isolated:
            if (s.problem_id, s.member) in seen:
                continue  # one majority sample per (problem, member)
            seen.add((s.problem_id, s.member))
            buffer.append((s.id, s.problem_id, s.member))
        elif not cfg.ablations.quality_vote or indicator(True, ratings[s.member].mu, mean_mu):
            buffer.append((s.id, s.problem_id, s.member))

    n_sol = len(all_solutions)
    n_ok = sum(1 for v in correct.values() if v)
    # V_t: consensus approval of this step (the share of its solutions every verifier passed). A
    # step without solutions says nothing about the difficulty, so V_t stays NULL and d_t carries
    # over.
    v_t = n_ok / n_sol if n_sol else None
    d_next = run.open.difficulty
    if v_t is not None:
        d_next = next_difficulty(
            run.open.difficulty,
            v_t,
            run.open.v_target,
            cfg.protocol.difficulty,
            cfg.ablations.difficulty_control,
        )  # Eq. 1
    f_t: float | None = None
    move: dict | None = None
    member_moves: dict[str, dict] = {}
    if anchors:
        # The ensemble's current anchor, members pooled (Eq. 2's mean_mu_t; FEM's noise test).
        now = [(s * n, n) for m, (s, n) in anchors.items() if m != MAJORITY]
        current = (sum(k for k, _ in now), sum(n for _, n in now))
        d_next, f_t, move = fem_move(cfg, anchor_store.anchor_counts(store) + [current], d_next)
    own: dict[str, steps.MemberStep] = {}
    if run.isolated:
        own, member_moves = member_difficulty(cfg, store, run, all_solutions, correct)
    if own:
        # The isolated step's steps.next_difficulty is the members' mean, for the views only:
        # each member's next step reads its own d_{t+1}^i (member_steps).
        d_next = _mean([m.next_difficulty for m in own.values()])
    # Why d moved beyond Eq. 1 (FEM), and why F_t is NULL without the anchor: in the step's info.
    notes: dict = {}
    if move:
        notes["fem"] = move
    if member_moves:
        notes["fem_members"] = member_moves
    if not cfg.ablations.external_anchor:
        notes["f_t_note"] = NO_ANCHOR_NOTE
    all_problems = steps.step_problems(store, t, only_ok=False)
    counts = {
        "problems": sum(1 for p in all_problems if p.kept),
        "dropped": sum(1 for p in all_problems if not p.kept),
        "solutions": n_sol,
        "correct": n_ok,
        "buffered": len(buffer),
    }
    return steps.Effects(
        step=t,
        rating_rows=rating_rows,
        correct=correct,
        buffer=buffer,
        elite=[(e.solution_id, e.member, e.score) for e in elite],
        next_difficulty=d_next,
        v_t=v_t,
        v_target=run.open.v_target,
        f_t=f_t,
        strategy=run.open.strategy,
        counts=counts,
        wall_s=round(wall_s, 3),
        request_s=round(request_s, 3),
        info={**run.open.info, "failures": run.failures, "mean_mu": mean_mu, **notes},
        audit=[(v, c.tp, c.fp, c.fn, c.tn) for v, c in run.audit.items()],
        audit_solutions=[(sid, truth, ok) for sid, (truth, ok) in run.audit_solutions.items()],
        member_steps=own,
    )


def emit_committed(
    cfg: Config, store: Store, bus: EventBus, fx: steps.Effects, d: float, versions: dict[str, int]
) -> None:
    stats = member_stats(store, cfg, versions)
    isolated = cfg.protocol.mode == "isolated"
    if not isolated:  # the isolated control is never rated (member_stats has no mu/sigma)
        for m, s in stats.items():
            bus.emit("rating_update", member=m, mu=s["mu"], sigma=s["sigma"])
    size = steps.buffer_size(store)
    # isolated: the member nearest its own threshold (`per_member`), so the ETA stays meaningful
    unconsumed = steps.waiting_rows(store, isolated)
    bus.emit(
        "buffer_size",
        size=size,
        threshold=cfg.protocol.buffer_threshold,
        unconsumed=unconsumed,
        per_member=isolated,
    )
    bus.emit("difficulty", step=fx.step, d=fx.next_difficulty, v=fx.v_t, v_target=fx.v_target)
    bus.emit(
        "surprise",
        step=fx.step,
        f=fx.f_t,
        strategy=fx.strategy,
        next_strategy=step_strategy(cfg, anchor_store.anchor_history(store)),
        **({"note": fx.info["f_t_note"]} if "f_t_note" in fx.info else {}),
    )
    moves = [(None, fx.info["fem"])] if "fem" in fx.info else []
    moves += list((fx.info.get("fem_members") or {}).items())
    for member, move in moves:  # why d moved beyond Eq. 1's value
        bus.emit("fem", step=fx.step, member=member, **move, text=fem_text(move, member))
    if fx.audit:
        run_total = totals(step_counts(store).values())
        bus.emit(
            "consensus_audit",
            step=fx.step,
            **audit_event(fx.audit),
            total={v: _plain(c) for v, c in run_total.items()},
        )
    bus.emit(
        "step_committed",
        step=fx.step,
        d=d,
        d_next=fx.next_difficulty,
        v_t=fx.v_t,
        v_target=fx.v_target,
        f_t=fx.f_t,
        strategy=fx.strategy,
        wall_s=fx.wall_s,
        request_s=fx.request_s,
        buffer=size,
        unconsumed=unconsumed,
        threshold=cfg.protocol.buffer_threshold,
        per_member=isolated,
        members=stats,
        **{f"n_{k}": v for k, v in fx.counts.items()},
        **(
            {"member_d": {m: round(x.next_difficulty, 4) for m, x in fx.member_steps.items()}}
            if fx.member_steps
            else {}
        ),
    )


def audit_event(rows: list[tuple[str, int, int, int, int]]) -> dict:
    """The `consensus_audit` event's fields: per verifier ('@consensus' too) its counts, and the
    consensus's precision and recall as numbers (None when undefined) for plain consumers."""
    counts = {v: Counts(tp, fp, fn, tn) for v, tp, fp, fn, tn in rows}
    c = counts.get(CONSENSUS, Counts())

    def rate(k: int, n: int) -> float | None:
        return k / n if n else None

    return {
        "precision": rate(*c.precision),
        "recall": rate(*c.recall),
        "verifiers": {v: _plain(x) for v, x in counts.items()},
    }


def _plain(c: Counts) -> dict[str, int]:
    return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}
