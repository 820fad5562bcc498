"""The isolated-evolution control (`mode: isolated`), read top to bottom, matched to AGORA's
per-member budget:

  generate  each member writes `problems_per_step` problems of its own at its own d_t^i
            (`problem_source: seed_pool`: every member solves the step's pool problems)
  solve     each member solves only its own problems, `self_consistency_samples` times
  judge     a sample is correct when its answer is the strict majority of the member's samples;
            the first majority sample per (problem, member) goes to the buffer (at commit)

No verification by peers, no votes, no ratings, no elite history, no audit probes. d_{t+1}^i is
Eq. 1 on the member's own V_t^i (`member_steps`, computed at commit).
"""

from __future__ import annotations

import asyncio
from typing import Any

from agora_cli import steps
from agora_cli.audit import GradeMany
from agora_cli.commit import StepWork
from agora_cli.config import Config
from agora_cli.protocol import generate as gen
from agora_cli.protocol.answers import answers_match
from agora_cli.protocol.difficulty import next_target
from agora_cli.protocol.isolated import self_consistency
from agora_cli.protocol.majority import strict_majority
from agora_cli.protocol.types import EliteExample
from agora_cli.step.base import Step, StepState, step_rng
from agora_cli.step.problems import Generation, pool_plan
from agora_cli.store import Store


def member_plan(cfg: Config, store: Store, t: int, d_t: float) -> dict[str, dict[str, float]]:
    """Each member's own d_t^i (its d_{t+1}^i of step t-1, else the shared d_t of a run without
    per-member rows) and V_target^i (the outer loop on its own V^i history)."""
    last = steps.member_steps(store, t - 1)
    return {
        m.name: {
            "d": last[m.name].next_difficulty if m.name in last else d_t,
            "v_target": next_target(
                steps.member_v_history(store, m.name), cfg.protocol.difficulty, cfg.protocol.v_target
            ),
        }
        for m in cfg.members
    }


class IsolatedStep(Step):
    """The open isolated step: each member's own problems and self-consistency samples."""

    @staticmethod
    def plan(cfg: Config, store: Store, t: int, d_t: float) -> tuple[dict[str, Any], float]:
        """Every member owns `problems_per_step` slots, written and solved by itself alone;
        each member's own d_t^i. The step's stored d_t is the members' mean, for the views only."""
        if cfg.protocol.problem_source == "seed_pool":
            info = pool_plan(cfg, t)
        else:
            rng = step_rng(cfg, t, "plan")
            seed_pool = gen.load_seed_pool(cfg.protocol.seed_pool)
            info = {
                "generators": [m.name for m in cfg.members],
                "slots": [
                    {
                        "author": m.name,
                        "owner": m.name,
                        "seed_ids": [
                            s["id"] for s in gen.sample_seeds(seed_pool, cfg.protocol.seed_examples, rng)
                        ],
                    }
                    for m in cfg.members
                    for _ in range(cfg.protocol.problems_per_step)
                ],
            }
        info["members"] = member_plan(cfg, store, t, d_t)
        return info, sum(m["d"] for m in info["members"].values()) / len(info["members"])

    def __init__(self, state: StepState) -> None:
        self.state = state
        self.generation = Generation(state)
        self.samples: dict[tuple[int, str], list[steps.SolutionRow]] = {}
        for r in steps.step_solutions(state.store, state.t):
            if r.error is None and r.sample:
                self.samples.setdefault((r.problem_id, r.member), []).append(r)

    def solvers(self, p: steps.ProblemRow) -> list[str]:
        """Who solves problem p: the owner of its slot (the member that wrote it, or whose seed
        fallback it is) when the slot has one; else (seed-pool problems) every member."""
        st = self.state
        slots = st.open.info.get("slots") or []
        if p.slot is not None and 0 <= p.slot < len(slots):
            owner = slots[p.slot].get("owner")
            if owner in st.members:
                return [owner]
        return st.members

    async def sample(self, p: steps.ProblemRow, member: str) -> None:
        """n self-consistency samples of p by one member, stored together."""
        st = self.state
        drafts, _ = await self_consistency(st.ctx, member, p.text, st.cfg.protocol.self_consistency_samples)
        version = st.versions().get(member, 0)
        with st.store.transaction():
            for i, d in enumerate(drafts, 1):
                steps.upsert_solution(
                    st.store,
                    st.t,
                    p.id,
                    member,
                    i,
                    d.text,
                    d.answer,
                    version,
                    [],
                    d.prompt_tokens,
                    d.completion_tokens,
                    d.latency_s,
                    d.error,
                )
        st.failures += sum(1 for d in drafts if d.error)
        self.samples[(p.id, member)] = steps.member_samples(st.store, p.id, member)
        st.tick("solve", done=1)

    async def problem_flow(self, p: steps.ProblemRow) -> None:
        """p's solvers' missing sample sets (a set is asked again until all n are answered)."""
        n = self.state.cfg.protocol.self_consistency_samples
        todo = [m for m in self.solvers(p) if len(self.samples.get((p.id, m), [])) < n]
        self.state.tick("solve", total=len(todo))
        await asyncio.gather(*(self.sample(p, m) for m in todo))

    async def pipeline(self) -> None:
        st = self.state
        async with asyncio.TaskGroup() as tg:

            def spawn(p: steps.ProblemRow) -> None:
                tg.create_task(self.problem_flow(p))

            for p in steps.step_problems(st.store, st.t):
                spawn(p)
            tg.create_task(self.generation.generate(on_problem=spawn))

    async def stage(self, name: str) -> None:
        st = self.state
        if name == "generate":
            await self.generation.generate()
        elif name == "solve":
            await asyncio.gather(*(self.problem_flow(p) for p in steps.step_problems(st.store, st.t)))
        elif name not in ("verify", "vote"):  # no peer verification, no votes: nothing to ask
            raise ValueError(name)

    async def select_elite(self, k: int) -> list[EliteExample]:
        return []  # no votes, no peer-assessed quality: no elite history

    def correct(self) -> dict[int, bool]:
        """A sample is correct when its answer is the strict majority of its member's samples."""
        out: dict[int, bool] = {}
        for rows in self.samples.values():
            # Strict majority of the n samples asked for; failed samples count against.
            n = max(len(rows), self.state.cfg.protocol.self_consistency_samples)
            majority = strict_majority([r.answer for r in rows], n)
            for r in rows:
                out[r.id] = (
                    majority is not None and r.answer is not None and answers_match(r.answer, majority)
                )
        return out

    async def work(self, grade: GradeMany | None) -> StepWork:
        st = self.state
        return StepWork(st.open, st.members, True, self.correct(), st.failures)
