"""The paper's isolated-evolution baseline (`protocol.mode: isolated`).

Each model learns only from its own solutions: instead of peer consensus, a problem's solution is
validated by self-consistency, n samples (paper: 32) with a STRICT majority on the final answer
(`majority.strict_majority`).
"""

from __future__ import annotations

import asyncio

from agora_cli.protocol.majority import strict_majority
from agora_cli.protocol.solve import solve
from agora_cli.protocol.types import Ctx, SolutionDraft


async def self_consistency(
    ctx: Ctx, member: str, problem: str, n: int
) -> tuple[list[SolutionDraft], str | None]:
    """n independent solutions by `member` (no peer examples) and the strict-majority answer."""
    drafts = await asyncio.gather(*(solve(ctx, member, problem, []) for _ in range(n)))
    return list(drafts), strict_majority([d.answer for d in drafts], n)
