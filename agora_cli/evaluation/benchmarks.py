"""The shipped benchmarks (GSM8K test, MATH500, AIME 2024) and their fixed, seeded subsets.

Files live in `agora_cli/data/` (sources and licences in its README). `gsm8k_train` is the seed
pool of the Q-Group and is never evaluated on; every evaluation and the calibration set of the
external anchor draw from the test splits only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache

from agora_cli.errors import EvaluationError
from agora_cli.paths import DATA_DIR

BENCHMARK_FILES: dict[str, str] = {
    "gsm8k": "gsm8k_test.jsonl",
    "math500": "math500.jsonl",
    "aime24": "aime24.jsonl",
}
SEED_POOL_FILES: dict[str, str] = {"gsm8k_train": "gsm8k_train.jsonl"}

# Subsets are seeded by this constant, not by the run's seed, so runs with different seeds (the
# ablation grid) are compared on the same items.
SUBSET_SEED = 0


@dataclass(frozen=True)
class Item:
    """One benchmark problem with its gold final answer."""

    benchmark: str
    id: str
    problem: str
    answer: str


@lru_cache(maxsize=8)
def _read(file: str, benchmark: str) -> tuple[Item, ...]:
    path = DATA_DIR / file
    if not path.exists():
        raise EvaluationError(f"benchmark data {path} is missing; reinstall agora (pip install -e .)")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(Item(benchmark, str(row["id"]), row["problem"], str(row["answer"])))
        except (json.JSONDecodeError, KeyError) as e:
            raise EvaluationError(f"{path}:{n}: unreadable row ({e}); the data file is damaged") from None
    return tuple(items)


def load_benchmark(name: str) -> list[Item]:
    """All items of an evaluation benchmark (`gsm8k`, `math500`, `aime24`), in file order."""
    if name not in BENCHMARK_FILES:
        if name in SEED_POOL_FILES:
            raise EvaluationError(f"{name!r} is the seed pool and is never evaluated on")
        known = ", ".join(BENCHMARK_FILES)
        raise EvaluationError(f"unknown benchmark {name!r}; choose from {known}")
    return list(_read(BENCHMARK_FILES[name], name))


def load_seed_pool(name: str = "gsm8k_train") -> list[Item]:
    """The seed pool the Q-Group draws examples from."""
    if name not in SEED_POOL_FILES:
        raise EvaluationError(f"unknown seed pool {name!r}; choose from {', '.join(SEED_POOL_FILES)}")
    return list(_read(SEED_POOL_FILES[name], name))


def subset(items: list[Item], limit: int | None, *, salt: str = "eval") -> list[Item]:
    """A fixed seeded subset of `limit` items (all when None), kept in file order.

    The same `limit` and `salt` always give the same items, so a resumed or repeated evaluation
    asks the same questions.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise EvaluationError(f"--limit must be at least 1 (got {limit})")
    bench = items[0].benchmark if items else ""
    rng = random.Random(f"{salt}:{bench}:{SUBSET_SEED}")
    picked = set(rng.sample(range(len(items)), limit))
    return [it for i, it in enumerate(items) if i in picked]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def calibration_set(benchmark: str, size: int, seed_pool: str = "gsm8k_train") -> list[Item]:
    """The external anchor's held-out calibration set: a fixed seeded subset of a TEST split.

    Items whose problem text also appears in the seed pool are excluded, so the anchor never
    measures something the Q-Group was shown.
    """
    known_pool = seed_pool in SEED_POOL_FILES
    pool = {_norm(it.problem) for it in load_seed_pool(seed_pool)} if known_pool else set()
    items = [it for it in load_benchmark(benchmark) if _norm(it.problem) not in pool]
    return subset(items, size, salt="calibration")
