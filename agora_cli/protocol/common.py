"""Helpers shared by the stages: per-role sampling, one guarded chat call, quoting delimiters."""

from __future__ import annotations

import random

import openai

from agora_cli.client import ChatResult
from agora_cli.config import Config, Sampling
from agora_cli.errors import AgoraError
from agora_cli.protocol.types import Ctx

# A request that failed after the pool's retries (EndpointError) or was rejected (4xx).
REQUEST_ERRORS: tuple[type[BaseException], ...] = (AgoraError, openai.OpenAIError)


def sampling_for(cfg: Config, member: str, role: str) -> Sampling:
    """`cfg.protocol.sampling.<role>`, unless the member sets its own `sampling`."""
    own = cfg.member(member).sampling
    return own if own is not None else getattr(cfg.protocol.sampling, role)


async def chat_role(ctx: Ctx, member: str, role: str, **variables: object) -> ChatResult:
    """Render `role`'s prompt and send it to `member` with the role's sampling."""
    messages = ctx.prompts.render(role, **variables)
    return await ctx.pool.chat(member, messages, sampling_for(ctx.cfg, member, role), role=role)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def delimiter(rng: random.Random, *texts: str) -> str:
    """A random token absent from every quoted text, so quoted data cannot close its own quote."""
    while True:
        token = f"QUOTE-{rng.getrandbits(40):010x}"
        if not any(token in t for t in texts):
            return token
