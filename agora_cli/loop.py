"""The AGORA loop: one step t of the protocol (docs/protocol.md), repeated, resumable at any point.

`run_step` opens (or reopens) the step, drives its variant (`agora_cli.step`: AGORA, or the
isolated control, chosen by `protocol.mode`) until its work is stored, then commits it. A step
flows per problem, not per phase, with concurrency bounded by the client pool's per-member limits,
so the step's wall time approaches its critical path rather than the sum of its requests (both are
recorded: `steps.wall_s`, `steps.request_s`). External anchoring (protocol step 7) runs beside it.

Every completed request is written at once (open-step work, see `agora_cli.store`); a resumed step
issues only the requests still missing. The step's effects are computed from the stored work
(`agora_cli.commit`) and written by `steps.commit_effects` in one transaction:

  TrueSkill updates from the step's votes in vote-id order  (protocol step 4)
  solutions.correct from unanimous consensus                 (step 3)
  buffer rows by Eq. 4, the elite history H_t                (step 5)
  d_{t+1} by Eq. 1 and F_t by Eq. 2 (FEM)                    (steps 1, 7)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial

from agora_cli import anchor_store, steps
from agora_cli.audit import GradeMany
from agora_cli.client import ClientPool
from agora_cli.commit import compute_effects, emit_committed
from agora_cli.config import Config
from agora_cli.datasets import calibration_name
from agora_cli.events import EventBus
from agora_cli.protocol.difficulty import next_target
from agora_cli.protocol.prompts import Prompts
from agora_cli.protocol.surprise import anchor_step, elite_shots, step_strategy
from agora_cli.protocol.types import Ctx
from agora_cli.step import Step, StepState, variant_for
from agora_cli.step.base import Versions
from agora_cli.store import Store

# async run_anchor(pool, cfg, prompts, step, members, bus, stored=..., keep=...) -> {member: (score, n)}
AnchorFn = Callable[..., Awaitable[dict[str, tuple[float, int]]]]


def anchor_due(cfg: Config, step: int) -> bool:
    """External anchoring (protocol step 7) after every `anchor_every`-th step."""
    return cfg.ablations.external_anchor and anchor_step(step, cfg.protocol.anchor_every)


def begin_step(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    versions: Versions = dict,
) -> Step:
    """Open (or reopen) step t = last committed + 1, with state read from committed rows, as
    the variant `protocol.mode` names."""
    t = steps.open_step_number(store)
    history = steps.v_history(store)
    last_d = steps.next_difficulty_of(store, t - 1)
    d_t = last_d if last_d is not None else cfg.protocol.difficulty.d0
    strategy = step_strategy(cfg, anchor_store.anchor_history(store))
    variant = variant_for(cfg.protocol.mode)
    plan, d_t = variant.plan(cfg, store, t, d_t)
    opened = steps.open_step(
        store, t, d_t, strategy, next_target(history, cfg.protocol.difficulty, cfg.protocol.v_target), plan
    )
    ctx = Ctx(cfg=cfg, pool=pool, prompts=prompts, rng=random.Random(f"{cfg.seed}:{t}"), bus=bus)
    k = elite_shots(opened.strategy, cfg.protocol)  # type: ignore[arg-type]
    return variant(StepState(cfg, store, ctx, bus, opened, versions, steps.elite_examples(store)[:k]))


def busy_s(pool: ClientPool) -> float:
    return sum(u.busy_s for u in pool.usage.values())


async def anchor_scores(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    t: int,
    members: list[str],
    versions: Versions,
    anchor: AnchorFn,
) -> None:
    """External anchoring at step t (protocol step 7): score every member on the calibration
    set, whether or not its adapter changed, and store the scores at once.

    Scoring only changed members left Eq. 2, FEM and the dynamic strategy without a signal until
    LoRA rounds produced new adapters, so `lora` off silenced them too, and the step from which
    they could act depended on a buffer fill no step count predicts. The sampling noise of
    re-scoring an unchanged member is handled where it matters: FEM acts only on a drop beyond
    the anchor's 95% interval (protocol/surprise.py)."""
    bench, live = calibration_name(cfg.evaluation.calibration), versions()  # the held-out dev split
    # Answers graded before an interruption are reused, new ones kept as they arrive.
    stored = anchor_store.anchor_items(store, t)
    keep = partial(anchor_store.insert_anchor_item, store, t)
    scores = await anchor(pool, cfg, prompts, t, members, bus, stored=stored, keep=keep)
    with store.transaction():
        for member, (score, n) in scores.items():
            anchor_store.insert_anchor(store, t, member, bench, score, n, live.get(member, 0))
    for member, (score, n) in scores.items():
        bus.emit("validation_score", step=t, member=member, benchmark=bench, score=score, n=n)


async def run_step(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    *,
    versions: Versions = dict,
    anchor: AnchorFn | None = None,
    grade: GradeMany | None = None,
) -> steps.Effects:
    """Run (or finish) the open step and commit it. Returns what was committed.

    `grade` grades the audit probes'
    answers against gold (a `Grader`'s `grade_many`); without one, a one-worker grader is
    started for the commit when the step has probes."""
    t0, busy0 = time.perf_counter(), busy_s(pool)
    run = begin_step(cfg, store, pool, prompts, bus, versions)
    st = run.state
    t = st.t
    bus.emit(
        "step_started",
        step=t,
        d=st.open.difficulty,
        v_target=st.open.v_target,
        strategy=st.open.strategy,
        generators=st.open.info.get("generators"),
    )

    async def anchor_task() -> None:
        if anchor is None or anchor_store.step_anchors(store, t) or not anchor_due(cfg, t):
            return
        await anchor_scores(cfg, store, pool, prompts, bus, t, st.members, versions, anchor)

    await asyncio.gather(run.pipeline(), anchor_task())
    if st.failures:
        # One more pass asks only what is still missing (failed requests are never stored).
        st.failures = 0
        await run.pipeline()
        if st.failures and pool.unreachable:
            # A member is still down after retries and a second pass: committing now would seal
            # the step with its work missing (V_t, ratings and the buffer all skewed). Stop
            # instead; the stored work is kept and a re-run resumes the step.
            raise next(iter(pool.unreachable.values()))
    elite = await run.select_elite(elite_shots(st.open.strategy, cfg.protocol))  # type: ignore[arg-type]
    work = await run.work(grade)
    bus.emit("phase_started", phase="commit", step=t, n=1)
    # Eq. 2 sees a step's anchors only when some member was scored anew.
    fx = compute_effects(
        cfg,
        store,
        work,
        elite,
        anchor_store.rescored_anchors(store, t),
        time.perf_counter() - t0,
        busy_s(pool) - busy0,
    )
    steps.commit_effects(store, fx)
    bus.emit("phase_finished", phase="commit", step=t, n=1)
    emit_committed(cfg, store, bus, fx, st.open.difficulty, versions())
    return fx
