"""Contamination check: evaluation items that share a 13-gram with a problem the run generated.

The Q-Group writes its own problems, conditioned on seed problems; a model that has memorised a
benchmark can write one of its items back, and then the group solves, validates and trains on an
evaluation item. Following the GPT-3 paper's contamination check (Brown et al. 2020, Appendix C),
an item is flagged when it shares any word 13-gram with any problem in the run store, after
normalisation (lowercase, alphanumeric words only: `datasets.normalize_text`). An item shorter than
13 words is flagged when all of it appears in a problem.

Flagged items are reported (summary.json, `agora eval`'s output, the report), not removed: the
scores stay comparable across runs, and the reader sees which items to discount.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from agora_cli.datasets import Item, normalize_text

NGRAM = 13


def ngrams(words: list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    """The word n-grams of `words` (none when there are fewer than n words)."""
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def run_problems(run_dir: Path) -> list[tuple[int, str]]:
    """(problem id, text) of every problem in the run's store ([] without a store)."""
    from agora_cli.paths import RunPaths
    from agora_cli.store import Store

    path = RunPaths(run_dir).store
    if not path.exists():
        return []
    with Store(path, readonly=True) as store:
        return [(int(r["id"]), str(r["text"] or "")) for r in store.query("SELECT id, text FROM problems")]


def contaminated(
    items: dict[str, list[Item]], problems: Iterable[tuple[int, str]], n: int = NGRAM
) -> dict[str, dict[str, list[int]]]:
    """{benchmark: {item id: ids of the problems it shares an n-gram with}}, flagged items only."""
    index: dict[tuple[str, ...], list[int]] = {}
    texts: list[tuple[int, str]] = []
    for pid, text in problems:
        words = normalize_text(text).split()
        for g in ngrams(words, n):
            index.setdefault(g, []).append(pid)
        texts.append((pid, f" {' '.join(words)} "))
    out: dict[str, dict[str, list[int]]] = {}
    for bench, its in items.items():
        for it in its:
            words = normalize_text(it.problem).split()
            if not words:
                continue
            if len(words) >= n:
                hits = {pid for g in ngrams(words, n) for pid in index.get(g, ())}
            else:  # a short item: all of it, as whole words
                needle = f" {' '.join(words)} "
                hits = {pid for pid, text in texts if needle in text}
            if hits:
                out.setdefault(bench, {})[it.id] = sorted(hits)
    return out


def contamination_lines(flagged: dict[str, dict[str, list[int]]], checked: int) -> list[str]:
    """What `agora eval` prints and the report quotes: one line per benchmark with flagged items."""
    lines = []
    for bench, per in flagged.items():
        ids = sorted(per)
        shown = ", ".join(f"{i} (problem {', '.join(map(str, per[i][:3]))})" for i in ids[:5])
        lines.append(
            f"{bench}: {len(ids)} item(s) share a {NGRAM}-gram with one of the run's {checked} "
            f"problem(s): {shown}{', ...' if len(ids) > 5 else ''}"
        )
    return lines
