"""Protocol step 1 as every variant shares it: a step's generation slots, and its problems stored.

A step is planned as slots, one problem each, fixed when it opens (`steps.info["slots"]`): the
slot's planned author and the seed-pool examples it is shown. `generate` fills every slot without
a kept problem (asking another member after a dropped reply, then a seed-pool problem);
`problem_source: seed_pool` replaces generation: slot i of step t takes `pool_pick(...)`, a
function of (seed, step, slot) alone, so both arms of a comparison solve the same problems.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from agora_cli import steps
from agora_cli.config import Config
from agora_cli.protocol import generate as gen
from agora_cli.protocol.types import GeneratedProblem
from agora_cli.step.base import OnProblem, StepState, step_rng


def pool_order(seed: int, seed_pool: list[dict]) -> list[str]:
    """The seed pool's ids in the order `problem_source: seed_pool` solves them: one shuffle
    seeded by the run's seed alone."""
    ids = [item["id"] for item in seed_pool]
    random.Random(f"{seed}:problem-pool").shuffle(ids)
    return ids


def pool_pick(order: list[str], t: int, slot: int, per_step: int) -> str:
    """The pool id slot `slot` of step t solves: the (t * per_step + slot)-th of `pool_order`,
    so no item repeats before the pool is used up, whatever the mode or the models replied."""
    return order[(t * per_step + slot) % len(order)]


def pool_plan(cfg: Config, t: int) -> dict[str, Any]:
    """`problem_source: seed_pool`: one slot per problem, its pool item fixed here, no
    generators (the same in every variant)."""
    n = cfg.protocol.problems_per_step
    order = pool_order(cfg.seed, gen.load_seed_pool(cfg.protocol.seed_pool))
    slots = [{"author": "seed", "seed_ids": [pool_pick(order, t, i, n)]} for i in range(n)]
    return {"source": "seed_pool", "generators": [], "slots": slots}


