"""Unanimous consensus (docs/protocol.md, step 3).

Each other member verifies a solution and answers VALID or INVALID; the solution is correct only
if every verdict is valid. The problem and the solution are model output, so both are shown
between the step's delimiter lines as quoted data, and the parser reads only the verifier's own
words (protocol/replies.py): quoted blocks the reply reproduces are cut out, the reply ends at an
invented next turn, and a line that copies a line of the problem or the solution (under one
normalisation: case, spacing, punctuation, invisible characters, Unicode compatibility forms,
re-wrapping) can reject but never approve. So a planted `VERDICT: VALID` echoed in any of those
forms approves nothing, and a planted `VERDICT: INVALID` cannot hide the verifier's own
rejection. The cost: a verifier approving in words that copy a line of the solution gives no
approval (the solution that planted them pays for it).

A verdict line is the word (`VALID`, `invalid.`, `**Verdict:** VALID`, `Verdict - INVALID: wrong
sum`) or, because tiny models answer in prose, one plain sentence opening the line: `The solution
is correct.` / `The answer is not correct`. Anything after the word must be a reason after a
separator ("Valid reasoning needs..." is no verdict line), and a questioned verdict (`VALID?`) is
no verdict. The last verdict line decides, and an approval counts only when it is unhedged:

- free format (the tiny prompts, prompts/verify.jinja): VALID is no verdict when any line the
  verifier wrote itself (copies of the quoted text aside) negates, contrasts or hedges: `not`,
  `no`, `n't`, `never`, `cannot`; `but`, `however`, `although`, `though`, `except`, `unless`;
  `invalid`, `incorrect`, `wrong`, `false`, `error`, `mistake`, `flaw`, `fail`; `maybe`,
  `perhaps`, `probably`, `possibly`, `might`, `seems`, `unsure`, `unclear`, `uncertain`; or a
  question mark. So "The answer is correct, but the reasoning is wrong", "VALID. But step 2 is
  off", "VALID? no" and "VALID\nwait, INVALID" never approve;
- verdict_line format (prompts/capable/verify.jinja): the verifier analyses first and ends with
  `VERDICT: VALID|INVALID`; only such lines are verdicts, so "invalid" or "the answer is wrong"
  inside the analysis never decides, and the hedge rule applies to the verdict line alone
  (`VERDICT: VALID, but step 2 is wrong` is no verdict).

No verdict counts as invalid: a solution passes only on explicit, unhedged approval.
"""

from __future__ import annotations

import re
from typing import Literal

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role, delimiter, error_text
from agora_cli.protocol.replies import JudgeReply, Quoted
from agora_cli.protocol.types import Ctx, Verdict

Reading = Literal["valid", "invalid", "void"]

# A reason may follow the verdict after a separator; "Valid reasoning needs..." is no verdict.
_END = re.compile(r"[\s*_`]*(?:$|[.!:,;\-–—(]|\s[-–—:(]|\s(?:because|since|as)\b)", re.IGNORECASE)
_QUESTIONED = re.compile(r"[\s*_`]*\?")
_VERDICT_WORD = re.compile(
    r"^[\s>*#_`\-]*(?:(?:final\s+)?(?:verdict|answer|judg(?:e)?ment)[\s*_`]*[:\-=][\s*_`]*)?"
    r"(VALID|INVALID)",
    re.IGNORECASE,
)
# The prose form: "The solution is (not) correct." at the start of a line, nothing hedging between.
_VERDICT_SENTENCE = re.compile(
    r"^[\s>*#_`\-]*(?:the\s+|this\s+|your\s+)?(?:quoted\s+)?(?:solution|answer|reasoning|proof)"
    r"\s+is\s+(not\s+)?(valid|correct|right|invalid|incorrect|wrong)",
    re.IGNORECASE,
)
_POSITIVE = {"valid", "correct", "right"}
# The capable prompts' verdict line: `VERDICT: VALID`, `**Verdict:** invalid.`, `Final verdict - VALID`.
_VERDICT_LINE = re.compile(
    r"^[\s>*#_`\-]*(?:final\s+)?verdict[\s*_`]*[:\-=][\s*_`]*(VALID|INVALID)",
    re.IGNORECASE,
)
# What voids an approval (the module docstring lists it).
HEDGE = re.compile(
    r"\?|n[\'’]t\b|\b(?:not|no|never|cannot|but|however|although|though|except|unless|invalid|"
    r"incorrect|wrong|false|errors?|mistakes?|flaw(?:s|ed)?|fail(?:s|ed)?|maybe|perhaps|probably|"
    r"possibly|might|seems?|unsure|unclear|uncertain)\b",
    re.IGNORECASE,
)


def _line_verdict(line: str, verdict_line: bool = False) -> Reading | None:
    """What one line says: a verdict, a void one (questioned or a hedged approval), or nothing."""
    forms = [_VERDICT_LINE] if verdict_line else [_VERDICT_WORD, _VERDICT_SENTENCE]
    for form in forms:
        m = form.match(line)
        if m is None:
            continue
        rest = line[m.end() :]
        if _QUESTIONED.match(rest):
            return "void"
        if not _END.match(rest):
            return None
        if form is _VERDICT_SENTENCE:
            positive = (m.group(2).lower() in _POSITIVE) != bool(m.group(1))
        else:
            positive = m.group(1).upper() == "VALID"
        if positive and HEDGE.search(rest):
            return "void"
        return "valid" if positive else "invalid"
    return None


def parse_verdict(
    reply: str,
    token: str | None = None,
    solution: str = "",
    *,
    problem: str = "",
    verdict_line: bool = False,
) -> bool | None:
    """True/False from the reply's last verdict line; None when there is none or it is void.
    Never raises.

    `solution` and `problem` are the quoted texts: a reply line that copies one of their lines
    (protocol/replies.py) never approves, while a copied rejection still rejects, so a planted
    verdict can neither approve its solution nor hide the verifier's own INVALID.
    `verdict_line`: the prompt's `reply_format` is verdict_line (prompts/capable): only
    `VERDICT: VALID|INVALID` lines are verdicts.
    """
    text = JudgeReply(reply, token, Quoted(problem=problem, solution=solution))

    def read(i: int) -> Reading | None:
        found = _line_verdict(text.lines[i], verdict_line)
        if found == "valid" and text.copied_from(i):
            return None  # a copy never approves (a copied INVALID still rejects)
        return found

    verdict = text.last(read, lambda line: _line_verdict(line, verdict_line) is not None)
    if verdict == "valid" and not verdict_line and text.own_lines(HEDGE.search):
        verdict = "void"  # the free format approves only when nothing the verifier wrote hedges
    return None if verdict in (None, "void") else verdict == "valid"


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
        valid=parse_verdict(reply, token, solution, problem=problem, verdict_line=verdict_line) is True,
        raw=result.text,
        latency_s=result.latency_s,
    )


def consensus(verdicts: list[Verdict]) -> bool:
    """True iff there is at least one verdict and every verdict is valid (unanimity)."""
    return bool(verdicts) and all(v.valid for v in verdicts)
