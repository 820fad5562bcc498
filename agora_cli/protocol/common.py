"""Helpers shared by the stages: per-role sampling, one guarded chat call, quoting delimiters."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
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
    ctx: Ctx, member: str, role: str, *, answers_are_own: bool = False, **variables: object
) -> tuple[ChatResult, str]:
    """Render `role`'s prompt, send it to `member` with the role's sampling, and return the
    result with its text cleaned of any leading prompt echo (see `strip_prompt_echo`)."""
    messages = ctx.prompts.render(role, **variables)
    result = await ctx.pool.chat(member, messages, sampling_for(ctx.cfg, member, role), role=role)
    return result, strip_prompt_echo(result.text, messages, answers_are_own=answers_are_own)


def strip_prompt_echo(reply: str, messages: list[dict[str, str]], *, answers_are_own: bool = False) -> str:
    """The reply without a leading copy of the prompt.

    Base models (Gemma-3-270M here) often answer by repeating the prompt from its first line,
    role marker and instructions included. Lines are dropped from the start of the reply while
    each one is a line of the prompt (a last line cut off by max_tokens counts when it is the
    start of a prompt line, after at least one whole echoed line); the first line of the model's
    own stops the stripping. Only a prefix is stripped, so a solution that happens to repeat a
    line later keeps it.

    `answers_are_own`: a demonstration answer (an assistant turn's line, e.g. `VALID.`) is the
    model's own reply unless the echo runs on past it (the next non-blank line is again a prompt
    line). A verifier answering `VALID.` after a demonstrated `VALID.` keeps its verdict, while a
    copy of the whole conversation never yields the demonstrations' verdicts. Roles whose
    demonstrations hold gradable answers (solve's worked examples) keep the default: such lines
    are always echo.
    """

    def lines_of(keep: Callable[[str], bool]) -> set[str]:
        out = {
            line.strip()
            for m in messages
            if keep(str(m.get("role")))
            for line in str(m.get("content") or "").splitlines()
        }
        out.discard("")
        return out

    if answers_are_own:
        prompt_lines = lines_of(lambda role: role != "assistant")
        answer_lines = lines_of(lambda role: role == "assistant") - prompt_lines
    else:
        prompt_lines, answer_lines = lines_of(lambda role: True), set()
    lines = reply.splitlines()

    def is_prompt_line(j: int, echoed: int) -> bool:
        line = lines[j].strip()
        # An echo cut off by max_tokens ends in a fragment of a prompt line.
        partial = j == len(lines) - 1 and echoed > 0 and any(p.startswith(line) for p in prompt_lines)
        return line in prompt_lines or partial

    i = echoed = 0
    while i < len(lines):
        line = lines[i].strip()
        if line:
            if line in answer_lines:
                after = next((j for j in range(i + 1, len(lines)) if lines[j].strip()), None)
                if after is None or not is_prompt_line(after, echoed + 1):
                    break  # the model's own answer, not a copy of a demonstration
            elif not is_prompt_line(i, echoed):
                break
            echoed += 1
        i += 1
    return "\n".join(lines[i:]).strip() if echoed else reply


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def delimiter(key: str, *texts: str) -> str:
    """The first of `key`'s delimiter tokens that is absent from every quoted text.

    `key` is the step's (`Ctx.quote_key`), so every verification and vote of a step normally
    quotes with the same token: their prompts then share the instructions and demonstrations,
    which name the token, as an exact prefix that a server's prefix cache reuses. A text that
    happens to contain the step's token gets the next one derived from `key`, so quoted data
    still can never close its own quote.
    """
    for i in itertools.count():
        token = "QUOTE-" + hashlib.sha256(f"{key}:{i}".encode()).hexdigest()[:10]
        if not any(token in t for t in texts):
            return token
    raise AssertionError("unreachable")  # itertools.count() never ends
