"""Helpers shared by the stages: per-role sampling, one guarded chat call, quoting delimiters."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import openai

from agora_cli.config import Config, Sampling
from agora_cli.errors import AgoraError
from agora_cli.protocol.types import Ctx

if TYPE_CHECKING:
    from agora_cli.client import ChatResult

# A request that failed after the pool's retries (EndpointError) or was rejected (4xx).
REQUEST_ERRORS: tuple[type[BaseException], ...] = (AgoraError, openai.OpenAIError)


def sampling_for(cfg: Config, member: str, role: str) -> Sampling:
    """`cfg.protocol.sampling.<role>`, unless the member sets its own `sampling`."""
    own = cfg.member(member).sampling
    return own if own is not None else getattr(cfg.protocol.sampling, role)


async def chat_role(
    ctx: Ctx, member: str, role: str, **variables: object
) -> tuple[ChatResult, str]:
    """Render `role`'s prompt, send it to `member` with the role's sampling, and return the
    result with its text cleaned of any leading prompt echo (see `strip_prompt_echo`)."""
    messages = ctx.prompts.render(role, **variables)
    result = await ctx.pool.chat(member, messages, sampling_for(ctx.cfg, member, role), role=role)
    return result, strip_prompt_echo(result.text, messages)


def strip_prompt_echo(reply: str, messages: list[dict[str, str]]) -> str:
    """The reply without a leading copy of the prompt.

    Base models (Gemma-3-270M here) often answer by repeating the prompt from its first line,
    role marker and instructions included. Lines are dropped from the start of the reply while
    each one is a line of the prompt (a last line cut off by max_tokens counts when it is the
    start of a prompt line, after at least one whole echoed line); the first line of the model's
    own stops the stripping. Only a prefix is stripped, so a solution that happens to repeat a
    line later keeps it.
    """
    prompt_lines = {
        line.strip() for m in messages for line in str(m.get("content") or "").splitlines()
    }
    prompt_lines.discard("")
    lines = reply.splitlines()
    i = echoed = 0
    while i < len(lines):
        line = lines[i].strip()
        if line:
            last = i == len(lines) - 1
            # An echo cut off by max_tokens ends in a fragment of a prompt line.
            partial = last and echoed > 0 and any(p.startswith(line) for p in prompt_lines)
            if line not in prompt_lines and not partial:
                break
            echoed += 1
        i += 1
    return "\n".join(lines[i:]).strip() if echoed else reply


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def delimiter(rng: random.Random, *texts: str) -> str:
    """A random token absent from every quoted text, so quoted data cannot close its own quote."""
    while True:
        token = f"QUOTE-{rng.getrandbits(40):010x}"
        if not any(token in t for t in texts):
            return token
