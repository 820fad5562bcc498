"""An AGORA step (the protocol's steps 1-5, docs/protocol.md), read top to bottom:

  generate  the Q-Group writes the step's problems at d_t            (`problems.Generation`)
  solve     every member solves every problem with H_{t-1} shown     (`solving.Consensus`)
  verify    every other member verifies each solution (unanimity)
  vote      every member votes on each pair of correct solutions of a problem
  elite     H_t = Top_k(H_{t-1} ∪ I_t), winners explain themselves

The step flows per problem, not per phase: as soon as a problem is stored its solves start; as
soon as a solution is in, its verifications start; as soon as a problem's verdicts are in, its
votes start. With `protocol.audit_probes` on, the step's probes (`probes.Probes`) flow beside
the problems, solved and verified but never voted on. The effects (ratings, buffer, d_{t+1}) are
computed at commit from the stored work (`agora_cli.commit`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import combinations
from typing import Any

from agora_cli import steps
from agora_cli.audit import GradeMany
from agora_cli.commit import StepWork
from agora_cli.config import Config
from agora_cli.protocol import generate as gen
from agora_cli.protocol.select import elite_score, explain, update_elite
from agora_cli.protocol.types import EliteExample
from agora_cli.protocol.vote import make_env, vote
from agora_cli.step import probes
from agora_cli.step.base import Step, StepState, step_rng
from agora_cli.step.problems import Generation, pool_plan
from agora_cli.step.solving import Consensus
from agora_cli.store import Store


class AgoraStep(Step):
    """The open AGORA step: its stored work, and the coroutines that fill in what is missing."""

    @staticmethod
    def plan(cfg: Config, store: Store, t: int, d_t: float) -> tuple[dict[str, Any], float]:
        """The Q-Group (a random subset with `random_qgen`) and each slot's author and seed
        examples, round robin over the generators; then the step's audit probes."""
        if cfg.protocol.problem_source == "seed_pool":
            info = pool_plan(cfg, t)
        else:
            rng = step_rng(cfg, t, "plan")
            seed_pool = gen.load_seed_pool(cfg.protocol.seed_pool)
            # The Q-Group has its own stream: with `random_qgen` off no member is drawn, and the
            # seed examples must not move because of that.
            members = [m.name for m in cfg.members]
            generators = gen.choose_generators(members, cfg, step_rng(cfg, t, "qgroup"))
            slots = []
            for i in range(cfg.protocol.problems_per_step):
                examples = gen.sample_seeds(seed_pool, cfg.protocol.seed_examples, rng)
                slots.append(
                    {"author": generators[i % len(generators)], "seed_ids": [s["id"] for s in examples]}
                )
            info = {"generators": generators, "slots": slots}
        if cfg.protocol.audit_probes:
            info["probes"] = probes.plan(
                cfg, store, t, {i for slot in info["slots"] for i in slot["seed_ids"]}
            )
        return info, d_t

    def __init__(self, state: StepState) -> None:
        self.state = state
        self.generation = Generation(state)
        self.consensus = Consensus(state)
        self.probes = probes.Probes(state, self.consensus)
        self.votes = {(r.solution_a, r.solution_b, r.voter) for r in steps.step_votes(state.store, state.t)}

    # -- 4. quality recognition ----------------------------------------------------------------

    async def vote_one(
        self, p: steps.ProblemRow, a: steps.SolutionRow, b: steps.SolutionRow, voter: str
    ) -> None:
        st = self.state
        v = await vote(st.ctx, voter, p.text, a.text, b.text)
        st.tick("vote", done=1)
        if v.error:
            st.failures += 1
            return
        winner = {"a": a.id, "b": b.id}.get(v.winner or "")
        steps.insert_vote(st.store, st.t, p.id, a.id, b.id, voter, winner, v.raw, v.latency_s)
        self.votes.add((a.id, b.id, voter))

    async def vote_problem(self, p: steps.ProblemRow) -> None:
        """Every member votes on every pair of p's consensus-passed solutions (missing votes)."""
        st = self.state
        if not st.cfg.ablations.quality_vote:
            return
        correct = [s for s in self.consensus.problem_solutions(p.id) if self.consensus.is_correct(s)]
        todo = [
            (a, b, voter)
            for a, b in combinations(correct, 2)
            for voter in st.members
            if (a.id, b.id, voter) not in self.votes
        ]
        st.tick("vote", total=len(todo))
        await asyncio.gather(*(self.vote_one(p, a, b, voter) for a, b, voter in todo))

    # -- the per-problem pipeline --------------------------------------------------------------

    async def problem_flow(self, p: steps.ProblemRow) -> None:
        """solve (all members) -> verify each solution as it lands -> vote among correct ones."""
        await self.consensus.solve_and_verify(p)
        await self.vote_problem(p)

    async def pipeline(self) -> None:
        st = self.state
        async with asyncio.TaskGroup() as tg:

            def spawn(p: steps.ProblemRow) -> None:
                tg.create_task(self.problem_flow(p))

            def spawn_probe(p: steps.ProblemRow) -> None:
                tg.create_task(self.probes.flow(p))

            for p in steps.step_problems(st.store, st.t):
                spawn(p)
            for p in self.probes.stored():
                spawn_probe(p)
            self.probes.fill(on_problem=spawn_probe)
            tg.create_task(self.generation.generate(on_problem=spawn))

    async def stage(self, name: str) -> None:
        st = self.state
        problems = steps.step_problems(st.store, st.t)
        if name == "generate":
            self.probes.fill(None)
            await self.generation.generate()
            return
        with_probes = problems + self.probes.fill(None)  # probes are solved and verified, never voted on
        if name == "solve":
            await self.consensus.solve_missing(with_probes)
        elif name == "verify":
            await self.consensus.verify_missing(with_probes)
        elif name == "vote":
            await asyncio.gather(*(self.vote_problem(p) for p in problems))
        else:
            raise ValueError(name)

    # -- 5. selection: elite candidates and self-explanations ----------------------------------

    def scores(self) -> dict[int, float]:
        """Peer-assessed quality of each voted solution of this step: `elite_score` of the votes
        it won out of the votes cast on its comparisons, counted on one comparison's votes."""
        won: Counter[int] = Counter()
        cast: Counter[int] = Counter()
        pairs: dict[int, set[tuple[int, int]]] = {}
        for r in steps.step_votes(self.state.store, self.state.t):
            cast[r.solution_a] += 1
            cast[r.solution_b] += 1
            pair = (min(r.solution_a, r.solution_b), max(r.solution_a, r.solution_b))  # either order shown
            for sid in pair:
                pairs.setdefault(sid, set()).add(pair)
            if r.winner is not None:
                won[r.winner] += 1
        # counted on one comparison's votes, so a problem many members solved is not favoured
        return {sid: elite_score(won[sid], n, len(pairs[sid])) for sid, n in cast.items() if n}

    def unvoted_scores(self) -> dict[int, float]:
        """`quality_vote` off: no votes to rank by, yet H_t is still filled. Each problem's
        candidate is its consensus-passed solution whose author has the best TrueSkill mu (lowest
        id on ties), scored by `elite_score` of its valid verdicts out of its verdicts."""
        st, c = self.state, self.consensus
        ratings = steps.current_ratings(st.store, make_env(), st.members)
        out: dict[int, float] = {}
        for p in steps.step_problems(st.store, st.t):
            passed = [s for s in c.problem_solutions(p.id) if c.is_correct(s)]
            if not passed:
                continue
            best = max(passed, key=lambda s: (ratings[s.member].mu, -s.id))
            got = c.verdicts_of(best)
            out[best.id] = elite_score(sum(int(ok) for ok in got.values()), len(got))
        return out

    async def select_elite(self, k: int) -> list[EliteExample]:
        """H_t = Top_k(H_{t-1} ∪ I_t); I_t is each problem's best-voted correct solution.

        Winners that enter H_t write a self-explanation (stored as open-step work, reused on
        resume); with `explanation` off the examples carry none.
        """
        st = self.state
        scores = self.scores() if st.cfg.ablations.quality_vote else self.unvoted_scores()
        candidates = []
        for p in steps.step_problems(st.store, st.t):
            ranked = sorted(
                (s for s in self.consensus.problem_solutions(p.id) if s.id in scores),
                key=lambda s: (-scores[s.id], s.id),
            )
            if ranked:
                best = ranked[0]
                candidates.append(
                    EliteExample(
                        problem=p.text,
                        solution=best.text,
                        explanation=None,
                        member=best.member,
                        solution_id=best.id,
                        score=scores[best.id],
                    )
                )
        elite = update_elite(st.elite, candidates, k)
        new = [e for e in elite if e.explanation is None]
        if st.cfg.ablations.explanation and st.cfg.ablations.elite_icl:
            todo = [e for e in new if steps.explanation_of(st.store, e.solution_id) is None]
            st.tick("explain", total=len(todo))

            async def one(e: EliteExample) -> None:
                text = await explain(st.ctx, e.member, e.problem, e.solution)
                st.tick("explain", done=1)
                if text:
                    steps.insert_explanation(st.store, st.t, e.solution_id, e.member, text)

            await asyncio.gather(*(one(e) for e in todo))
            for e in new:
                e.explanation = steps.explanation_of(st.store, e.solution_id)
        return elite

    async def work(self, grade: GradeMany | None) -> StepWork:
        """Each solution's unanimous-consensus outcome, and the graded audit of the probes."""
        st = self.state
        correct = {s.id: self.consensus.is_correct(s) for s in steps.step_solutions(st.store, st.t)}
        work = StepWork(st.open, st.members, False, correct, st.failures)
        work.audit_solutions, work.audit = await self.probes.audit(grade)
        return work
