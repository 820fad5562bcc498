"""The consensus audit's probes within an AGORA step (`agora_cli.audit`).

A probe is a seed-pool problem with its gold set aside, drawn when the step opens (`plan`). It is
stored, solved and verified like any other problem, so a verifier cannot tell it apart, and then
it stops: it is never voted on, never buffered, never in H_t, V_t or the step's counts. At commit
its solutions are graded against gold (`audit`): how often unanimous consensus was right.
"""

from __future__ import annotations

import asyncio

from agora_cli import steps
from agora_cli.audit import Counts, GradeMany, ProbeSolution, plan_probes, tally
from agora_cli.config import Config
from agora_cli.evaluation.grading import Grader
from agora_cli.protocol import generate as gen
from agora_cli.step.base import OnProblem, StepState, step_rng
from agora_cli.step.solving import Consensus
from agora_cli.store import Store


def plan(cfg: Config, store: Store, t: int, shown: set[str]) -> list[str]:
    """The seed-pool ids step t mixes in as probes. Drawn on their own seeded stream, so the
    step's other draws are those of a run without the audit; never a seed shown this step
    (`shown`), never an earlier probe, never a pool item already solved as a problem (so
    seed_pool problems do not depend on probes)."""
    return plan_probes(
        gen.load_seed_pool(cfg.protocol.seed_pool),
        cfg.protocol.audit_probes,
        step_rng(cfg, t, "probes"),
        shown | steps.probe_seed_ids(store) | steps.pool_problem_ids(store),
    )


class Probes:
    """The open step's probes: stored, solved and verified through the step's `Consensus`."""

    def __init__(self, state: StepState, consensus: Consensus) -> None:
        self.state = state
        self.consensus = consensus

    def stored(self) -> list[steps.ProblemRow]:
        return steps.step_probes(self.state.store, self.state.t)

    def fill(self, on_problem: OnProblem | None) -> list[steps.ProblemRow]:
        """Store the step's planned probes not stored yet, hand each new one to `on_problem`,
        and return all the step's probe rows."""
        st = self.state
        done = {r.seed_ids[0] for r in self.stored()}
        for seed_id in st.open.info.get("probes") or []:
            item = st.seed_pool.get(seed_id)
            if item is None or seed_id in done:
                continue
            pid = steps.insert_probe(
                st.store, st.t, item["problem"], st.open.difficulty, seed_id, item["answer"]
            )
            if on_problem is not None:
                on_problem(steps.problem(st.store, pid))
        return self.stored()

    async def flow(self, p: steps.ProblemRow) -> None:
        """solve (all members) -> verify each solution as it lands; no votes: nothing a probe
        does may reach the ratings."""
        await self.consensus.solve_and_verify(p)

    def solutions(self) -> list[ProbeSolution]:
        """The step's answered probe solutions with their consensus outcome and verdicts (failed
        requests left out: they are no decision). Gold is read here and nowhere else."""
        st, c = self.state, self.consensus
        golds = steps.probe_golds(st.store, st.t)
        out = []
        for r in steps.probe_solutions(st.store, st.t):
            sol = c.solutions.get((r.problem_id, r.member))
            if sol is None or r.problem_id not in golds:
                continue
            out.append(
                ProbeSolution(sol.id, sol.answer, golds[r.problem_id], c.is_correct(sol), c.verdicts_of(sol))
            )
        return out

    async def audit(self, grade: GradeMany | None) -> tuple[dict[int, tuple[bool, bool]], dict[str, Counts]]:
        """Grade the step's probe solutions (off the event loop) and tally the audit:
        ({solution id: (truth, approved)}, {'@consensus' or verifier: Counts}). Without `grade`,
        a one-worker grader is started for the call when there is anything to grade."""
        probes = self.solutions()
        if not probes:
            return {}, {}
        loop = asyncio.get_running_loop()
        own = None
        if grade is None:
            own = Grader(1, self.state.cfg.evaluation.grade_timeout_s)
            grade = own.grade_many
        try:
            truth, counts = await loop.run_in_executor(None, tally, probes, grade)
        finally:
            if own is not None:
                await loop.run_in_executor(None, own.close)
        return {p.solution_id: (truth[p.solution_id], p.approved) for p in probes}, counts
