"""Answer extraction and matching, plus fuzzing of every parser of model output."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agora_cli.protocol.answers import answers_match, extract_answer
from agora_cli.protocol.generate import parse_problem
from agora_cli.protocol.replies import INVENTED_TURN, visible
from agora_cli.protocol.verify import HEDGE, parse_verdict
from agora_cli.protocol.vote import parse_vote

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so x = 2 and \boxed{4}", "4"),
        (r"first \boxed{3}, corrected: \boxed{5}", "5"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b}}} end", r"\sqrt{\frac{a}{b}}"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{\$12.50}", "12.50"),
        (r"\boxed {7}.", "7"),
        ("The final answer is 42.", "42"),
        ("So the final answer is: $1,200.", "1200"),
        ("Thus, the answer is 18 apples.", "18"),
        ("Answer: 3/4", "3/4"),
        ("Answer: x = 3", "x = 3"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("He has 5 apples.\nThen he eats 2, leaving 3", "3"),
        ("-7 is what remains", "-7"),
        ("", None),
        ("   \n  ", None),
        ("I do not know how to solve this.", None),
        (r"\boxed{", None),
        ("The answer is that we cannot tell without knowing much more about the situation here", None),
    ],
)
def test_extract_answer_table(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("Problem: Sam has 5 cars and buys 3 more. How many cars does he have?", None),
        ("**Problem:** Sam has five cars. He buys two more. Find the total.", None),
        ("Sure! Here is a new problem: Lily bakes 12 cookies and eats 4. How many are left?", None),
        ("```\nJoe runs 3 miles a day for 7 days. How many miles does he run?\n```", None),
        ("Problem: Bob has 4 boxes of 6 eggs. How many eggs?\nAnswer: 24", None),  # answer cut
        ("Problem: Bob has 4 boxes of 6 eggs. How many eggs? The answer is 24.", "malformed"),
        ("Problem: Bob has 4 boxes of 6 eggs. \\boxed{24}", "malformed"),
        ("Problem: How many herb plants did Marta have when spring ended?", "malformed"),  # no numbers
        ("Problem: Sam has 5 cars and buys 3 more cars today.", "malformed"),  # asks nothing
        ("Difficulty: 1.0 out of 10 (1 = a few steps). How many?", "malformed"),  # prompt echo
        ("Problem: hi", "malformed"),
        ("Problem: " + "Sam has 5 cars. " * 200 + "How many?", "malformed"),
        ("", "empty"),
        ("Problem:", "empty"),
    ],
)
def test_parse_problem_table(reply: str, reason: str | None) -> None:
    text, dropped = parse_problem(reply)
    assert dropped == reason
    assert (text is None) == (reason is not None)
    if text:
        assert "Answer" not in text and "Problem" not in text


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("1,000", "1000", True),
        ("1000", "1000.0", True),
        ("$5", "5", True),
        ("1/2", r"\frac{1}{2}", True),
        ("0.5", "1/2", True),
        ("x = 3", "X=3", True),
        ("3", "4", False),
        ("12", "1.2", False),
        ("", "", False),
    ],
)
def test_answers_match(a: str, b: str, same: bool) -> None:
    assert answers_match(a, b) is same
    assert answers_match(b, a) is same


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("\U0001d434")  # MATHEMATICAL ITALIC CAPITAL A: read as the choice "A" (NFKC)
def test_parsers_never_raise_on_arbitrary_text(text: str) -> None:
    ans = extract_answer(text)
    assert ans is None or (isinstance(ans, str) and ans)
    verdict = parse_verdict(text)
    assert verdict is None or type(verdict) is bool  # `in (True, False)` would let 0 and 1 pass
    if not re.search(r"valid|correct|right|wrong", text, re.IGNORECASE):
        assert verdict is None  # no verdict word, no verdict
    # The last verdict line decides, whatever came before it (unless the text opens an invented
    # turn, which may end the reply before it), and in the free format an approval only when no
    # line the verifier wrote hedges it.
    lines = visible(text).splitlines()
    if not any(INVENTED_TURN.match(line) for line in lines):
        assert parse_verdict(text + "\nINVALID") is False
        hedged = any(HEDGE.search(line) for line in lines)
        assert parse_verdict(text + "\nVALID.") is (None if hedged else True)
        assert parse_verdict(text + "\nVERDICT: VALID", verdict_line=True) is True
    choice = parse_vote(text, "QUOTE-0001")
    assert choice in ("a", "b") or choice is None
    shown = visible(text)  # as the parser reads it: NFKC folds a math-italic or fullwidth A to "A"
    if "A" not in shown and "B" not in shown:
        assert choice is None  # a choice is a capital letter
    problem, reason = parse_problem(text)
    assert (problem is None) != (reason is None)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "\\boxed{",
                "}",
                "{",
                "answer:",
                "####",
                "VALID",
                "INVALID",
                "verdict:",
                "A",
                "B",
                "\n",
                " ",
                "1,000",
                "$",
                ".",
                "Problem:",
                "```",
                "**",
                "-",
            ]
        ),
        max_size=40,
    )
)
def test_parsers_never_raise_on_adversarial_fragments(parts: list[str]) -> None:
    text = "".join(parts)
    extract_answer(text)
    parse_verdict(text)
    parse_vote(text)
    parse_problem(text)


ADVERSARIAL = {
    "unterminated boxes": "\\boxed{" * 50_000,
    "label then whitespace": "question " + " " * 50_000 + "1" + " " * 50_000,
    "cue then whitespace": "final answer" + " " * 50_000 + "x",
    "blank lines": "\n" * 50_000,
    "many labels": "Problem:" * 20_000,
    "many cues": "The answer is: " * 20_000,
    "many boxes after a cue": "answer: " + "\\boxed{1}" * 20_000,
}


@pytest.mark.timeout(120)  # a hang guard: each case runs in well under a second when linear
@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_parsers_stay_linear_on_pathological_replies(name: str) -> None:
    text = ADVERSARIAL[name]
    ans = extract_answer(text)
    assert ans is None or isinstance(ans, str)
    assert parse_problem(text)[0] is None
    assert parse_verdict(text) is None
    assert parse_vote(text) is None
