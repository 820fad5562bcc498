"""Protocol steps 2 and 3 as AGORA and the audit probes share them: every member solves a problem
with H_{t-1} in its prompt, every other member verifies each solution, and a solution is correct
only when all of them said valid (unanimous consensus).

The step's stored solutions and verdicts are loaded once; each completed request is stored at
once and added here, so a resumed step asks only what is missing.
"""

from __future__ import annotations

import asyncio

from agora_cli import steps
from agora_cli.protocol.solve import solve
from agora_cli.protocol.types import Verdict
from agora_cli.protocol.verify import consensus, verify
from agora_cli.step.base import StepState


class Consensus:
    """One answer per (problem, member), verified by every other member (sample 0 only)."""

    def __init__(self, state: StepState) -> None:
        self.state = state
        store, t = state.store, state.t
        self.solutions: dict[tuple[int, str], steps.SolutionRow] = {
            (r.problem_id, r.member): r
            for r in [*steps.step_solutions(store, t), *steps.probe_solutions(store, t)]
            if r.error is None and r.sample == 0
        }
        self.verdicts: dict[tuple[int, str], bool] = {
            (r.solution_id, r.verifier): r.valid for r in steps.step_verdicts(store, t)
        }

    # -- 2. solution formulation ---------------------------------------------------------------

    async def solve_one(self, p: steps.ProblemRow, member: str) -> steps.SolutionRow:
        st = self.state
        # H_{t-1} as few-shot examples; solve() drops them when elite_icl is off.
        draft = await solve(st.ctx, member, p.text, st.elite)
        version = st.versions().get(member, 0)
        sid = steps.upsert_solution(
            st.store,
            st.t,
            p.id,
            member,
            0,
            draft.text,
            draft.answer,
            version,
            [e.solution_id for e in st.elite if st.cfg.ablations.elite_icl],
            draft.prompt_tokens,
            draft.completion_tokens,
            draft.latency_s,
            draft.error,
        )
        st.tick("solve", done=1)
        row = steps.solution(st.store, sid)
        if draft.error:
            st.failures += 1
        else:
            self.solutions[(p.id, member)] = row
        return row

    # -- 3. unanimous consensus ----------------------------------------------------------------

    def verifiers_of(self, sol: steps.SolutionRow) -> list[str]:
        return [m for m in self.state.members if m != sol.member]

    def needs_verdicts(self, sol: steps.SolutionRow) -> bool:
        return self.state.cfg.ablations.valid_vote and sol.answer is not None

    async def verify_one(self, p: steps.ProblemRow, sol: steps.SolutionRow, verifier: str) -> None:
        st = self.state
        v = await verify(st.ctx, verifier, p.text, sol.text)
        st.tick("verify", done=1)
        if v.error:
            st.failures += 1  # a failed request is not a judgement: asked again
            return
        steps.insert_verdict(st.store, st.t, sol.id, verifier, v.valid, v.raw, v.latency_s)
        self.verdicts[(sol.id, verifier)] = bool(v.valid)
        st.bus.emit("verdict", step=st.t, solution_id=sol.id, verifier=verifier, valid=v.valid)

    async def verify_solution(self, p: steps.ProblemRow, sol: steps.SolutionRow) -> None:
        if not self.needs_verdicts(sol):
            return
        todo = [v for v in self.verifiers_of(sol) if (sol.id, v) not in self.verdicts]
        self.state.tick("verify", total=len(todo))
        await asyncio.gather(*(self.verify_one(p, sol, v) for v in todo))

    def verdicts_of(self, sol: steps.SolutionRow) -> dict[str, bool]:
        """verifier -> its stored verdict on `sol` (verifiers that gave none are absent)."""
        return {v: self.verdicts[(sol.id, v)] for v in self.verifiers_of(sol) if (sol.id, v) in self.verdicts}

    def is_correct(self, sol: steps.SolutionRow) -> bool:
        """Protocol step 3: correct only if every other member said valid (unanimity)."""
        if sol.error is not None or sol.answer is None:
            return False
        if not self.state.cfg.ablations.valid_vote:
            return True  # w/o valid_vote: every answered solution counts
        verdicts = [Verdict(verifier=v, valid=ok, raw="") for v, ok in self.verdicts_of(sol).items()]
        return len(verdicts) == len(self.verifiers_of(sol)) and consensus(verdicts)

    def problem_solutions(self, pid: int) -> list[steps.SolutionRow]:
        return sorted((s for (p, _), s in self.solutions.items() if p == pid), key=lambda s: s.id)

    # -- one problem ---------------------------------------------------------------------------

    async def solution_flow(self, p: steps.ProblemRow, member: str) -> None:
        """member's solution of p (asked when missing), then its missing verdicts."""
        sol = self.solutions.get((p.id, member))
        if sol is None:
            self.state.tick("solve", total=1)
            sol = await self.solve_one(p, member)
        if sol.error is None:
            await self.verify_solution(p, sol)

    async def solve_and_verify(self, p: steps.ProblemRow) -> None:
        """Every member's solution of p, each verified as it lands."""
        await asyncio.gather(*(self.solution_flow(p, m) for m in self.state.members))

    async def solve_missing(self, problems: list[steps.ProblemRow]) -> None:
        """The `solve` stage: every missing (problem, member) solution at once."""
        todo = [(p, m) for p in problems for m in self.state.members if (p.id, m) not in self.solutions]
        self.state.tick("solve", total=len(todo))
        await asyncio.gather(*(self.solve_one(p, m) for p, m in todo))

    async def verify_missing(self, problems: list[steps.ProblemRow]) -> None:
        """The `verify` stage: every missing verdict on the problems' solutions at once."""
        await asyncio.gather(
            *(self.verify_solution(p, s) for p in problems for s in self.problem_solutions(p.id))
        )
