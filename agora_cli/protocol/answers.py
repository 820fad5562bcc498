"""Final-answer extraction and cheap answer equality.

Used where the protocol needs an answer without ground truth: a solution with no extractable answer
is a failed attempt, and isolated mode's self-consistency majority compares answers with
`answers_match`. Benchmark grading uses math-verify instead (agora_cli.evaluation).
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# Fallbacks, most explicit first. Each captures the rest of the line after its cue.
_CUES = [
    re.compile(r"final\s+answer\s*(?:is|:|=)[ \t:]*(.+)", re.IGNORECASE),
    re.compile(r"\bthe\s+answer\s+is[ \t:]*(.+)", re.IGNORECASE),
    re.compile(r"\banswer\s*[:=][ \t]*(.+)", re.IGNORECASE),
    re.compile(r"^[ \t]*####[ \t]*(.+)", re.MULTILINE),
]
_MAX_ANSWER_CHARS = 60  # longer than this is prose, not an answer
_LAST_LINES = 3


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, matching nested braces; unterminated ones are skipped.

    One pass pairs every brace (a stack), so a reply full of unterminated `\\boxed{` stays linear.
    """
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
    return [text[o + 1 : closing[o]] for o in starts if o in closing]


def normalize_answer(ans: str) -> str:
    """Strip markup around an answer: $, \\$, \\text{}, trailing '.', thousands commas."""
    s = ans.strip()
    s = re.sub(r"^\*+|\*+$", "", s).strip()  # markdown bold
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    s = s.strip().rstrip(".").strip()
    return s


def _from_cue(captured: str) -> str | None:
    """The answer inside a cue's line: a leading number, else a short phrase, else nothing."""
    s = captured.strip()
    inner = _boxed_contents(s)
    if inner:
        return inner[-1]
    s = re.sub(r"^[\s*:$\\]+", "", s)
    num = _NUMBER.match(s.replace("$", ""))
    if num:
        return num.group(0)
    s = re.split(r"(?<!\d)\.(?!\d)|[;\n]", s, maxsplit=1)[0]
    return s if 0 < len(s.strip()) <= _MAX_ANSWER_CHARS else None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, normalised; None when nothing sensible is there.

    Order: the last \\boxed{...} (nested braces); then 'final answer is X', 'the answer is X',
    'answer: X', '#### X' (the last occurrence of the first cue that appears); then the last number
    in the last few non-empty lines.
    """
    if not text or not text.strip():
        return None
    boxed = [b for b in _boxed_contents(text) if b.strip()]
    if boxed:
        return normalize_answer(boxed[-1]) or None
    for cue in _CUES:
        found = list(cue.finditer(text))
        if found:
            ans = _from_cue(found[-1].group(1))
            if ans is not None and normalize_answer(ans):
                return normalize_answer(ans)
    lines = [line for line in text.strip().splitlines() if line.strip()][-_LAST_LINES:]
    numbers = _NUMBER.findall("\n".join(lines))
    if numbers:
        return normalize_answer(numbers[-1]) or None
    return None


def _as_number(s: str) -> Fraction | None:
    s = s.replace(",", "").replace(" ", "")
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    try:
        if re.fullmatch(r"-?\d+/-?\d+", s):
            num, den = s.split("/")
            return Fraction(int(num), int(den)) if int(den) else None
        m = re.fullmatch(r"-?(\d+\.?\d*|\.\d+)(?:e(-?\d+))?", s, re.IGNORECASE)
        if m:
            # A model can write \boxed{1e99999999}: as an exact Fraction that takes minutes and
            # gigabytes, so such "numbers" compare as text.
            if m.group(2) and abs(int(m.group(2))) > 1000:
                return None
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _canonical(s: str) -> str:
    s = normalize_answer(s).lower()
    s = re.sub(r"\\left|\\right|\s+", "", s)
    return s


def answers_match(a: str, b: str) -> bool:
    """Cheap normalised equality: numbers compare by value (1,000 == 1000 == 1000.0 == \\frac{2}{2}
    * 1000), everything else by canonical text (case, spaces, $ and \\text{} ignored)."""
    if a is None or b is None:
        return False
    ca, cb = _canonical(a), _canonical(b)
    if not ca or not cb:
        return False
    na, nb = _as_number(ca), _as_number(cb)
    if na is not None and nb is not None:
        return na == nb
    return ca == cb
