"""Quality recognition with TrueSkill (docs/protocol.md, step 4).

For each pair of correct solutions to one problem, every R-Group member votes which reasoning is
better; each vote is a 1-vs-1 game between the two authors (no draws). Presentation order is
randomised per vote against position bias, and the winner is mapped back to the caller's (a, b).
The problem and both solutions are quoted between the step's delimiter lines, and the parser reads
only the voter's own words (protocol/replies.py): a line that copies a line of a solution (under
one normalisation, re-wrapping included) counts only as a vote against that solution, never for
it, and a line that copies the problem never counts. So a solution that plants `VERDICT: A` and
`VERDICT: B` neither wins a vote by the voter echoing it nor voids the voter's own vote for the
other solution; it only forfeits the votes worded exactly like its own plant.
With the capable prompt set (prompts/capable/vote.jinja, `reply_format` verdict_line) the voter
compares first and ends with `VERDICT: A|B`; then only such lines state a choice, the last one.
"""

from __future__ import annotations

import re
from typing import Literal

import trueskill

from agora_cli.protocol.common import REQUEST_ERRORS, chat_role, delimiter, error_text
from agora_cli.protocol.replies import JudgeReply, Quoted
from agora_cli.protocol.types import Ctx, Vote

_LETTER = r"[(\[]?(?-i:([AB]))[)\]]?"  # capital letters only: "a" is an English article
_END = r"[\s*_`]*(?:$|[.!:,;\-–—]|\s[-–—:(]|\s(?:because|since|as)\b)"
_PREFIX = r"^[\s>*#_`\-]*"
_VOTE_FORMS = [
    # "A", "**B**", "Winner: A", "Answer - Solution B."
    re.compile(
        _PREFIX + r"(?:(?:final\s+)?(?:answer|winner|verdict|vote|choice|better)[\s*_`]*[:\-=]"
        r"[\s*_`]*)?(?:(?:solution|option)\s+)?" + _LETTER + _END,
        re.IGNORECASE,
    ),
    # "The correct answer is A.", "The better solution is solution B"
    re.compile(
        _PREFIX + r"(?:the\s+)?(?:correct\s+|better\s+|best\s+|right\s+)?"
        r"(?:answer|choice|solution|option|one)\s+is\s+(?:(?:solution|option)\s+)?" + _LETTER + _END,
        re.IGNORECASE,
    ),
    # "Solution A is better", "B is clearer."
    re.compile(
        _PREFIX
        + r"(?:(?:solution|option)\s+)?"
        + _LETTER
        + r"\s+is\s+(?:the\s+)?(?:better|clearer|best|more\s+rigorous)\b",
        re.IGNORECASE,
    ),
]

# The capable prompts' choice line: `VERDICT: B`, `**Verdict:** Solution A.`
_VERDICT_LINE = re.compile(
    _PREFIX + r"(?:final\s+)?verdict[\s*_`]*[:\-=][\s*_`]*(?:(?:solution|option)\s+)?" + _LETTER + _END,
    re.IGNORECASE,
)


def _line_vote(line: str, verdict_line: bool = False) -> str | None:
    for form in [_VERDICT_LINE] if verdict_line else _VOTE_FORMS:
        m = form.match(line)
        if m:
            return m.group(1).lower()
    return None


def parse_vote(
    reply: str,
    token: str | None = None,
    solutions: tuple[str, ...] = (),
    *,
    problem: str = "",
    verdict_line: bool = False,
) -> Literal["a", "b"] | None:
    """'a'/'b' (as shown) from the reply's last line that states a choice, None when none does.

    Accepted: a bare letter ("B", "**A**.", "Winner: A"), or one sentence opening the line ("The
    correct answer is A.", "Solution B is better"). Letters must be capitals. Once a choice is
    stated, a line opening an invented next turn ("Problem: ...", a role marker) ends the reply:
    what follows answers a question nobody asked. `solutions` are the texts shown as A and B and
    `problem` the problem: a line that copies one of their lines may only vote against the
    solution it copies (protocol/replies.py). Never raises.

    `verdict_line`: the prompt's `reply_format` is verdict_line (prompts/capable): only
    `VERDICT: A|B` lines state a choice, so "solution A is better at..." in the comparison does not.
    """
    shown = dict(zip(("a", "b"), solutions, strict=False))
    text = JudgeReply(reply, token, Quoted(problem=problem, **shown))

    def read(i: int) -> str | None:
        found = _line_vote(text.lines[i], verdict_line)
        if found is not None and ({found, "problem"} & text.copied_from(i)):
            return None  # a copy may vote against the solution it copies, never for it
        return found

    choice = text.last(read, lambda line: _line_vote(line, verdict_line) is not None)
    return choice  # type: ignore[return-value]


async def vote(ctx: Ctx, voter: str, problem: str, solution_a: str, solution_b: str) -> Vote:
    """`voter`'s preference between two solutions; `winner` refers to the arguments' order."""
    swapped = ctx.rng.random() < 0.5
    shown_a, shown_b = (solution_b, solution_a) if swapped else (solution_a, solution_b)
    token = delimiter(ctx.quote_key, problem, solution_a, solution_b)
    try:
        result, reply = await chat_role(
            ctx,
            voter,
            "vote",
            answers_are_own=True,
            problem=problem,
            solution_a=shown_a,
            solution_b=shown_b,
            delimiter=token,
        )
    except REQUEST_ERRORS as exc:
        return Vote(voter=voter, winner=None, raw="", error=error_text(exc))
    verdict_line = ctx.prompts.reply_format("vote") == "verdict_line"
    shown = parse_vote(reply, token, (shown_a, shown_b), problem=problem, verdict_line=verdict_line)
    winner: Literal["a", "b"] | None = shown
    if shown is not None and swapped:
        winner = "b" if shown == "a" else "a"
    return Vote(voter=voter, winner=winner, raw=result.text, latency_s=result.latency_s)


def make_env() -> trueskill.TrueSkill:
    """A TrueSkill environment with the library defaults and no draws (every vote picks one)."""
    return trueskill.TrueSkill(draw_probability=0.0)


def new_rating(env: trueskill.TrueSkill) -> trueskill.Rating:
    return env.create_rating()


def apply_vote(
    env: trueskill.TrueSkill,
    ratings: dict[str, trueskill.Rating],
    winner_member: str,
    loser_member: str,
) -> None:
    """Update both authors' ratings in place after one vote. Same-author pairs change nothing
    (a member cannot gain or lose rating against itself)."""
    if winner_member == loser_member:
        return
    w = ratings.get(winner_member) or new_rating(env)
    lo = ratings.get(loser_member) or new_rating(env)
    (w_new,), (lo_new,) = env.rate([(w,), (lo,)], ranks=[0, 1])  # rank 0 = winner
    ratings[winner_member], ratings[loser_member] = w_new, lo_new
