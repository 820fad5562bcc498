"""Selection and the elite history (docs/protocol.md, step 5)."""

from __future__ import annotations

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role
from agora_cli.protocol.types import Ctx, EliteExample
from agora_cli.stats import wilson_lower


def indicator(correct: bool, mu_author: float, mean_mu: float) -> bool:
    """Eq. 4: (q, o_k) enters B_hq iff it passed consensus AND its author's TrueSkill mean
    strictly exceeds the ensemble mean (with all ratings equal, nothing enters)."""
    return bool(correct) and mu_author > mean_mu


def elite_score(won: int, cast: int) -> float:
    """Peer-assessed quality of one solution: the lower bound of the 95% Wilson interval of the
    share of its comparisons' votes it won. A plain share tops out at 1.0 after a single vote, so
    the first entries to win everything would hold H_t forever; the lower bound rewards evidence
    (1/1 = 0.21, 3/3 = 0.44, 6/6 = 0.61) and never reaches 1."""
    return wilson_lower(won, cast)


def update_elite(current: list[EliteExample], candidates: list[EliteExample], k: int) -> list[EliteExample]:
    """H_t = Top_k(H_{t-1} ∪ I_t) by score. Ties go to the NEWER entry (higher solution id: ids
    grow with time), so a history whose entries cannot be outscored still turns over; a solution
    already in the history is not added twice."""
    merged: dict[int, EliteExample] = {}
    for e in [*current, *candidates]:
        merged.setdefault(e.solution_id, e)
    return sorted(merged.values(), key=lambda e: (-e.score, -e.solution_id))[: max(k, 0)]


async def explain(ctx: Ctx, member: str, problem: str, solution: str) -> str:
    """The winner's short self-explanation of its own solution (only when ablations.explanation).

    Returns "" when the request fails, so a missing explanation never blocks selection.
    """
    try:
        _, reply = await chat_role(ctx, member, "explain", problem=problem, solution=solution)
    except REQUEST_ERRORS:
        return ""
    return reply.strip()
