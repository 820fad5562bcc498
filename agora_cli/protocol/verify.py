"""Unanimous consensus (DESIGN.md protocol step 3).

Each other member verifies a solution and answers VALID or INVALID; the solution is correct only
if every verdict is valid. The solution is model output, so it is shown between random delimiter
lines as quoted data, and the parser reads only the verifier's own reply: the LAST line that is a
verdict (`VALID`, `invalid.`, `**Verdict:** VALID`, `Verdict - INVALID: wrong sum`), after cutting
out any part of the reply that echoes the quoted block. Anything else is unparseable, and an
unparseable verdict counts as invalid: a solution passes only on explicit approval.
"""

from __future__ import annotations

import re

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role, delimiter, error_text
from agora_cli.protocol.types import Ctx, Verdict

# A verdict line: optional markdown/bullets, optional "verdict"/"answer" label, the word, then
# nothing or a separator followed by a reason. "Valid reasoning needs..." is not a verdict.
_VERDICT_LINE = re.compile(
    r"^[\s>*#_`\-]*(?:(?:final\s+)?(?:verdict|answer|judg(?:e)?ment)[\s*_`]*[:\-=][\s*_`]*)?"
    r"(VALID|INVALID)[\s*_`]*(?:$|[.!:,;\-–—(]|\s[-–—:(])",
    re.IGNORECASE,
)


def _strip_echo(reply: str, token: str | None) -> str:
    if not token:
        return reply
    return re.sub(rf"BEGIN {re.escape(token)}.*?(?:END {re.escape(token)}|\Z)", "", reply,
                  flags=re.DOTALL)


def parse_verdict(reply: str, token: str | None = None) -> bool | None:
    """True/False from the reply's last verdict line; None when there is none. Never raises."""
    text = _strip_echo(reply or "", token)
    verdict = None
    for line in text.splitlines():
        m = _VERDICT_LINE.match(line)
        if m:
            verdict = m.group(1).upper() == "VALID"
    return verdict


async def verify(ctx: Ctx, verifier: str, problem: str, solution: str) -> Verdict:
    """`verifier`'s judgement of `solution`. Unparseable reply or failed request -> valid=False
    (a failed request also sets `error`, so the loop may retry it instead of storing it)."""
    token = delimiter(ctx.rng, problem, solution)
    try:
        result = await chat_role(
            ctx, verifier, "verify", problem=problem, solution=solution, delimiter=token
        )
    except REQUEST_ERRORS as exc:
        return Verdict(verifier=verifier, valid=False, raw="", error=error_text(exc))
    return Verdict(
        verifier=verifier,
        valid=parse_verdict(result.text, token) is True,
        raw=result.text,
        latency_s=result.latency_s,
    )


def consensus(verdicts: list[Verdict]) -> bool:
    """True iff there is at least one verdict and every verdict is valid (unanimity)."""
    return bool(verdicts) and all(v.valid for v in verdicts)
