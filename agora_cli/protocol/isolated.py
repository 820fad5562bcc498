"""The paper's isolated-evolution baseline (`protocol.mode: isolated`).

Each model learns only from its own solutions: instead of peer consensus, a problem's solution is
validated by self-consistency, n samples (paper: 32) with a STRICT majority on the final answer.
"""

from __future__ import annotations

import asyncio

from agora_cli.protocol.answers import answers_match
from agora_cli.protocol.solve import solve
from agora_cli.protocol.types import Ctx, SolutionDraft


def majority_answer(answers: list[str | None], n: int) -> str | None:
    """The answer held by more than n/2 of the n samples (failed ones count against), else None.

    The answer is spelled as its group's most common spelling (ties: the shortest, then the
    alphabetically first), so it does not depend on the order the samples finished in.
    """
    groups: list[list[str]] = []
    for a in answers:
        if a is None:
            continue
        for g in groups:
            if answers_match(g[0], a):
                g.append(a)
                break
        else:
            groups.append([a])
    if not groups:
        return None
    winner = max(groups, key=len)
    if len(winner) * 2 <= n:
        return None
    return min(set(winner), key=lambda a: (-winner.count(a), len(a), a))


async def self_consistency(
    ctx: Ctx, member: str, problem: str, n: int
) -> tuple[list[SolutionDraft], str | None]:
    """n independent solutions by `member` (no peer examples) and the strict-majority answer."""
    drafts = await asyncio.gather(*(solve(ctx, member, problem, []) for _ in range(n)))
    return list(drafts), majority_answer([d.answer for d in drafts], n)
