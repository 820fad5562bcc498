"""`agora grade GOLD REPLY`: the final answer the grader reads in a reply, and its verdict.

Exit 0 on a match and 1 on a mismatch (as `diff` does), 2 on a usage error. `REPLY` may be `-`
to read a (multi-line) reply from stdin. A gold answer that starts with `-` is taken as it is
(`agora grade -2 "..."`). `agora grade --self-test` runs the shipped table of gold/reply pairs
through the same grader and prints the pass count per category.
"""

from __future__ import annotations

import sys

import typer
from rich.text import Text

from agora_cli.cli.app import app, console

MATCH, MISMATCH = 0, 1


def _usage(message: str) -> None:
    # typer's own exception class (it vendors click): rendered as a usage error, exit 2.
    raise typer.BadParameter(message)


@app.command("grade", context_settings={"ignore_unknown_options": True})
def grade_command(
    gold: str | None = typer.Argument(None, help="The gold answer, e.g. 1000 or '\\frac{1}{2}'."),
    reply: str | None = typer.Argument(None, help="The reply (a whole reply or an answer); - reads stdin."),
    self_test: bool = typer.Option(False, "--self-test", help="Grade the shipped answer-pair table."),
    timeout_s: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds for a symbolic comparison."),
) -> None:
    """Grade REPLY against GOLD with the one grader `agora eval`, the anchor and the audit use."""
    from agora_cli.evaluation.grading import symbolic_checker
    from agora_cli.protocol.answers import grade

    for value in (gold, reply):
        if value is not None and value.startswith("--"):
            _usage(f"no such option: {value}")
    if self_test:
        if gold is not None or reply is not None:
            _usage("--self-test takes no GOLD or REPLY")
        raise typer.Exit(_self_test(timeout_s))
    if gold is None or reply is None:
        _usage("give GOLD and REPLY (REPLY may be - to read stdin), or --self-test")
    if reply == "-":
        reply = sys.stdin.read()
    with symbolic_checker(timeout_s) as symbolic:
        verdict = grade(reply, gold, symbolic)  # type: ignore[arg-type]
    console.print(Text("answer: ") + Text(verdict.answer if verdict.answer is not None else "(none)"))
    console.print(Text("gold:   ") + Text(gold))  # type: ignore[arg-type]
    console.print(Text("match", style="green") if verdict.correct else Text("mismatch", style="red"))
    raise typer.Exit(MATCH if verdict.correct else MISMATCH)


def _self_test(timeout_s: float) -> int:
    """Print (passed, rows) per category and every row graded wrong; 0 when all pass, else 1."""
    from agora_cli.evaluation.answer_pairs import check_pairs, load_pairs
    from agora_cli.evaluation.grading import symbolic_checker
    from agora_cli.protocol.answers import grade

    pairs = load_pairs()
    with symbolic_checker(timeout_s) as symbolic:
        result = check_pairs(pairs, lambda todo: [grade(r, g, symbolic).correct for r, g in todo])
    for category, (k, n) in result.per_category.items():
        console.print(Text(f"{category:<16} {k:>3}/{n}", style="" if k == n else "red"))
    for row, got in result.wrong:
        console.print(
            Text("wrong: ", style="red")
            + Text(f"[{row.category}] gold {row.gold!r}, reply {row.reply!r}: expected ")
            + Text(f"{'match' if row.match else 'mismatch'}, got {'match' if got else 'mismatch'}")
        )
    console.print(Text(f"total            {result.passed:>3}/{result.total}"))
    return MATCH if not result.wrong else MISMATCH
