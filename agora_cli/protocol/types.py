"""Small dataclasses passed between the protocol stages and the loop."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agora_cli.events import NULL_BUS, EventBus

if TYPE_CHECKING:
    from agora_cli.client import ClientPool
    from agora_cli.config import Config
    from agora_cli.protocol.prompts import Prompts

DropReason = Literal["malformed", "duplicate", "empty", "request_failed"]


@dataclass
class GeneratedProblem:
    """One generator reply. `text` is the parsed problem (None when dropped)."""

    text: str | None
    raw: str
    author: str
    dropped: str | None = None  # DropReason, None when the problem is kept


@dataclass
class SolutionDraft:
    """One member's chain-of-thought solution. `answer` None = failed attempt."""

    member: str
    text: str
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    error: str | None = None  # the request failed after retries (text is then "")


@dataclass
class Verdict:
    """One verifier's judgement. Unparseable replies and failed requests are `valid=False`."""

    verifier: str
    valid: bool
    raw: str
    error: str | None = None  # request failed after retries (not a judgement: may be retried)
    latency_s: float = 0.0


@dataclass
class Vote:
    """One pairwise preference; `winner` refers to the caller's (a, b), not the shown order."""

    voter: str
    winner: Literal["a", "b"] | None
    raw: str
    error: str | None = None
    latency_s: float = 0.0


@dataclass
class EliteExample:
    """One interaction of the elite history H_t, shown to solvers as a few-shot example."""

    problem: str
    solution: str
    explanation: str | None
    member: str
    solution_id: int
    score: float


@dataclass
class Ctx:
    """Everything a stage needs: config, client pool, prompts, a seeded RNG, the event bus.

    `quote_key` names the delimiters that quote model output in verification and vote prompts
    (`common.delimiter`). It is one per Ctx, and the loop builds one Ctx per step, so a step's
    prompts share their instructions and demonstrations as an exact prefix; when not given it
    is drawn from `rng`, so a seeded step (and its resume) quotes with the same tokens.
    """

    cfg: Config
    pool: ClientPool
    prompts: Prompts
    rng: random.Random
    bus: EventBus = NULL_BUS
    quote_key: str = ""

    def __post_init__(self) -> None:
        if not self.quote_key:
            self.quote_key = f"{self.rng.getrandbits(64):016x}"
