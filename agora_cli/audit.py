"""The consensus audit: how often unanimous verification agrees with the truth (docs/protocol.md).

Each step mixes `protocol.audit_probes` gold-labelled problems from the seed pool (never an
evaluation set, never the calibration split) into the step. They are solved and verified with
the same prompts as every other problem, so a verifier cannot tell them apart, but they never
vote, never enter the buffer or the elite history and never count in V_t: their gold answer is
read only here, after the step's verdicts are in, to score the decisions already taken.

For every probe solution: truth = its extracted answer graded against gold (math-verify, as
`agora eval` grades), approved = unanimous consensus passed it (protocol step 3). Per step, for
the consensus ('@consensus') and for each verifier's own verdicts:

  precision = P(truth | approved) = tp / (tp + fp)
  recall    = P(approved | truth) = tp / (tp + fn)

Counts are stored (`audit` table); rates are shown with their 95% Wilson interval.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agora_cli import steps
from agora_cli.stats import rate_text
from agora_cli.store import Store

CONSENSUS = "@consensus"  # the `audit.verifier` of the unanimous decision
GradeMany = Callable[[list[tuple[str, str]]], list[bool]]  # [(answer, gold)] -> [correct]


@dataclass
class Counts:
    """Approval against gold over probe solutions: true/false positives and negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, approved: bool, truth: bool) -> None:
        if approved:
            self.tp, self.fp = self.tp + truth, self.fp + (not truth)
        else:
            self.fn, self.tn = self.fn + truth, self.tn + (not truth)

    def __iadd__(self, other: Counts) -> Counts:
        self.tp, self.fp = self.tp + other.tp, self.fp + other.fp
        self.fn, self.tn = self.fn + other.fn, self.tn + other.tn
        return self

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> tuple[int, int]:
        """(k, n) of P(correct | approved)."""
        return self.tp, self.tp + self.fp

    @property
    def recall(self) -> tuple[int, int]:
        """(k, n) of P(approved | correct)."""
        return self.tp, self.tp + self.fn

    @property
    def accuracy(self) -> tuple[int, int]:
        """(k, n) of the solutions that are correct against gold (the base rate)."""
        return self.tp + self.fn, self.n

    def text(self) -> str:
        """`precision 50.0% [9.5, 90.5] (1/2), recall 100.0% [20.7, 100.0] (1/1)`."""
        return (
            f"precision {rate_text(*self.precision)}, recall {rate_text(*self.recall)}, "
            f"solutions correct {rate_text(*self.accuracy)}"
        )


def plan_probes(pool: list[dict], k: int, rng: random.Random, exclude: set[str]) -> list[str]:
    """Ids of `k` seed-pool rows to mix into a step as probes, none of them in `exclude`
    (earlier probes of the run, the seeds shown to this step's generators)."""
    if k <= 0:
        return []
    candidates = [s["id"] for s in pool if s["id"] not in exclude]
    return rng.sample(candidates, min(k, len(candidates)))


@dataclass
class ProbeSolution:
    """What the audit needs of one probe solution, as plain data."""

    solution_id: int
    answer: str | None
    gold: str
    approved: bool  # unanimous consensus
    verdicts: dict[str, bool]  # verifier -> its own verdict


def tally(solutions: list[ProbeSolution], grade: GradeMany) -> tuple[dict[int, bool], dict[str, Counts]]:
    """(truth per solution id, {'@consensus' or verifier: Counts}). A solution without an
    answer is wrong against gold without grading; verifiers that gave no verdict are left out."""
    graded = [s for s in solutions if s.answer is not None]
    ok = grade([(s.answer or "", s.gold) for s in graded]) if graded else []
    truth = {s.solution_id: False for s in solutions}
    truth.update({s.solution_id: bool(v) for s, v in zip(graded, ok, strict=True)})
    counts: dict[str, Counts] = {}
    if solutions:
        counts[CONSENSUS] = Counts()
    for s in solutions:
        counts[CONSENSUS].add(s.approved, truth[s.solution_id])
        for verifier, valid in sorted(s.verdicts.items()):
            counts.setdefault(verifier, Counts()).add(valid, truth[s.solution_id])
    return truth, counts


# --------------------------------------------------------------------------- reading the store


def step_counts(store: Store) -> dict[int, dict[str, Counts]]:
    """{step: {verifier: Counts}} of the committed steps, oldest first (none for a store
    written before the audit existed)."""
    out: dict[int, dict[str, Counts]] = {}
    for step, verifier, tp, fp, fn, tn in steps.audit_rows(store):
        out.setdefault(step, {})[verifier] = Counts(tp, fp, fn, tn)
    return out


def totals(per_step: Iterable[dict[str, Counts]]) -> dict[str, Counts]:
    """{verifier: Counts} summed over steps, '@consensus' first."""
    out: dict[str, Counts] = {}
    for counts in per_step:
        for verifier, c in counts.items():
            out.setdefault(verifier, Counts())
            out[verifier] += c
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != CONSENSUS, kv[0])))
