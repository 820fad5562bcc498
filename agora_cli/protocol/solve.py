"""R-Group: solution formulation (docs/protocol.md, step 2).

Every member solves every problem with chain-of-thought ending in \\boxed{}; its prompt carries the
elite history H_t as few-shot examples (none when `ablations.elite_icl` is off; each example's
self-explanation only when `ablations.explanation` is on). A reply with no extractable answer is a
failed attempt (answer None). Base models often repeat the prompt before answering; `text` is the
reply without that leading echo (`strip_prompt_echo`), the same text the answer is read from, and
the text the loop stores: what peers verify and vote on, what is trained on and what H_t shows is
the model's own words, never a copy of the instructions or of the elite examples (an echoed
example answer would otherwise count, and train the model to echo). A request that fails after
retries is a SolutionDraft with `error` set: model garbage or a dead endpoint never raises here.
"""

from __future__ import annotations

from agora_cli.config import Config
from agora_cli.protocol.answers import extract_answer
from agora_cli.protocol.common import REQUEST_ERRORS, chat_role, error_text
from agora_cli.protocol.types import Ctx, EliteExample, SolutionDraft


def few_shot(cfg: Config, elite: list[EliteExample]) -> list[dict[str, str | None]]:
    """The `examples` variable of the solve prompt, honouring elite_icl and explanation."""
    if not cfg.ablations.elite_icl:
        return []
    return [
        {
            "problem": e.problem,
            "solution": e.solution,
            "explanation": e.explanation if cfg.ablations.explanation else None,
        }
        for e in elite
    ]


async def solve(ctx: Ctx, member: str, problem: str, elite: list[EliteExample]) -> SolutionDraft:
    """One chain-of-thought solution of `problem` by `member`, with H_t as few-shot examples."""
    try:
        result, reply = await chat_role(
            ctx, member, "solve", problem=problem, examples=few_shot(ctx.cfg, elite)
        )
    except REQUEST_ERRORS as exc:
        return SolutionDraft(
            member=member,
            text="",
            answer=None,
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=0.0,
            error=error_text(exc),
        )
    return SolutionDraft(
        member=member,
        text=reply,  # the model's own words: what is graded is what is stored and trained on
        answer=extract_answer(reply),
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        latency_s=result.latency_s,
    )
