"""Majority answers: the two rules agora uses, side by side so they are never confused.

- `strict_majority(answers, n)`: the isolated-evolution control's self-consistency rule (paper:
  32 samples, STRICT majority on the final answer). An answer wins only when more than n/2 of the
  n samples asked for hold it; failed samples count against.
- `plurality(answers)`: the ensemble's answer in evaluation (`@majority` in `agora eval` and the
  anchor): the most common answer among the members, ties broken by member order, so there is
  always an answer when anyone answered.

Answers are grouped by `answers_match`, the one grader's equivalence (so "1,000", "1000" and
"10^{3}", or "\\frac12", "1/2" and "x = 0.5", are one answer). `MAJORITY` is the
member name under which the ensemble's plurality answer is stored and reported.
"""

from __future__ import annotations

from agora_cli.protocol.answers import answers_match

MAJORITY = "@majority"


def _groups(answers: list[str | None]) -> list[list[str]]:
    """Answers grouped by equivalence, groups in order of their first member (None and blank
    answers left out)."""
    groups: list[list[str]] = []
    for a in answers:
        if a is None or not a.strip():
            continue
        for g in groups:
            if answers_match(g[0], a):
                g.append(a)
                break
        else:
            groups.append([a])
    return groups


def strict_majority(answers: list[str | None], n: int) -> str | None:
    """The answer held by more than n/2 of the n samples (failed ones count against), else None.

    The answer is spelled as its group's most common spelling (ties: the shortest, then the
    alphabetically first), so it does not depend on the order the samples finished in.
    """
    groups = _groups(answers)
    if not groups:
        return None
    winner = max(groups, key=len)
    if len(winner) * 2 <= n:
        return None
    return min(set(winner), key=lambda a: (-winner.count(a), len(a), a))


def plurality(answers: list[str | None]) -> str | None:
    """The most common answer; ties go to the group answered first (`answers` in member order).

    None (no answer) never wins; None when nobody answered.
    """
    groups = _groups(answers)
    if not groups:
        return None
    best = max(len(g) for g in groups)
    return next(g[0] for g in groups if len(g) == best)  # first group of max size: member order
