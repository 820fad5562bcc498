"""Selection and the elite history (docs/protocol.md, step 5)."""

from __future__ import annotations

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role
from agora_cli.protocol.types import Ctx, EliteExample
from agora_cli.stats import wilson_lower


def indicator(correct: bool, mu_author: float, mean_mu: float) -> bool:
    """Eq. 4: (q, o_k) enters B_hq iff it passed consensus AND its author's TrueSkill mean
    strictly exceeds the ensemble mean (with all ratings equal, nothing enters)."""
    return bool(correct) and mu_author > mean_mu


def elite_score(won: int, cast: int, comparisons: int = 1) -> float:
    """Peer-assessed quality of one solution: the lower bound of the 95% Wilson interval of the
    share of its votes it won, counted on the votes of ONE comparison (cast / comparisons).

    A plain share tops out at 1.0 after a single vote, so the first entries to win everything
    would hold H_t forever; the lower bound rewards evidence and never reaches 1. But the votes a
    solution can win grow with the number of correct solutions to its problem (one comparison
    per other solver), so the bound on all of them would rank a solution by how many members
    solved its problem, i.e. favour easy problems (3/4 = 0.30 on a problem two solved, 9/12 =
    0.47 on one four solved). Counting the share on one comparison's votes removes that: equal
    shares score equal (3/4 and 9/12 both 0.30), a larger share scores higher (4/4 = 0.51).
    """
    if cast <= 0:
        return 0.0
    basis = cast / max(comparisons, 1)  # the votes of one comparison (the voters)
    return wilson_lower(won / cast * basis, basis)


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
