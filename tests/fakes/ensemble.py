"""A scripted ensemble for the loop, CLI and resume tests (not a test module itself).

Three members on one FakeOpenAI server; the fake tells them apart by the request's `model`.
The script makes every count predictable:
- generate: a fresh problem per request (`Problem: Q<n> ...`, no two alike);
- solve: `I am <member>. ... \\boxed{7}`;
- verify: INVALID for gamma's solutions, VALID otherwise, so alpha and beta pass consensus;
- vote: prefers alpha, then beta (read from the order the solutions are shown in);
- explain / evaluate: a fixed line.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from agora_cli.client import ClientPool, MemberLimits
from agora_cli.config import Config, config_from_dict
from agora_cli.endpoint import Endpoint
from agora_cli.events import EventBus
from tests.fakes.openai_server import Request, scripted

REPO = Path(__file__).resolve().parents[2]
MEMBERS = ["alpha", "beta", "gamma"]
PREFERENCE = ["alpha", "beta", "gamma"]
WORDS = ["apples", "pears", "plums", "figs", "limes", "kiwis", "dates", "grapes", "melons"]
PROBLEM_ID = re.compile(r"Q(\d+)\b")


def config_dict(url: str, run_dir: Path | str, **protocol: Any) -> dict:
    proto = {
        "problems_per_step": 2,
        "generators_per_step": 2,
        "seed_examples": 1,
        "buffer_threshold": 100,
        "anchor_every": 100,
        "elite_k": 3,
        "self_consistency_samples": 3,
        **protocol,
    }
    return {
        "name": "fake",
        "seed": 0,
        "run_dir": str(run_dir),
        "backends": {"fake": {"kind": "openai", "base_url": url}},
        "members": [
            {"name": m, "model": m, "backend": "fake", "max_concurrency": 8, "request_timeout_s": 30}
            for m in MEMBERS
        ],
        "client": {"max_retries": 1, "backoff_initial_s": 0.05, "backoff_max_s": 0.1},
        "protocol": proto,
        "ablations": {"lora": False, "external_anchor": False},
    }


def make_config(url: str, run_dir: Path | str, **protocol: Any) -> Config:
    return config_from_dict(config_dict(url, run_dir, **protocol))


def write_config(path: Path, url: str, run_dir: Path | str, **protocol: Any) -> Path:
    path.write_text(yaml.safe_dump(config_dict(url, run_dir, **protocol)))
    return path


def make_pool(cfg: Config, url: str, bus: EventBus | None = None) -> ClientPool:
    return ClientPool(
        resolve=lambda m: Endpoint(url, model=m),
        limits={m.name: MemberLimits(m.max_concurrency, m.request_timeout_s) for m in cfg.members},
        settings=cfg.client,
        bus=bus or EventBus(),
    )


def problem_of(req: Request) -> int | None:
    """The id of the problem a solve/verify/vote request is about (its last `Problem:` line;
    earlier ones are few-shot examples)."""
    found = None
    lines = req.user.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Problem:"):
            # verify and vote prompts quote the problem below a bare label, after a BEGIN line
            text = line if line.strip() != "Problem:" else " ".join(lines[i + 1 : i + 3])
            m = PROBLEM_ID.search(text)
            found = int(m.group(1)) if m else None
    return found


def verify(req: Request) -> str:
    """Scripted verifier: gamma's solutions are invalid, everyone else's valid."""
    return "INVALID" if "I am gamma" in req.user else "VALID"


def vote(req: Request) -> str:
    """Scripted voter: prefers authors in PREFERENCE order, whichever side they are shown on."""
    pos = {m: req.user.find(f"I am {m}") for m in MEMBERS if f"I am {m}" in req.user}
    best = min(pos, key=PREFERENCE.index)
    return "A" if pos[best] == min(pos.values()) else "B"


def responder(answer: str = "7"):
    """The script described in the module docstring."""
    counter = itertools.count()

    def generate(req: Request) -> str:
        n = next(counter)
        a, b, c = WORDS[n % 9], WORDS[(n + 3) % 9], WORDS[(n + 5) % 9]
        return (
            f"Problem: Q{n} A farmer has {n + 11} {a}, sells {n + 2} {b} and buys "
            f"{3 * n + 5} {c} at market number {n}. How many fruits are left?"
        )

    def solve(req: Request) -> str:
        # Per problem, so a reply never equals an elite demonstration turn (that is an echo).
        return (
            f"I am {req.model}. For Q{problem_of(req)}, adding the numbers step by step "
            f"gives \\boxed{{{answer}}}"
        )

    return scripted(
        {
            "generate": generate,
            "solve": solve,
            "verify": verify,
            "vote": vote,
            "explain": "Add what is bought and subtract what is sold.",
            "evaluate": "The answer is \\boxed{7}",
        }
    )
