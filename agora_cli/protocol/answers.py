"""The one answer grader: a reply's final answer, and whether two answers are the same.

Every place that compares an answer with another goes through `grade` (a reply or an extracted
answer against a gold answer) or `answers_match` (two extracted answers): member pass@1 and
`@majority` in `agora eval` and the anchor, the consensus audit's probes, and the isolated
control's self-consistency grouping. One rule, so a majority can never be credited where every
member was graded wrong, and two samples that agree are never split by spelling.

The rule, in order:

1. **The final answer** (`extract_answer`): whichever comes last in the reply, the last
   `\\boxed{}` or the last stated answer ("the final answer is", "the answer is", "answer:",
   "####"); a reply that corrects itself is graded by what it settled on, never by the set of
   everything it boxed. A short one-line reply is its own answer; otherwise the last number of
   the last lines.
2. **Normalisation** (`canonical`): markup (`$`, `\\text{}`, `\\left`, `\\!`), thousands
   separators (`1,000`, `1{,}000`, `1 000 000`), currency and trailing unit words (`18 dollars`),
   degrees, a leading `x =`, spaced signs (`- 2`); `%` marks a percentage.
3. **Structure**: a set `\\{..\\}` or an unbracketed list (`2, 3`, `x = 2 or x = -3`) compares
   unordered; a tuple or an interval `(a, b]` compares in order, brackets included; unions in order.
4. **Values**: each part is evaluated (`formula.evaluate`): numbers, `\\frac12`, `1/2`, `0.5`, `\\sqrt`,
   `\\pi`, powers and scientific notation (`1.5 \\times 10^{3}`), single-letter variables. Two
   exact values compare exactly (so 0.333 is not 1/3), irrational ones to 1e-9 relative, and
   expressions in variables at three fixed rational points. A percentage equals its number or its
   number / 100. A part that is not a formula compares as case-folded text.
5. **Symbolic fallback**: only where a part could not be read as a value, `grade` may ask a
   `symbolic(a, b)` callable (math-verify, on the two final answers only). It runs only inside the
   grader's worker processes (`agora_cli.evaluation.grading`), which enforce a hard deadline;
   in-process callers (the self-consistency grouping) skip it, and so compare such parts as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agora_cli.protocol.formula import MAX_FORMULA_CHARS, Value, evaluate, percent_of, values_equal

Symbolic = Callable[[str, str], bool]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
# A number as prose writes it: thousands groups (comma, space, LaTeX's {,}), a spaced sign.
_DIGITS = r"(?:\d{1,3}(?:(?:,|\{,\}|\\,| |\\ )\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+"
_NUMBER = re.compile(rf"[-−]?\s?(?:{_DIGITS})")  # at the start of an answer: `- 2` is -2
_NUMBER_IN_TEXT = re.compile(rf"[-−]?(?:{_DIGITS})")  # in prose, `8 - 3` ends in 3
# Cues of a stated answer; each captures (up to 400 characters of) the rest of its line without
# consuming it (a lookahead), so a second cue on the same line (a correction) is found too; the
# bound keeps a reply made of thousands of cues linear.
_CUES = [
    re.compile(r"final\s+answer\s*(?:is|:|=)[ \t:]*(?=([^\n]{0,400}))", re.IGNORECASE),
    re.compile(r"\bthe\s+answer\s+is[ \t:]*(?=([^\n]{0,400}))", re.IGNORECASE),
    re.compile(r"\banswer\s*[:=][ \t]*(?=([^\n]{0,400}))", re.IGNORECASE),
    re.compile(r"^[ \t]*####[ \t]*(?=([^\n]{0,400}))", re.MULTILINE),
]
_MAX_ANSWER_CHARS = 60  # a stated "answer" longer than this is prose
_LAST_LINES = 3


# --------------------------------------------------------------------------- extraction


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """(position, contents) of every \\boxed{...}, matching nested braces; unterminated ones are
    skipped. One pass pairs every brace (a stack), so a reply full of unterminated `\\boxed{`
    stays linear."""
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]  # index of each boxed's "{"
    if not starts:
        return []
    closing: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return [(o, text[o + 1 : closing[o]]) for o in starts if o in closing]


def normalize_answer(ans: str) -> str:
    """Strip markup around an answer: $, \\$, \\text{}, bold, a trailing '.', thousands commas."""
    s = ans.strip()
    s = re.sub(r"^\*+|\*+$", "", s).strip()  # markdown bold
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(?<=\d)(?:,|\\,)(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = s.replace("\\,", " ").replace("−", "-")
    return s.strip().rstrip(".").strip()


def _number_with_units(s: str) -> str | None:
    """`18 dollars` -> `18`: a leading number followed only by unit words, else None."""
    m = _NUMBER.match(s)
    if m and re.fullmatch(_UNITS, s[m.end() :]):
        return m.group(0).strip()
    return None


def _from_cue(captured: str) -> str | None:
    """The answer stated after a cue: a box in it, else the phrase up to the sentence's end."""
    s = captured.strip()
    boxed = [b for _, b in _boxed_spans(s) if b.strip()]
    if boxed:
        return boxed[-1]
    s = re.sub(r"^[\s*:]+", "", s)
    s = re.split(r"\.(?=\s|$)|(?<![\d\\])\.(?!\d)|;|\n", s, maxsplit=1)[0].strip()  # the sentence
    s = normalize_answer(s)
    if not s:
        return None
    unit = _number_with_units(s)
    if unit is not None:
        return unit
    if all(p.kind != "text" for p in canonical(s).parts):
        return s  # a formula: `x = 5`, `1.5 \times 10^{3}`
    num = _NUMBER.match(s)
    if num:  # a number followed by prose: `8 apples because 5 + 3 = 8`
        return num.group(0)
    return s if len(s) <= _MAX_ANSWER_CHARS else None