class Generation:
    """The step's generation slots and the problems stored for them."""

    def __init__(self, state: StepState) -> None:
        self.state = state

    def slot_rows(self) -> list[list[steps.ProblemRow]]:
        """The step's stored problems (kept and dropped) per generation slot, oldest first.

        Rows stored before slots were recorded (slot NULL, a step opened by an older agora) go to
        a slot of their author that has none yet, seed problems to a slot with nothing kept."""
        st = self.state
        slots = st.open.info["slots"]
        out: list[list[steps.ProblemRow]] = [[] for _ in slots]
        legacy = []
        for r in steps.step_problems(st.store, st.t, only_ok=False):
            if r.slot is not None and 0 <= r.slot < len(slots):
                out[r.slot].append(r)
            else:
                legacy.append(r)
        for r in legacy:
            if r.author == "seed":
                free = [i for i in range(len(slots)) if not any(x.kept for x in out[i])]
            else:
                free = [i for i, s in enumerate(slots) if s["author"] == r.author and not out[i]]
            if free:
                out[free[0]].append(r)
        return out

    def slot_author(self, slot: dict, attempt: int) -> str:
        """Who writes attempt `attempt` (0 = the first) of a slot's problem: its planned author,
        then the step's other generators, then the other members, in turn (a dropped problem is
        asked of another member where there is one). A slot with an owner (the isolated
        control) is always asked of its owner: the owner solves only what it wrote."""
        if slot.get("owner"):
            return str(slot["owner"])
        generators = self.state.open.info.get("generators") or []
        first = [slot["author"], *(g for g in generators if g != slot["author"])]
        order = first + [m for m in self.state.members if m not in first]
        return order[attempt % len(order)]

    def difficulty_of(self, slot: dict) -> float:
        """The d_t a slot's problem is written at: its owner's own d_t^i where the slot has an
        owner planned with one (the isolated control), else the step's shared d_t."""
        own = (self.state.open.info.get("members") or {}).get(slot.get("owner") or "")
        return float(own["d"]) if own else self.state.open.difficulty

    async def ask(self, slot: dict, author: str) -> GeneratedProblem | None:
        """One generation request for a slot; None when it failed (nothing is stored then, and
        the slot is asked again in the step's next pass)."""
        st = self.state
        examples = [st.seed_pool[i] for i in slot["seed_ids"] if i in st.seed_pool]
        (p,) = await gen.generate_problems(st.ctx, author, self.difficulty_of(slot), examples, 1)
        st.tick("generate", done=1)
        if p.dropped == "request_failed":
            st.failures += 1
            return None
        return p

    def store_problem(
        self, i: int, slot: dict, p: GeneratedProblem, on_problem: OnProblem | None
    ) -> steps.ProblemRow:
        """Store slot i's reply (deduplicated against the run's problems, kept or dropped) and
        hand a kept problem to `on_problem` at once, so its solves start."""
        st = self.state
        gen.dedupe([p], steps.existing_problem_texts(st.store))
        pid = steps.insert_problem(
            st.store,
            st.t,
            p.author,
            p.text or "",
            self.difficulty_of(slot),
            slot["seed_ids"],
            p.raw,
            p.dropped,
            slot=i,
        )
        row = steps.problem(st.store, pid)
        if p.dropped:
            st.bus.emit("problem_dropped", step=st.t, reason=p.dropped, author=p.author, slot=i)
        elif on_problem is not None:
            on_problem(row)
        return row

    async def generate(self, on_problem: OnProblem | None = None) -> None:
        """Fill every generation slot of the step (protocol step 1).

        First attempts are stored as they arrive, so their solves start at once. Then, round
        after round, every slot without a kept problem is asked again of its next author
        (`slot_author`), and each round's replies are stored in slot order, so which reply is
        a duplicate of which does not depend on arrival order. A slot with 1 + `problem_retries`
        stored attempts and nothing kept takes a seed-pool problem (`seed_fallback`)."""
        st = self.state
        slots, rows = st.open.info["slots"], self.slot_rows()
        retries, failed = st.cfg.protocol.problem_retries, set()
        if st.open.info.get("source") == "seed_pool":
            for i, slot in enumerate(slots):
                if not rows[i]:
                    self.pool_fill(i, slot, on_problem)
            return

        def empty() -> list[int]:
            return [i for i, r in enumerate(rows) if not any(x.kept for x in r)]

        st.tick("generate", total=len(empty()))

        async def first(i: int) -> None:
            p = await self.ask(slots[i], self.slot_author(slots[i], 0))
            if p is None:
                failed.add(i)
            else:
                rows[i].append(self.store_problem(i, slots[i], p, on_problem))

        await asyncio.gather(*(first(i) for i in empty() if not rows[i]))
        while todo := [i for i in empty() if i not in failed and len(rows[i]) <= retries]:
            if any(rows[i] for i in todo):
                st.tick("generate", total=sum(1 for i in todo if rows[i]))
            replies = await asyncio.gather(
                *(self.ask(slots[i], self.slot_author(slots[i], len(rows[i]))) for i in todo)
            )
            for i, p in zip(todo, replies, strict=True):
                if p is None:
                    failed.add(i)
                else:
                    rows[i].append(self.store_problem(i, slots[i], p, on_problem))
        for i in empty():
            if len(rows[i]) > retries:
                self.seed_fill(i, on_problem)

    def pool_fill(self, i: int, slot: dict, on_problem: OnProblem | None) -> None:
        """`problem_source: seed_pool`: store slot i's planned pool problem (author 'seed')."""
        st = self.state
        item = st.seed_pool.get(slot["seed_ids"][0]) if slot["seed_ids"] else None
        if item is None:
            return
        pid = steps.insert_problem(
            st.store,
            st.t,
            "seed",
            item["problem"],
            self.difficulty_of(slot),
            [item["id"]],
            None,
            None,
            slot=i,
        )
        if on_problem is not None:
            on_problem(steps.problem(st.store, pid))

    def seed_fill(self, i: int, on_problem: OnProblem | None) -> None:
        """Slot i's generated problems were all dropped: solve a seed-pool problem (author 'seed')
        instead, so a weak Q-Group does not shrink the step (`protocol.seed_fallback`)."""
        st = self.state
        if not st.cfg.protocol.seed_fallback:
            return
        rng = step_rng(st.cfg, st.t, f"fallback:{i}")
        items = list(st.seed_pool.values())
        existing = set(steps.existing_problem_texts(st.store))
        pick = next(
            (item for item in rng.sample(items, min(len(items), 64)) if item["problem"] not in existing), None
        )
        if pick is None:
            return
        slot = st.open.info["slots"][i]
        pid = steps.insert_problem(
            st.store,
            st.t,
            "seed",
            pick["problem"],
            self.difficulty_of(slot),
            [pick["id"]],
            None,
            None,
            slot=i,
        )
        st.bus.emit("seed_fallback", step=st.t, n=1, slot=i)
        if on_problem is not None:
            on_problem(steps.problem(st.store, pid))
