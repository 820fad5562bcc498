"""The shipped benchmarks (GSM8K test, MATH500, AIME 2024), their fixed seeded subsets, and the
splits that must never meet them.

Files live in `agora_cli/data/` (sources and licences in its README). Three disjoint roles:

- evaluation: `gsm8k` (GSM8K test), `math500`, `aime24`; only `agora eval` scores on them;
- calibration: `gsm8k_dev`, the last `DEV_SIZE` rows of GSM8K *train* (ids `gsm8k_train/6973` to
  `gsm8k_train/7472`). The external anchor's items come from here, so labels that steer a run
  (through F_t, FEM and the strategy) are never scored again as held-out results;
- seed pool: `gsm8k_train` minus the dev slice; the Q-Group is shown these, never a dev item.

Items are compared by id and by `normalize_text` (lowercase alphanumeric words); a test checks
that calibration is disjoint from every evaluation item on both.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from agora_cli.errors import EvaluationError, EvaluationUsageError
from agora_cli.paths import DATA_DIR

BENCHMARK_FILES: dict[str, str] = {
    "gsm8k": "gsm8k_test.jsonl",
    "math500": "math500.jsonl",
    "aime24": "aime24.jsonl",
}
SEED_POOL_FILES: dict[str, str] = {"gsm8k_train": "gsm8k_train.jsonl"}
# The calibration split of each task that has one: (the training file it is cut from, how many of
# that file's last rows it takes). Those rows are removed from the seed pool.
DEV_SIZE = 500
CALIBRATION_SPLITS: dict[str, tuple[str, int]] = {"gsm8k": ("gsm8k_train", DEV_SIZE)}

# Subsets are seeded by this constant, not by the run's seed, so runs with different seeds (the
# ablation grid) are compared on the same items.
SUBSET_SEED = 0


MATH, CHOICE = "math", "choice"  # how an item is graded: math-verify, or the chosen letter


@dataclass(frozen=True)
class Item:
    """One benchmark problem with its gold final answer (a letter for a CHOICE item)."""

    benchmark: str
    id: str
    problem: str
    answer: str
    kind: str = MATH


@dataclass
class ItemResult:
    """One graded answer: a member's reply to one benchmark item (or the majority answer)."""

    member: str
    benchmark: str
    item_id: str
    model: str
    reply: str
    answer: str | None
    gold: str
    correct: bool
    adapter_version: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.member, self.benchmark, self.item_id, self.model)


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
            raise EvaluationUsageError(f"{name!r} is the seed pool and is never evaluated on")
        known = ", ".join(BENCHMARK_FILES)
        raise EvaluationUsageError(f"unknown benchmark {name!r}; choose from {known}")
    return list(_read(BENCHMARK_FILES[name], name))


def _held_out_ids(pool: str) -> set[str]:
    """Ids of the pool's rows that form a calibration split (never shown to generators)."""
    out: set[str] = set()
    for source, size in CALIBRATION_SPLITS.values():
        if source == pool:
            out |= {it.id for it in _read(SEED_POOL_FILES[source], source)[-size:]}
    return out


def load_seed_pool(name: str = "gsm8k_train") -> list[Item]:
    """The seed pool the Q-Group draws examples from: the training file minus its dev slice."""
    if name not in SEED_POOL_FILES:
        raise EvaluationError(
            f"unknown seed pool {name!r}; set protocol.seed_pool to one of: "
            f"{', '.join(SEED_POOL_FILES)} (evaluation splits are never seed pools)"
        )
    held_out = _held_out_ids(name)
    return [it for it in _read(SEED_POOL_FILES[name], name) if it.id not in held_out]


def calibration_name(task: str) -> str:
    """The benchmark name of `task`'s calibration split, as stored in the `anchors` table."""
    return f"{task}_dev"


def load_dev_split(task: str = "gsm8k") -> list[Item]:
    """The calibration split of `task` (`benchmark` = `<task>_dev`), disjoint from evaluation."""
    if task not in CALIBRATION_SPLITS:
        raise EvaluationError(
            f"no held-out calibration split ships for {task!r} (all its items are evaluation "
            f"items); set evaluation.calibration to one of: {', '.join(CALIBRATION_SPLITS)}"
        )
    source, size = CALIBRATION_SPLITS[task]
    name = calibration_name(task)
    return [Item(name, it.id, it.problem, it.answer) for it in _read(SEED_POOL_FILES[source], source)[-size:]]


def subset(items: list[Item], limit: int | None, *, salt: str = "eval") -> list[Item]:
    """A fixed seeded subset of `limit` items (all when None), kept in file order.

    The same `limit` and `salt` always give the same items, so a resumed or repeated evaluation
    asks the same questions.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise EvaluationUsageError(f"--limit must be at least 1 (got {limit})")
    bench = items[0].benchmark if items else ""
    rng = random.Random(f"{salt}:{bench}:{SUBSET_SEED}")
    picked = set(rng.sample(range(len(items)), limit))
    return [it for i, it in enumerate(items) if i in picked]


def normalize_text(text: str) -> str:
    """Lowercase alphanumeric words only: what 'the same problem' means across splits."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def calibration_set(task: str, size: int, seed_pool: str = "gsm8k_train") -> list[Item]:
    """The external anchor's calibration items: a fixed seeded subset of `task`'s dev split.

    The dev split is cut from the training data and removed from the seed pool, so the anchor
    never measures something the Q-Group was shown and never scores an evaluation item. Any item
    whose text also appears in the seed pool or an evaluation benchmark is dropped as well
    (none does in the shipped files; the check keeps it so for edited ones).
    """
    taken: set[str] = set()
    if seed_pool in SEED_POOL_FILES:
        taken |= {normalize_text(it.problem) for it in load_seed_pool(seed_pool)}
    for bench in BENCHMARK_FILES:
        taken |= {normalize_text(it.problem) for it in load_benchmark(bench)}
    items = [it for it in load_dev_split(task) if normalize_text(it.problem) not in taken]
    return subset(items, size, salt="calibration")


def without_calibration(items: list[Item], calibration: list[Item]) -> tuple[list[Item], list[Item]]:
    """(items kept, items removed): an item is removed when its id or its normalised text is a
    calibration item's (`agora eval` never scores what steered the run)."""
    ids = {it.id for it in calibration}
    texts = {normalize_text(it.problem) for it in calibration}
    kept: list[Item] = []
    removed: list[Item] = []
    for it in items:
        (removed if it.id in ids or normalize_text(it.problem) in texts else kept).append(it)
    return kept, removed