def _whole_line_answer(text: str) -> str | None:
    """A one-line reply that is itself an answer (`\\frac{1}{2}`, `x = 5`, `[2,5)`, `Monday`):
    it reads as values throughout, or it is a single word."""
    s = normalize_answer(text)
    if not s or "\n" in s or len(s) > _MAX_ANSWER_CHARS or _BOXED.search(s) or s.count("{") != s.count("}"):
        return None  # an unterminated box is no answer
    unit = _number_with_units(s)
    if unit is not None:
        return unit
    if not re.search(r"[A-Za-z0-9]", s):
        return None  # `??` is no answer
    if " " not in s.strip() or all(p.kind != "text" for p in canonical(s).parts):
        return s
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a reply, lightly normalised; None when nothing sensible is there.

    The last of: every \\boxed{...} and every stated answer ('final answer is X', 'the answer is
    X', 'answer: X', '#### X'), by position, so a correction after a box wins; else a one-line
    reply that is an answer by itself; else the last number in the last few non-empty lines.
    Idempotent: the answer of an extracted answer is itself.
    """
    if not text or not text.strip():
        return None
    boxed = [(pos, b) for pos, b in _boxed_spans(text) if b.strip()]
    last_box = boxed[-1][0] if boxed else -1
    cues = sorted(
        ((m.start(1), m.group(1)) for cue in _CUES for m in cue.finditer(text) if m.start(1) > last_box),
        reverse=True,
    )
    found = boxed[-1][1] if boxed else None
    for _, captured in cues:  # the latest stated answer after the last box, if any
        if "\\boxed" in captured or "\\fbox" in captured:
            continue  # the box inside the cue's line is already a candidate
        ans = _from_cue(captured)
        if ans is not None:
            found = ans
            break
    if found is not None:
        last = normalize_answer(found)
        return _number_with_units(last) or last or None
    whole = _whole_line_answer(text)
    if whole is not None:
        return whole
    lines = [line for line in text.strip().splitlines() if line.strip()][-_LAST_LINES:]
    numbers = _NUMBER_IN_TEXT.findall("\n".join(lines))
    if numbers:
        return normalize_answer(numbers[-1].replace(" ", "")) or None
    return None


# --------------------------------------------------------------------------- normalisation

# Unit words after a number: words (with `^2`, `/s`) separated by spaces. A single letter glued
# to the number (`2x`) is a variable, not a unit, so a unit needs a space or two letters. Words
# must be separated by spaces so that a run of letters splits one way only (no backtracking blowup).
_UNIT_WORD = r"[A-Za-z]+(?:\^\{?\d\}?)?\.?(?:\s*/\s*[A-Za-z]+)?"
_UNITS = rf"(?=\s+[A-Za-z]|[A-Za-z]{{2}})\s*{_UNIT_WORD}(?:\s+{_UNIT_WORD})*\s*"
_CLEAN = [
    (re.compile(r"\\(?:left|right|displaystyle|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])"), ""),
    (re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:!|;|:|quad|qquad)"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\\$|\$|[€£¥]"), ""),
    (re.compile(r"[−–]"), "-"),
    (re.compile(r"\{,\}|\\,(?=\d{3})"), ","),
    (re.compile(r"\\,|~|\\ "), " "),
]
# `[1,100]` is an interval, not 1100: no thousands directly after an opening bracket.
_THOUSANDS = re.compile(r"(?<![\d.,(\[])(\d{1,3})((?:[, ]\d{3})+)(?!\d)")
# Unit words after a value (`1500 meters`, `\frac{1}{2} cup`): a word of two letters or more is
# never a formula here (variables are single letters).
_TRAILING_WORDS = re.compile(r"(?<=[\d}).%])\s*[A-Za-z]{2}[A-Za-z\s/^{}\d.]*$")
_NAME = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*(?:=(?!=)|\\in(?![A-Za-z]))\s*")  # `x =`, `x \in`
_SEPARATORS = re.compile(r"\s*(?:,|;|\\text\{\s*(?:and|or)\s*\}|\s(?:and|or)\s)\s*")


def _clean(s: str) -> str:
    s = s.strip()
    for pattern, repl in _CLEAN:
        s = pattern.sub(repl, s)
    s = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"[, ]", "", m.group(2)), s)
    return s.strip().rstrip(".").strip()


def _split_top(s: str, sep: re.Pattern[str]) -> list[str]:
    """`s` split on `sep` outside brackets and braces."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = sep.match(s, i)
            if m and m.end() > i:
                parts.append(s[last:i])
                last = i = m.end()
                continue
        i += 1
    parts.append(s[last:])
    return [p.strip() for p in parts]


@dataclass(frozen=True)
class Part:
    """One part of an answer: a value (possibly a percentage), an interval or tuple, or text."""

    kind: str  # "value" | "text" | "bracket"
    text: str  # case-folded, spaces and braces removed (how text parts compare)
    name: str = ""  # `x` of `x = 5` (a part without a name matches any name)
    value: Value | None = None
    percent: bool = False
    inner: tuple[Part, ...] = ()  # a bracket's parts, in order
    brackets: str = ""  # a bracket's opening and closing characters, e.g. "[)"


@dataclass(frozen=True)
class Canonical:
    """An answer normalised for comparison: its parts and how they compare."""

    parts: tuple[Part, ...]
    ordered: bool  # True: a single part, a union of intervals; False: a set or a list


def _text_key(s: str) -> str:
    return re.sub(r"[\s{}]|\\(?=[,;!])", "", s).lower()


def _part(s: str) -> Part:
    named = _NAME.match(s)
    name = named.group(0).split("=")[0].strip().lower() if named else ""  # `X = 3` is `x = 3`
    s = s[named.end() :].strip() if named else s.strip()
    if len(s) <= MAX_FORMULA_CHARS:  # longer is compared as text; keeps the search linear
        s = _TRAILING_WORDS.sub("", s).strip() or s
    key = _text_key(s)
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        inner = _split_top(s[1:-1], re.compile(r"\s*,\s*"))
        if len(inner) >= 2:
            return Part("bracket", key, name, inner=tuple(_part(p) for p in inner), brackets=s[0] + s[-1])
    percent = s.endswith("%")
    body = s[:-1].strip() if percent else s
    value = evaluate(body)
    if value is None:
        return Part("text", key, name)
    return Part("value", key, name, value=value, percent=percent)


def canonical(answer: str) -> Canonical:
    """`answer` (an extracted final answer, or a gold answer) normalised into comparable parts."""
    s = _clean(normalize_answer(answer))
    m = re.fullmatch(r"\\\{(.*)\\\}", s)
    if m:  # a set: unordered
        return Canonical(tuple(_part(p) for p in _split_top(m.group(1), re.compile(r"\s*,\s*"))), False)
    unions = _split_top(s, re.compile(r"\s*(?:\\cup|∪)\s*"))
    if len(unions) > 1:
        return Canonical(tuple(_part(p) for p in unions), True)
    parts = [p for p in _split_top(s, _SEPARATORS) if p]
    if len(parts) > 1:
        return Canonical(tuple(_part(p) for p in parts), False)
    return Canonical((_part(s),), True)


# --------------------------------------------------------------------------- comparison


def _parts_equal(a: Part, b: Part) -> bool:
    if a.name and b.name and a.name != b.name:
        return False
    if a.kind == "value" and b.kind == "value":
        assert a.value is not None and b.value is not None
        if values_equal(a.value, b.value):
            return True
        # A percentage equals its number (50% and 50) or its fraction (50% and 0.5).
        for p, q in ((a, b), (b, a)):
            fraction = percent_of(p.value) if p.percent and not q.percent else None  # type: ignore[arg-type]
            if fraction is not None and values_equal(fraction, q.value):  # type: ignore[arg-type]
                return True
        return False
    if a.kind == "bracket" and b.kind == "bracket":
        return (
            a.brackets == b.brackets
            and len(a.inner) == len(b.inner)
            and all(_parts_equal(x, y) for x, y in zip(a.inner, b.inner, strict=True))
        )
    return a.kind == b.kind == "text" and a.text == b.text


def _unordered_equal(a: tuple[Part, ...], b: tuple[Part, ...]) -> bool:
    rest = list(b)
    for p in a:
        hit = next((i for i, q in enumerate(rest) if _parts_equal(p, q)), None)
        if hit is None:
            return False
        rest.pop(hit)
    return not rest


def canonical_equal(a: Canonical, b: Canonical) -> bool:
    """Two normalised answers are the same answer (the rule in this module's docstring)."""
    if len(a.parts) == 1 and len(b.parts) == 1:
        return _parts_equal(a.parts[0], b.parts[0])
    # An unbracketed list also matches a tuple written in the same order: `2, 3` and `(2, 3)`.
    for x, y in ((a, b), (b, a)):
        if not x.ordered and len(x.parts) > 1 and len(y.parts) == 1 and y.parts[0].kind == "bracket":
            inner = y.parts[0].inner
            return len(inner) == len(x.parts) and all(
                _parts_equal(p, q) for p, q in zip(x.parts, inner, strict=True)
            )
    if len(a.parts) != len(b.parts):
        return False
    if a.ordered and b.ordered:
        return all(_parts_equal(x, y) for x, y in zip(a.parts, b.parts, strict=True))
    return _unordered_equal(a.parts, b.parts)


def _has_text(c: Canonical) -> bool:
    return any(p.kind == "text" or any(q.kind == "text" for q in p.inner) for p in c.parts)


def answers_match(a: str | None, b: str | None, symbolic: Symbolic | None = None) -> bool:
    """Whether two extracted answers are the same answer. `symbolic(a, b)` is asked only when a
    part of either could not be read as a value (see the module docstring, step 5)."""
    if a is None or b is None or not a.strip() or not b.strip():
        return False
    ca, cb = canonical(a), canonical(b)
    if canonical_equal(ca, cb):
        return True
    if symbolic is not None and (_has_text(ca) or _has_text(cb)):
        return bool(symbolic(normalize_answer(a), normalize_answer(b)))
    return False


@dataclass(frozen=True)
class Grade:
    """The verdict on one reply: its final answer (None when it has none) and whether it matches."""

    answer: str | None
    correct: bool


def grade(reply: str, gold: str, symbolic: Symbolic | None = None) -> Grade:
    """THE grading rule: the final answer of `reply` (a whole reply, or an already extracted
    answer: extraction is idempotent) against `gold`."""
    answer = extract_answer(reply)
    return Grade(answer, answers_match(answer, gold, symbolic))
