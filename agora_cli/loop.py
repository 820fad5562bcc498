"""The AGORA loop: one step t of the protocol (docs/protocol.md), repeated, resumable at any point.

A step flows per problem, not per phase: as soon as a generator's problem is stored its solves
start; as soon as one solution is in, every other member verifies it; as soon as a problem's
verdicts are in, the pairwise votes among its correct solutions start. Concurrency is bounded by
the client pool's per-member limits, so the step's wall time approaches its critical path rather
than the sum of its requests (both are recorded: `steps.wall_s`, `steps.request_s`).

Every completed request is written at once (open-step work, see `agora_cli.store`); a resumed step
issues only the requests still missing. The step's effects are computed from the stored work and
written by `steps.commit_effects` in one transaction:

  TrueSkill updates from the step's votes in vote-id order  (protocol step 4)
  solutions.correct from unanimous consensus                 (step 3)
  buffer rows by Eq. 4, the elite history H_t                (step 5)
  d_{t+1} by Eq. 1 and F_t by Eq. 2 (FEM)                    (steps 1, 7)

With `protocol.audit_probes` on, the step also solves and verifies a few gold-labelled seed-pool
problems (`agora_cli.audit`); they never vote and none of the effects above reads them. At commit
their solutions are graded against gold into the consensus audit's counts.

`mode: isolated` is the paper's isolated-evolution baseline, matched to AGORA's per-member
budget: each member writes `problems_per_step` problems of its own at its own d_t^i and solves only
those (with `problem_source: seed_pool`, every member solves the step's pool problems), each
`self_consistency_samples` times; a sample is correct when its answer is the strict majority of the
member's samples, and the first majority sample per (problem, member) goes to the buffer. d_{t+1}^i
is Eq. 1 on the member's own V_t^i (`member_steps`). No verification by peers, no votes, no
ratings, no elite history.

`problem_source: seed_pool` replaces generation: slot i of step t takes `pool_pick(cfg, t, i)`, a
function of (seed, step, slot) alone, so both arms solve the same problems.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from agora_cli import steps as db
from agora_cli.audit import GradeMany, ProbeSolution, plan_probes, tally
from agora_cli.client import ClientPool
from agora_cli.commit import StepWork, compute_effects, emit_committed
from agora_cli.config import Config
from agora_cli.datasets import calibration_name
from agora_cli.evaluation.grading import Grader
from agora_cli.events import EventBus
from agora_cli.protocol import generate as gen
from agora_cli.protocol.answers import answers_match
from agora_cli.protocol.difficulty import next_target
from agora_cli.protocol.isolated import self_consistency
from agora_cli.protocol.majority import strict_majority
from agora_cli.protocol.prompts import Prompts
from agora_cli.protocol.select import elite_score, explain, update_elite
from agora_cli.protocol.solve import solve
from agora_cli.protocol.surprise import anchor_step, elite_shots, step_strategy
from agora_cli.protocol.types import Ctx, EliteExample, GeneratedProblem, Verdict
from agora_cli.protocol.verify import consensus, verify
from agora_cli.protocol.vote import make_env, vote
from agora_cli.store import Store

Row = dict[str, Any]
AnchorFn = Callable[[ClientPool, Config, Prompts, int, list[str]], Any]  # async run_anchor


def anchor_due(cfg: Config, step: int) -> bool:
    """External anchoring (protocol step 7) after every `anchor_every`-th step."""
    return cfg.ablations.external_anchor and anchor_step(step, cfg.protocol.anchor_every)


def anchor_plan(members: list[str], last: dict[str, Row], live: dict[str, int]) -> list[str]:
    """The members to score at an anchor step: those never scored, scored on nothing, or whose
    live adapter changed since their last anchor (the prompt is bare, so the adapter is all that
    the anchor evaluates). Another score of an unchanged member would only be sampling noise, and
    Eq. 2 would react to it; the periodic schedule (`anchor_every`) stays the upper bound."""
    return [
        m
        for m in members
        if m not in last or last[m]["n"] == 0 or last[m]["adapter_version"] != live.get(m, 0)
    ]


def _kept(problem: Row) -> bool:
    return problem["status"] == "ok"


@dataclass
class StepRun:
    """The open step t: its stored work, and the coroutines that fill in what is missing."""

    cfg: Config
    store: Store
    ctx: Ctx
    bus: EventBus
    open: db.OpenStep
    versions: Callable[[], dict[str, int]] = dict
    elite: list[EliteExample] = field(default_factory=list)  # H_{t-1} as shown to solvers
    failures: int = 0
    progress: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = [m.name for m in self.cfg.members]
        self.t = self.open.step
        self.solutions: dict[tuple[int, str], Row] = {}
        self.samples: dict[tuple[int, str], list[Row]] = {}
        for r in [*db.step_solutions(self.store, self.t), *db.probe_solutions(self.store, self.t)]:
            if r["error"] is None:
                if r["sample"]:
                    self.samples.setdefault((r["problem_id"], r["member"]), []).append(dict(r))
                else:
                    self.solutions[(r["problem_id"], r["member"])] = dict(r)
        self.verdicts = {(r["solution_id"], r["verifier"]): r for r in db.step_verdicts(self.store, self.t)}
        self.votes = {
            (r["solution_a"], r["solution_b"], r["voter"]) for r in db.step_votes(self.store, self.t)
        }
        self.seeds = {s["id"]: s for s in gen.load_seed_pool(self.cfg.protocol.seed_pool)}
        self.isolated = self.cfg.protocol.mode == "isolated"

    # -- progress ---------------------------------------------------------------------------

    def _tick(self, phase: str, total: int = 0, done: int = 0) -> None:
        p = self.progress.setdefault(phase, [0, 0])
        p[0] += done
        p[1] += total
        self.bus.emit("phase_progress", phase=phase, step=self.t, done=p[0], total=p[1])

    # -- 1. challenge generation ---------------------------------------------------------------

    def slot_rows(self) -> list[list[Row]]:
        """The step's stored problems (kept and dropped) per generation slot, oldest first.

        Rows stored before slots were recorded (slot NULL, a step opened by an older agora) go to
        a slot of their author that has none yet, seed problems to a slot with nothing kept."""
        slots = self.open.info["slots"]
        out: list[list[Row]] = [[] for _ in slots]
        legacy = []
        for r in db.step_problems(self.store, self.t, only_ok=False):
            if r["slot"] is not None and 0 <= r["slot"] < len(slots):
                out[r["slot"]].append(dict(r))
            else:
                legacy.append(dict(r))
        for r in legacy:
            if r["author"] == "seed":
                free = [i for i in range(len(slots)) if not any(_kept(x) for x in out[i])]
            else:
                free = [i for i, s in enumerate(slots) if s["author"] == r["author"] and not out[i]]
            if free:
                out[free[0]].append(r)
        return out

    def slot_authors(self, slot: dict, attempt: int) -> str:
        """Who writes attempt `attempt` (0 = the first) of a slot's problem: its planned author,
        then the step's other generators, then the other members, in turn (a dropped problem is
        asked of another member where there is one). An isolated member's slot is always asked
        of its owner: it solves only what it wrote."""
        if slot.get("owner"):
            return str(slot["owner"])
        generators = self.open.info.get("generators") or []
        first = [slot["author"], *(g for g in generators if g != slot["author"])]
        order = first + [m for m in self.members if m not in first]
        return order[attempt % len(order)]

    def difficulty_of(self, slot: dict) -> float:
        """The d_t a slot's problem is written at: its isolated owner's own d_t^i, else the
        step's shared d_t."""
        own = (self.open.info.get("members") or {}).get(slot.get("owner") or "")
        return float(own["d"]) if own else self.open.difficulty

    def solvers(self, p: Row) -> list[str]:
        """Who solves problem p: in isolated mode the owner of its slot (the member that wrote
        it, or whose seed fallback it is) when the slot has one; else every member."""
        slots = self.open.info.get("slots") or []
        if self.isolated and p["slot"] is not None and 0 <= p["slot"] < len(slots):
            owner = slots[p["slot"]].get("owner")
            if owner in self.members:
                return [owner]
        return self.members

    async def ask(self, slot: dict, author: str) -> GeneratedProblem | None:
        """One generation request for a slot; None when it failed (nothing is stored then, and
        the slot is asked again in the step's next pass)."""
        seeds = [self.seeds[s] for s in slot["seed_ids"] if s in self.seeds]
        (p,) = await gen.generate_problems(self.ctx, author, self.difficulty_of(slot), seeds, 1)
        self._tick("generate", done=1)
        if p.dropped == "request_failed":
            self.failures += 1
            return None
        return p

    def store_problem(
        self, i: int, slot: dict, p: GeneratedProblem, on_problem: Callable[[Row], None] | None
    ) -> Row:
        """Store slot i's reply (deduplicated against the run's problems, kept or dropped) and
        hand a kept problem to `on_problem` at once, so its solves start."""
        gen.dedupe([p], db.existing_problem_texts(self.store))
        pid = db.insert_problem(
            self.store,
            self.t,
            p.author,
            p.text or "",
            self.difficulty_of(slot),
            slot["seed_ids"],
            p.raw,
            p.dropped,
            slot=i,
        )
        row = dict(self.store.one("SELECT * FROM problems WHERE id = ?", (pid,)))
        if p.dropped:
            self.bus.emit("problem_dropped", step=self.t, reason=p.dropped, author=p.author, slot=i)
        elif on_problem is not None:
            on_problem(row)
        return row

    async def generate(self, on_problem: Callable[[Row], None] | None = None) -> None:
        """Fill every generation slot of the step (protocol step 1).

        First attempts are stored as they arrive, so their solves start at once. Then, round
        after round, every slot without a kept problem is asked again of its next author
        (`slot_authors`), and each round's replies are stored in slot order, so which reply is
        a duplicate of which does not depend on arrival order. A slot with 1 + `problem_retries`
        stored attempts and nothing kept takes a seed-pool problem (`seed_fallback`)."""
        slots, rows = self.open.info["slots"], self.slot_rows()
        retries, failed = self.cfg.protocol.problem_retries, set()
        if self.open.info.get("source") == "seed_pool":
            for i, slot in enumerate(slots):
                if not rows[i]:
                    self.pool_fill(i, slot, on_problem)
            return

        def empty() -> list[int]:
            return [i for i, r in enumerate(rows) if not any(_kept(x) for x in r)]

        self._tick("generate", total=len(empty()))

        async def first(i: int) -> None:
            p = await self.ask(slots[i], self.slot_authors(slots[i], 0))
            if p is None:
                failed.add(i)
            else:
                rows[i].append(self.store_problem(i, slots[i], p, on_problem))

        await asyncio.gather(*(first(i) for i in empty() if not rows[i]))
        while todo := [i for i in empty() if i not in failed and len(rows[i]) <= retries]:
            if any(rows[i] for i in todo):
                self._tick("generate", total=sum(1 for i in todo if rows[i]))
            replies = await asyncio.gather(
                *(self.ask(slots[i], self.slot_authors(slots[i], len(rows[i]))) for i in todo)
            )
            for i, p in zip(todo, replies, strict=True):
                if p is None:
                    failed.add(i)
                else:
                    rows[i].append(self.store_problem(i, slots[i], p, on_problem))
        for i in empty():
            if len(rows[i]) > retries:
                self.seed_fill(i, on_problem)

    def pool_fill(self, i: int, slot: dict, on_problem: Callable[[Row], None] | None) -> None:
        """`problem_source: seed_pool`: store slot i's planned pool problem (author 'seed')."""
        seed = self.seeds.get(slot["seed_ids"][0]) if slot["seed_ids"] else None
        if seed is None:
            return
        pid = db.insert_problem(
            self.store,
            self.t,
            "seed",
            seed["problem"],
            self.difficulty_of(slot),
            [seed["id"]],
            None,
            None,
            slot=i,
        )
        if on_problem is not None:
            on_problem(dict(self.store.one("SELECT * FROM problems WHERE id = ?", (pid,))))

    def seed_fill(self, i: int, on_problem: Callable[[Row], None] | None) -> None:
        """Slot i's generated problems were all dropped: solve a seed-pool problem (author 'seed')
        instead, so a weak Q-Group does not shrink the step (`protocol.seed_fallback`)."""
        if not self.cfg.protocol.seed_fallback:
            return
        rng = random.Random(f"{self.cfg.seed}:{self.t}:fallback:{i}")
        pool = list(self.seeds.values())
        existing = set(db.existing_problem_texts(self.store))
        pick = next((s for s in rng.sample(pool, min(len(pool), 64)) if s["problem"] not in existing), None)
        if pick is None:
            return
        pid = db.insert_problem(
            self.store,
            self.t,
            "seed",
            pick["problem"],
            self.difficulty_of(self.open.info["slots"][i]),
            [pick["id"]],
            None,
            None,
            slot=i,
        )
        self.bus.emit("seed_fallback", step=self.t, n=1, slot=i)
        if on_problem is not None:
            on_problem(dict(self.store.one("SELECT * FROM problems WHERE id = ?", (pid,))))

    def probe_fill(self, on_problem: Callable[[Row], None] | None) -> list[Row]:
        """Store the step's planned audit probes not stored yet (`agora_cli.audit`), hand each
        new one to `on_problem`, and return all the step's probe rows. A probe is a seed-pool
        problem with its gold set aside; it is solved and verified like any other problem."""
        stored = {json.loads(r["seed_ids"])[0] for r in db.step_probes(self.store, self.t)}
        for seed_id in self.open.info.get("probes") or []:
            seed = self.seeds.get(seed_id)
            if seed is None or seed_id in stored:
                continue
            pid = db.insert_probe(
                self.store, self.t, seed["problem"], self.open.difficulty, seed_id, seed["answer"]
            )
            if on_problem is not None:
                on_problem(dict(self.store.one("SELECT * FROM problems WHERE id = ?", (pid,))))
        return [dict(r) for r in db.step_probes(self.store, self.t)]

    # -- 2. solution formulation ---------------------------------------------------------------

    async def solve_one(self, p: Row, member: str) -> Row:
        # H_{t-1} as few-shot examples; solve() drops them when elite_icl is off.
        draft = await solve(self.ctx, member, p["text"], self.elite)
        version = self.versions().get(member, 0)
        sid = db.upsert_solution(
            self.store,
            self.t,
            p["id"],
            member,
            0,
            draft.text,
            draft.answer,
            version,
            [e.solution_id for e in self.elite if self.cfg.ablations.elite_icl],
            draft.prompt_tokens,
            draft.completion_tokens,
            draft.latency_s,
            draft.error,
        )
        self._tick("solve", done=1)
        row = dict(self.store.one("SELECT * FROM solutions WHERE id = ?", (sid,)))
        if draft.error:
            self.failures += 1
        else:
            self.solutions[(p["id"], member)] = row
        return row

    async def isolated_one(self, p: Row, member: str) -> None:
        """Isolated baseline: n self-consistency samples by one member, stored together."""
        n = self.cfg.protocol.self_consistency_samples
        drafts, _ = await self_consistency(self.ctx, member, p["text"], n)
        version = self.versions().get(member, 0)
        with self.store.transaction():
            for i, d in enumerate(drafts, 1):
                db.upsert_solution(
                    self.store,
                    self.t,
                    p["id"],
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
        self.failures += sum(1 for d in drafts if d.error)
        self.samples[(p["id"], member)] = [
            dict(r)
            for r in self.store.query(
                "SELECT * FROM solutions WHERE problem_id = ? AND member = ? AND sample > 0 "
                "AND error IS NULL",
                (p["id"], member),
            )
        ]
        self._tick("solve", done=1)

    # -- 3. unanimous consensus ----------------------------------------------------------------

    def verifiers_of(self, sol: Row) -> list[str]:
        return [m for m in self.members if m != sol["member"]]

    def needs_verdicts(self, sol: Row) -> bool:
        return self.cfg.ablations.valid_vote and sol["answer"] is not None

    async def verify_one(self, p: Row, sol: Row, verifier: str) -> None:
        v = await verify(self.ctx, verifier, p["text"], sol["text"])
        self._tick("verify", done=1)
        if v.error:
            self.failures += 1  # a failed request is not a judgement: asked again
            return
        db.insert_verdict(self.store, self.t, sol["id"], verifier, v.valid, v.raw, v.latency_s)
        self.verdicts[(sol["id"], verifier)] = {"valid": int(v.valid), "raw": v.raw}
        self.bus.emit("verdict", step=self.t, solution_id=sol["id"], verifier=verifier, valid=v.valid)

    async def verify_solution(self, p: Row, sol: Row) -> None:
        if not self.needs_verdicts(sol):
            return
        todo = [v for v in self.verifiers_of(sol) if (sol["id"], v) not in self.verdicts]
        self._tick("verify", total=len(todo))
        await asyncio.gather(*(self.verify_one(p, sol, v) for v in todo))

    def is_correct(self, sol: Row) -> bool:
        """Protocol step 3: correct only if every other member said valid (unanimity)."""
        if sol["error"] is not None or sol["answer"] is None:
            return False
        if not self.cfg.ablations.valid_vote:
            return True  # w/o valid_vote: every answered solution counts
        verdicts = [
            Verdict(verifier=v, valid=bool(self.verdicts[(sol["id"], v)]["valid"]), raw="")
            for v in self.verifiers_of(sol)
            if (sol["id"], v) in self.verdicts
        ]
        return len(verdicts) == len(self.verifiers_of(sol)) and consensus(verdicts)

    # -- 4. quality recognition ----------------------------------------------------------------

    def problem_solutions(self, pid: int) -> list[Row]:
        return sorted((s for (p, _), s in self.solutions.items() if p == pid), key=lambda s: s["id"])

    async def vote_one(self, p: Row, a: Row, b: Row, voter: str) -> None:
        v = await vote(self.ctx, voter, p["text"], a["text"], b["text"])
        self._tick("vote", done=1)
        if v.error:
            self.failures += 1
            return
        winner = {"a": a["id"], "b": b["id"]}.get(v.winner or "")
        db.insert_vote(self.store, self.t, p["id"], a["id"], b["id"], voter, winner, v.raw, v.latency_s)
        self.votes.add((a["id"], b["id"], voter))

    async def vote_problem(self, p: Row) -> None:
        if not self.cfg.ablations.quality_vote:
            return
        correct = [s for s in self.problem_solutions(p["id"]) if self.is_correct(s)]
        todo = [
            (a, b, voter)
            for a, b in combinations(correct, 2)
            for voter in self.members
            if (a["id"], b["id"], voter) not in self.votes
        ]
        self._tick("vote", total=len(todo))
        await asyncio.gather(*(self.vote_one(p, a, b, voter) for a, b, voter in todo))

    # -- the per-problem pipeline --------------------------------------------------------------

    async def solution_flow(self, p: Row, member: str) -> None:
        sol = self.solutions.get((p["id"], member))
        if sol is None:
            self._tick("solve", total=1)
            sol = await self.solve_one(p, member)
        if sol["error"] is None:
            await self.verify_solution(p, sol)

    async def problem_flow(self, p: Row) -> None:
        """solve (all members) -> verify each solution as it lands -> vote among correct ones.
        An audit probe stops before the votes: nothing it does may reach the ratings."""
        if self.isolated:
            n = self.cfg.protocol.self_consistency_samples
            todo = [m for m in self.solvers(p) if len(self.samples.get((p["id"], m), [])) < n]
            self._tick("solve", total=len(todo))
            await asyncio.gather(*(self.isolated_one(p, m) for m in todo))
            return
        await asyncio.gather(*(self.solution_flow(p, m) for m in self.members))
        if p["status"] != db.PROBE:
            await self.vote_problem(p)

    async def pipeline(self) -> None:
        """Everything still missing in the open step, pipelined per problem."""
        async with asyncio.TaskGroup() as tg:

            def spawn(p: Row) -> None:
                tg.create_task(self.problem_flow(p))

            for p in db.step_problems(self.store, self.t):
                spawn(dict(p))
            for p in db.step_probes(self.store, self.t):
                spawn(dict(p))
            self.probe_fill(on_problem=spawn)
            tg.create_task(self.generate(on_problem=spawn))

    # -- stage commands: one phase of the open step, all missing requests at once --------------

    async def stage(self, name: str) -> None:
        problems = [dict(p) for p in db.step_problems(self.store, self.t)]
        if name == "generate":
            self.probe_fill(None)
            await self.generate()
            return
        problems += self.probe_fill(None)  # probes are solved and verified, never voted on
        if name == "solve":
            if self.isolated:
                await asyncio.gather(*(self.problem_flow(p) for p in problems))
                return
            todo = [(p, m) for p in problems for m in self.members if (p["id"], m) not in self.solutions]
            self._tick("solve", total=len(todo))
            await asyncio.gather(*(self.solve_one(p, m) for p, m in todo))
        elif name == "verify":
            await asyncio.gather(
                *(self.verify_solution(p, s) for p in problems for s in self.problem_solutions(p["id"]))
            )
        elif name == "vote":
            await asyncio.gather(*(self.vote_problem(p) for p in problems if p["status"] != db.PROBE))
        else:
            raise ValueError(name)

    # -- 5. selection: elite candidates and self-explanations ----------------------------------

    def scores(self) -> dict[int, float]:
        """Peer-assessed quality of each voted solution of this step: `elite_score` of the votes
        it won out of the votes cast on its comparisons."""
        won: Counter[int] = Counter()
        cast: Counter[int] = Counter()
        for r in db.step_votes(self.store, self.t):
            cast[r["solution_a"]] += 1
            cast[r["solution_b"]] += 1
            if r["winner"] is not None:
                won[r["winner"]] += 1
        return {sid: elite_score(won[sid], n) for sid, n in cast.items() if n}

    def unvoted_scores(self) -> dict[int, float]:
        """`quality_vote` off: no votes to rank by, yet H_t is still filled. Each problem's
        candidate is its consensus-passed solution whose author has the best TrueSkill mu (lowest
        id on ties), scored by `elite_score` of its valid verdicts out of its verdicts."""
        ratings = db.current_ratings(self.store, make_env(), self.members)
        out: dict[int, float] = {}
        for p in db.step_problems(self.store, self.t):
            passed = [s for s in self.problem_solutions(p["id"]) if self.is_correct(s)]
            if not passed:
                continue
            best = max(passed, key=lambda s: (ratings[s["member"]].mu, -s["id"]))
            got = [
                self.verdicts[(best["id"], v)]
                for v in self.verifiers_of(best)
                if (best["id"], v) in self.verdicts
            ]
            out[best["id"]] = elite_score(sum(int(v["valid"]) for v in got), len(got))
        return out

    async def select_elite(self, k: int) -> list[EliteExample]:
        """H_t = Top_k(H_{t-1} ∪ I_t); I_t is each problem's best-voted correct solution.

        Winners that enter H_t write a self-explanation (stored as open-step work, reused on
        resume); with `explanation` off the examples carry none.
        """
        if self.isolated:
            return []
        scores = self.scores() if self.cfg.ablations.quality_vote else self.unvoted_scores()
        candidates = []
        for p in db.step_problems(self.store, self.t):
            ranked = sorted(
                (s for s in self.problem_solutions(p["id"]) if s["id"] in scores),
                key=lambda s: (-scores[s["id"]], s["id"]),
            )
            if ranked:
                best = ranked[0]
                candidates.append(
                    EliteExample(
                        problem=p["text"],
                        solution=best["text"],
                        explanation=None,
                        member=best["member"],
                        solution_id=best["id"],
                        score=scores[best["id"]],
                    )
                )
        elite = update_elite(self.elite, candidates, k)
        new = [e for e in elite if e.explanation is None]
        if self.cfg.ablations.explanation and self.cfg.ablations.elite_icl:
            todo = [e for e in new if db.explanation_of(self.store, e.solution_id) is None]
            self._tick("explain", total=len(todo))

            async def one(e: EliteExample) -> None:
                text = await explain(self.ctx, e.member, e.problem, e.solution)
                self._tick("explain", done=1)
                if text:
                    db.insert_explanation(self.store, self.t, e.solution_id, e.member, text)

            await asyncio.gather(*(one(e) for e in todo))
            for e in new:
                e.explanation = db.explanation_of(self.store, e.solution_id)
        return elite

    def work(self) -> StepWork:
        """What `commit` needs from this step besides the store, as plain data."""
        if self.isolated:
            correct = self.isolated_correct()
        else:
            correct = {s["id"]: self.is_correct(dict(s)) for s in db.step_solutions(self.store, self.t)}
        return StepWork(self.open, self.members, self.isolated, correct, self.failures)

    # -- the consensus audit ---------------------------------------------------------------------

    def probe_work(self) -> list[ProbeSolution]:
        """The step's answered-or-not probe solutions with their consensus outcome and verdicts
        (failed requests left out: they are no decision). Gold is read here and nowhere else."""
        golds = db.probe_golds(self.store, self.t)
        out = []
        for r in db.probe_solutions(self.store, self.t):
            sol = self.solutions.get((r["problem_id"], r["member"]))
            if sol is None or r["problem_id"] not in golds:
                continue
            verdicts = {
                v: bool(self.verdicts[(sol["id"], v)]["valid"])
                for v in self.verifiers_of(sol)
                if (sol["id"], v) in self.verdicts
            }
            out.append(
                ProbeSolution(
                    sol["id"], sol["answer"], golds[r["problem_id"]], self.is_correct(sol), verdicts
                )
            )
        return out

    # -- isolated-mode correctness ---------------------------------------------------------------

    def isolated_correct(self) -> dict[int, bool]:
        """A sample is correct when its answer is the strict majority of its member's samples."""
        out: dict[int, bool] = {}
        for rows in self.samples.values():
            # Strict majority of the n samples asked for; failed samples count against.
            n = max(len(rows), self.cfg.protocol.self_consistency_samples)
            majority = strict_majority([r["answer"] for r in rows], n)
            for r in rows:
                out[r["id"]] = (
                    majority is not None and r["answer"] is not None and answers_match(r["answer"], majority)
                )
        return out


def pool_order(seed: int, pool: list[dict]) -> list[str]:
    """The seed pool's ids in the order `problem_source: seed_pool` solves them: one shuffle
    seeded by the run's seed alone."""
    ids = [s["id"] for s in pool]
    random.Random(f"{seed}:problem-pool").shuffle(ids)
    return ids


def pool_pick(order: list[str], t: int, slot: int, per_step: int) -> str:
    """The pool id slot `slot` of step t solves: the (t * per_step + slot)-th of `pool_order`,
    so no item repeats before the pool is used up, whatever the mode or the models replied."""
    return order[(t * per_step + slot) % len(order)]


def plan_slots(cfg: Config, t: int) -> dict[str, Any]:
    """Who generates what in step t (Q-Group and seeds), fixed when the step opens.

    `problem_source: seed_pool`: one slot per problem, its pool item fixed here (`pool_pick`),
    no generators, in both modes. `mode: isolated` (generated): every member owns
    `problems_per_step` slots, written and solved by itself alone."""
    rng = random.Random(f"{cfg.seed}:{t}:plan")
    members = [m.name for m in cfg.members]
    pool = gen.load_seed_pool(cfg.protocol.seed_pool)
    n = cfg.protocol.problems_per_step
    if cfg.protocol.problem_source == "seed_pool":
        order = pool_order(cfg.seed, pool)
        slots = [{"author": "seed", "seed_ids": [pool_pick(order, t, i, n)]} for i in range(n)]
        return {"source": "seed_pool", "generators": [], "slots": slots}
    if cfg.protocol.mode == "isolated":
        slots = [
            {
                "author": m,
                "owner": m,
                "seed_ids": [s["id"] for s in gen.sample_seeds(pool, cfg.protocol.seed_examples, rng)],
            }
            for m in members
            for _ in range(n)
        ]
        return {"generators": members, "slots": slots}
    generators = gen.choose_generators(members, cfg, rng)
    slots = []
    for i in range(n):
        author = generators[i % len(generators)]
        seeds = gen.sample_seeds(pool, cfg.protocol.seed_examples, rng)
        slots.append({"author": author, "seed_ids": [s["id"] for s in seeds]})
    return {"generators": generators, "slots": slots}


def member_plan(cfg: Config, store: Store, t: int, d_t: float) -> dict[str, dict[str, float]]:
    """Isolated mode: each member's own d_t^i (its d_{t+1}^i of step t-1, else the shared d_t
    of a run without per-member rows) and V_target^i (the outer loop on its own V^i history)."""
    last = db.member_steps(store, t - 1)
    return {
        m.name: {
            "d": last[m.name].next_difficulty if m.name in last else d_t,
            "v_target": next_target(db.member_v_history(store, m.name), cfg.protocol.difficulty),
        }
        for m in cfg.members
    }


def load_elite(store: Store) -> list[EliteExample]:
    return db.elite_examples(store)


def begin_step(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    versions: Callable[[], dict[str, int]] = dict,
) -> StepRun:
    """Open (or reopen) step t = last committed + 1, with state read from committed rows."""
    t = db.open_step_number(store)
    history = db.v_history(store)
    last = store.one("SELECT next_difficulty FROM steps WHERE step = ?", (t - 1,))
    d_t = last["next_difficulty"] if last else cfg.protocol.difficulty.d0
    strategy = step_strategy(cfg, db.anchor_history(store))
    plan = plan_slots(cfg, t)
    if cfg.protocol.mode == "isolated":
        plan["members"] = member_plan(cfg, store, t, d_t)
        # steps.difficulty of an isolated step is the members' mean d_t^i, for the views only.
        d_t = sum(m["d"] for m in plan["members"].values()) / len(plan["members"])
    if cfg.protocol.audit_probes and cfg.protocol.mode == "agora":
        # Drawn on their own seeded stream, so the step's other draws are those of a run
        # without the audit; never a seed shown this step, never an earlier probe, never a
        # pool item already solved as a problem (so seed_pool problems do not depend on probes).
        shown = {s for slot in plan["slots"] for s in slot["seed_ids"]}
        plan["probes"] = plan_probes(
            gen.load_seed_pool(cfg.protocol.seed_pool),
            cfg.protocol.audit_probes,
            random.Random(f"{cfg.seed}:{t}:probes"),
            shown | db.probe_seed_ids(store) | db.pool_problem_ids(store),
        )
    opened = db.open_step(store, t, d_t, strategy, next_target(history, cfg.protocol.difficulty), plan)
    ctx = Ctx(cfg=cfg, pool=pool, prompts=prompts, rng=random.Random(f"{cfg.seed}:{t}"), bus=bus)
    k = elite_shots(opened.strategy, cfg.protocol)  # type: ignore[arg-type]
    run = StepRun(cfg, store, ctx, bus, opened, versions, load_elite(store)[:k])
    return run


async def audit_probes(
    cfg: Config, probes: list[ProbeSolution], grade: GradeMany | None
) -> tuple[dict[int, tuple[bool, bool]], dict]:
    """Grade the step's probe solutions (off the event loop) and tally the audit:
    ({solution id: (truth, approved)}, {'@consensus' or verifier: Counts})."""
    if not probes:
        return {}, {}
    loop = asyncio.get_running_loop()
    own = None
    if grade is None:
        own = Grader(1, cfg.evaluation.grade_timeout_s)
        grade = own.grade_many
    try:
        truth, counts = await loop.run_in_executor(None, tally, probes, grade)
    finally:
        if own is not None:
            await loop.run_in_executor(None, own.close)
    return {p.solution_id: (truth[p.solution_id], p.approved) for p in probes}, counts


def busy_s(pool: ClientPool) -> float:
    return sum(u.busy_s for u in pool.usage.values())


async def run_step(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    *,
    versions: Callable[[], dict[str, int]] = dict,
    anchor: AnchorFn | None = None,
    grade: GradeMany | None = None,
) -> db.Effects:
    """Run (or finish) the open step and commit it. Returns what was committed.

    `grade` grades the audit probes' answers against gold (a `Grader`'s `grade_many`); without
    one, a one-worker grader is started for the commit when the step has probes."""
    t0, busy0 = time.perf_counter(), busy_s(pool)
    run = begin_step(cfg, store, pool, prompts, bus, versions)
    t = run.t
    bus.emit(
        "step_started",
        step=t,
        d=run.open.difficulty,
        v_target=run.open.v_target,
        strategy=run.open.strategy,
        generators=run.open.info.get("generators"),
    )
    anchors = db.step_anchors(store, t)

    async def anchor_task() -> None:
        nonlocal anchors
        if anchor is None or anchors or not anchor_due(cfg, t):
            return
        # the held-out dev split
        bench, live = calibration_name(cfg.evaluation.calibration), versions()
        last = db.last_anchors(store, bench, t)
        todo = anchor_plan(run.members, last, live)
        scores = await anchor(pool, cfg, prompts, t, todo) if todo else {}
        reused = {m: last[m] for m in run.members if m not in todo}
        with store.transaction():
            for member, (score, n) in scores.items():
                db.insert_anchor(store, t, member, bench, score, n, live.get(member, 0))
            for member, r in reused.items():
                source = r["step"] if r["reused_from"] is None else r["reused_from"]
                db.insert_anchor(
                    store, t, member, bench, r["score"], r["n"], r["adapter_version"], reused_from=source
                )
        for member, (score, n) in scores.items():
            bus.emit("validation_score", step=t, member=member, benchmark=bench, score=score, n=n)
        for member, r in reused.items():
            bus.emit(
                "validation_score",
                step=t,
                member=member,
                benchmark=bench,
                score=r["score"],
                n=r["n"],
                reused=True,
            )
        anchors = db.step_anchors(store, t)

    await asyncio.gather(run.pipeline(), anchor_task())
    if run.failures:
        # One more pass asks only what is still missing (failed requests are never stored).
        run.failures = 0
        await run.pipeline()
        if run.failures and pool.unreachable:
            # A member is still down after retries and a second pass: committing now would seal
            # the step with its work missing (V_t, ratings and the buffer all skewed). Stop
            # instead; the stored work is kept and a re-run resumes the step.
            raise next(iter(pool.unreachable.values()))
    elite = await run.select_elite(elite_shots(run.open.strategy, cfg.protocol))  # type: ignore[arg-type]
    work = run.work()
    work.audit_solutions, work.audit = await audit_probes(cfg, run.probe_work(), grade)
    bus.emit("phase_started", phase="commit", step=t, n=1)
    # Eq. 2 sees a step's anchors only when some member was scored anew (real changes only).
    fx = compute_effects(
        cfg, store, work, elite, db.rescored_anchors(store, t), time.perf_counter() - t0, busy_s(pool) - busy0
    )
    db.commit_effects(store, fx)
    bus.emit("phase_finished", phase="commit", step=t, n=1)
    emit_committed(cfg, store, bus, fx, run.open.difficulty, versions())
    return fx
