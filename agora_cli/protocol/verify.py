"""Unanimous consensus (docs/protocol.md, step 3).

Each other member verifies a solution and answers VALID or INVALID; the solution is correct only
if every verdict is valid. The solution is model output, so it is shown between random delimiter
lines as quoted data, and the parser reads only the verifier's own reply: the LAST line that
starts with a verdict, after cutting out any part of the reply that echoes the quoted block, and
skipping every line that reproduces a line of the solution (an echo without its delimiters).
A verdict is the word (`VALID`, `invalid.`, `**Verdict:** VALID`, `Verdict - INVALID: wrong sum`)
or, because tiny models answer in prose, one plain sentence opening the line: `The solution is
correct.` / `The answer is not correct`. Hedged or unrelated text ("Valid reasoning needs...",
"The solution is probably right") is unparseable, and an unparseable verdict counts as invalid:
a solution passes only on explicit approval.

A prompt set for capable models (prompts/capable/verify.jinja, `reply_format` verdict_line) asks
for an analysis first and a final `VERDICT: VALID|INVALID` line; then only such lines count (the
last one decides), so "invalid" or "the answer is wrong" inside the analysis never decides, and a
reply without one is no verdict (invalid). The echo guard is the same in both formats.
"""

from __future__ import annotations

import re

from agora_cli.protocol.common import (
    REQUEST_ERRORS,
    chat_role,
    delimiter,
    error_text,
    is_echo,
    quoted_lines,
)
from agora_cli.protocol.types import Ctx, Verdict

# A verdict line: optional markdown/bullets, optional "verdict"/"answer" label, the word, then
# nothing or a separator followed by a reason. "Valid reasoning needs..." is not a verdict.
_END = r"[\s*_`]*(?:$|[.!:,;\-–—(]|\s[-–—:(]|\s(?:because|since|as)\b)"
_VERDICT_WORD = re.compile(
    r"^[\s>*#_`\-]*(?:(?:final\s+)?(?:verdict|answer|judg(?:e)?ment)[\s*_`]*[:\-=][\s*_`]*)?"
    r"(VALID|INVALID)" + _END,
    re.IGNORECASE,
)
# The prose form: "The solution is (not) correct." at the start of a line, nothing hedging between.
_VERDICT_SENTENCE = re.compile(
    r"^[\s>*#_`\-]*(?:the\s+|this\s+|your\s+)?(?:quoted\s+)?(?:solution|answer|reasoning|proof)"
    r"\s+is\s+(not\s+)?(valid|correct|right|invalid|incorrect|wrong)" + _END,
    re.IGNORECASE,
)
_POSITIVE = {"valid", "correct", "right"}
# The capable prompts' verdict line: `VERDICT: VALID`, `**Verdict:** invalid.`, `Final verdict - VALID`.
_VERDICT_LINE = re.compile(
    r"^[\s>*#_`\-]*(?:final\s+)?verdict[\s*_`]*[:\-=][\s*_`]*(VALID|INVALID)" + _END,
    re.IGNORECASE,
)


def _line_verdict(line: str, verdict_line: bool = False) -> bool | None:
    if verdict_line:
        m = _VERDICT_LINE.match(line)
        return None if m is None else m.group(1).upper() == "VALID"
    m = _VERDICT_WORD.match(line)
    if m:
        return m.group(1).upper() == "VALID"
    m = _VERDICT_SENTENCE.match(line)
    if m:
        return (m.group(2).lower() in _POSITIVE) != bool(m.group(1))
    return None


def _strip_echo(reply: str, token: str | None) -> str:
    if not token:
        return reply
    return re.sub(rf"BEGIN {re.escape(token)}.*?(?:END {re.escape(token)}|\Z)", "", reply, flags=re.DOTALL)


def parse_verdict(
    reply: str, token: str | None = None, solution: str = "", *, verdict_line: bool = False
) -> bool | None:
    """True/False from the reply's last verdict line; None when there is none. Never raises.

    `verdict_line`: the prompt's `reply_format` is verdict_line (prompts/capable): only
    `VERDICT: VALID|INVALID` lines are verdicts.

    `solution` is the text under review: a reply line that reproduces one of its lines is the
    verifier copying its input, never a verdict (a solution ending in `Verdict: VALID` cannot
    approve itself through a verifier that echoes it). The cost: a verdict worded exactly like a
    line of the solution does not count, so such a solution needs a verdict in other words.
    """
    text = _strip_echo(reply or "", token)
    quoted = quoted_lines(solution)
    verdict = None
    for line in text.splitlines():
        if is_echo(line, quoted):
            continue
        found = _line_verdict(line, verdict_line)
        if found is not None:
            verdict = found
    return verdict


async def verify(ctx: Ctx, verifier: str, problem: str, solution: str) -> Verdict:
    """`verifier`'s judgement of `solution`. Unparseable reply or failed request -> valid=False
    (a failed request also sets `error`, so the loop may retry it instead of storing it)."""
    token = delimiter(ctx.quote_key, problem, solution)
    try:
        result, reply = await chat_role(
            ctx,
            verifier,
            "verify",
            answers_are_own=True,
            problem=problem,
            solution=solution,
            delimiter=token,
        )
    except REQUEST_ERRORS as exc:
        return Verdict(verifier=verifier, valid=False, raw="", error=error_text(exc))
    verdict_line = ctx.prompts.reply_format("verify") == "verdict_line"
    return Verdict(
        verifier=verifier,
        valid=parse_verdict(reply, token, solution, verdict_line=verdict_line) is True,
        raw=result.text,
        latency_s=result.latency_s,
    )


def consensus(verdicts: list[Verdict]) -> bool:
    """True iff there is at least one verdict and every verdict is valid (unanimity)."""
    return bool(verdicts) and all(v.valid for v in verdicts)
