"""What every variant of a step shares: the open step's state, and the interface the loop calls.

A variant (`agora.AgoraStep`, `isolated.IsolatedStep`) is one protocol read top to bottom over
the shared stages (`problems`, `solving`); `agora_cli.loop` opens the step, picks the variant by
`protocol.mode` (`agora_cli.step.variant_for`) and drives it through this interface.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agora_cli import steps
from agora_cli.audit import GradeMany
from agora_cli.commit import StepWork
from agora_cli.config import Config
from agora_cli.events import EventBus
from agora_cli.protocol import generate as gen
from agora_cli.protocol.types import Ctx, EliteExample
from agora_cli.store import Store

STAGES = ("generate", "solve", "verify", "vote")  # `agora generate|solve|verify|vote`
Versions = Callable[[], dict[str, int]]  # member -> live adapter version, read when asked
OnProblem = Callable[[steps.ProblemRow], None]  # hands a just-stored problem to its flow


@dataclass
class StepState:
    """The open step t as every stage sees it: config, store, request context, the live adapter
    versions, and what this invocation counted (failed requests, phase progress)."""

    cfg: Config
    store: Store
    ctx: Ctx
    bus: EventBus
    open: steps.OpenStep
    versions: Versions = dict
    elite: list[EliteExample] = field(default_factory=list)  # H_{t-1} as shown to solvers
    failures: int = 0  # requests that failed after retries; the loop makes one more pass
    progress: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = [m.name for m in self.cfg.members]
        self.t = self.open.step
        self.seed_pool = {item["id"]: item for item in gen.load_seed_pool(self.cfg.protocol.seed_pool)}

    def tick(self, phase: str, total: int = 0, done: int = 0) -> None:
        """Count `total` more requests planned and `done` more finished in `phase`, and say so."""
        p = self.progress.setdefault(phase, [0, 0])
        p[0] += done
        p[1] += total
        self.bus.emit("phase_progress", phase=phase, step=self.t, done=p[0], total=p[1])


class Step(ABC):
    """One variant of the protocol's step, as the loop and the stage commands drive it."""

    state: StepState

    @abstractmethod
    def __init__(self, state: StepState) -> None:
        """Load the open step's stored work, so that only what is missing is asked."""

    @staticmethod
    @abstractmethod
    def plan(cfg: Config, store: Store, t: int, d_t: float) -> tuple[dict[str, Any], float]:
        """What the step is opened with (its `steps.info`: slots, generators, ...) and the d_t
        stored in its steps row; fixed when the step opens, kept on resume."""

    @abstractmethod
    async def pipeline(self) -> None:
        """Everything still missing in the open step, pipelined per problem."""

    @abstractmethod
    async def stage(self, name: str) -> None:
        """One phase of the open step (`STAGES`), all its missing requests at once."""

    @abstractmethod
    async def select_elite(self, k: int) -> list[EliteExample]:
        """H_t after this step (protocol step 5); [] for a variant without an elite history."""

    @abstractmethod
    async def work(self, grade: GradeMany | None) -> StepWork:
        """What the commit needs from this step besides the store, as plain data; `grade`
        grades audit-probe answers against gold where the variant has probes."""


def step_rng(cfg: Config, t: int, purpose: str) -> random.Random:
    """A stream of draws for one purpose of step t, seeded by (run seed, step, purpose) alone, so
    each purpose's draws do not depend on the others."""
    return random.Random(f"{cfg.seed}:{t}:{purpose}")
