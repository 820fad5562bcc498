"""External anchoring (protocol step 7): score every member on a held-out calibration set.

The calibration set is a fixed seeded subset (`calibration_size` items) of the held-out dev split
of `cfg.evaluation.calibration` (for gsm8k: the last 500 rows of GSM8K train, which the seed pool
leaves out), so the anchor measures the group against ground truth it never saw, and `agora eval`
never scores an item whose label steered the run. The loop calls `run_anchor` every
`protocol.anchor_every` steps for every member (`loop.anchor_scores`) and stores the scores in
the `anchors` table; Eq. 2's surprise, FEM and the dynamic strategy read them from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from agora_cli.client import ClientPool
from agora_cli.config import Config
from agora_cli.datasets import calibration_name, calibration_set
from agora_cli.evaluation.grading import Grader
from agora_cli.evaluation.scoring import (
    MAJORITY,
    ItemResult,
    accuracy,
    answer_items,
    greedy_sampling,
    majority_rows,
)
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.protocol.prompts import Prompts


async def run_anchor(
    pool: ClientPool,
    cfg: Config,
    prompts: Prompts,
    step: int,
    members: list[str] | None = None,
    bus: EventBus = NULL_BUS,
    stored: Sequence[ItemResult] = (),
    keep: Callable[[ItemResult], None] | None = None,
) -> dict[str, tuple[float, int]]:
    """{member or '@majority': (pass@1, n graded)} on the calibration set at `step`.

    `members` (default: all) are the members to score; the loop passes only those whose live
    adapter changed since their last anchor. `@majority` needs every member's answers, so it is
    scored only when all are. A request that fails after retries is left out of `n` (the score
    is over what was graded); `@majority` covers the items every member answered. A name graded
    on nothing (n = 0: every request failed) is missing from the result, never (0.0, 0).

    `stored` are answers graded at this step before an interruption: an item a member already
    answered with the model it is asked with now is not asked again (like every other request of
    an open step). `keep` is given each new graded answer as it arrives (failed requests aside).
    """
    ev = cfg.evaluation
    items = calibration_set(ev.calibration, ev.calibration_size, cfg.protocol.seed_pool)
    everyone = [m.name for m in cfg.members]
    members = everyone if members is None else [m for m in everyone if m in members]
    majority = members == everyone
    sampling = greedy_sampling(ev.sampling) if ev.greedy else ev.sampling
    model_of = {m: pool.resolve(m).model for m in members}
    wanted = {(it.benchmark, it.id) for it in items}
    reused = [
        a
        for a in stored
        if a.member in model_of and a.model == model_of[a.member] and (a.benchmark, a.item_id) in wanted
    ]
    have = {(r.member, r.item_id) for r in reused}
    jobs = [(m, it) for it in items for m in members if (m, it.id) not in have]
    total = len(jobs) + len(reused)
    loop = asyncio.get_running_loop()
    grader = Grader(ev.grade_workers, ev.grade_timeout_s)
    # The anchor takes minutes on a CPU: its progress is shown like a phase of the step.
    done = len(reused)
    bus.emit("phase_started", phase="anchor", step=step, n=total, members=members, reused=len(reused))

    def graded(r: ItemResult) -> None:
        nonlocal done
        done += 1
        if keep is not None and r.error is None:
            keep(r)
        bus.emit("phase_progress", phase="anchor", step=step, done=done, total=total)

    try:
        rows = reused + await answer_items(
            pool, prompts, sampling, grader, jobs, model_of=lambda m: model_of[m], on_result=graded
        )
        # Grading off the event loop: the grader blocks until its workers answer.
        if majority:
            rows += await loop.run_in_executor(None, majority_rows, rows, members, items, grader)
    finally:
        await loop.run_in_executor(None, grader.close)
    bus.emit("phase_finished", phase="anchor", step=step, n=total)
    scores = accuracy(rows).get(calibration_name(ev.calibration), {})
    names = [*members, MAJORITY] if majority else members
    # A member graded on nothing (every request failed) has no score, not a score of 0.0: it is
    # left out, so no anchor row is stored for it, Eq. 2's ensemble mean skips it, and the next
    # anchor step scores it again (every member is scored at every anchor step).
    return {name: scores[name] for name in names if scores.get(name, (0.0, 0))[1] > 0}
