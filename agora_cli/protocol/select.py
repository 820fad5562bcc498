"""Selection and the elite history (DESIGN.md protocol step 5)."""

from __future__ import annotations

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role
from agora_cli.protocol.types import Ctx, EliteExample


def indicator(correct: bool, mu_author: float, mean_mu: float) -> bool:
    """Eq. 4: (q, o_k) enters B_hq iff it passed consensus AND its author's TrueSkill mean
    strictly exceeds the ensemble mean (with all ratings equal, nothing enters)."""
    return bool(correct) and mu_author > mean_mu


def update_elite(
    current: list[EliteExample], candidates: list[EliteExample], k: int
) -> list[EliteExample]:
    """H_t = Top_k(H_{t-1} ∪ I_t) by score. Ties keep the older entry first (stable sort, current
    before candidates); a solution already in the history is not added twice."""
    merged: list[EliteExample] = []
    seen: set[int] = set()
    for e in [*current, *candidates]:
        if e.solution_id not in seen:
            seen.add(e.solution_id)
            merged.append(e)
    return sorted(merged, key=lambda e: -e.score)[: max(k, 0)]


async def explain(ctx: Ctx, member: str, problem: str, solution: str) -> str:
    """The winner's short self-explanation of its own solution (only when ablations.explanation).

    Returns "" when the request fails, so a missing explanation never blocks selection.
    """
    try:
        _, reply = await chat_role(ctx, member, "explain", problem=problem, solution=solution)
    except REQUEST_ERRORS:
        return ""
    return reply.strip()
