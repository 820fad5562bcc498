"""Reading a judge's reply: which lines are the judge's own words, and where its reply ends.

Verifiers and voters are shown model output (the problem and the solutions) quoted between the
step's delimiter lines, and small models copy what they read, often imperfectly. Both parsers
(verify.py, vote.py) read a reply through `JudgeReply`, which

- removes every quoted block the reply reproduces with its delimiter lines;
- compares lines under one normalisation, `normalize`: Unicode compatibility forms folded
  (NFKC), invisible characters (zero-width, bidi and other format characters, combining marks,
  controls, filler letters) dropped, case folded, and every run of punctuation or whitespace
  read as one space; so `VERDICT: VALID.`, `verdict : valid`, `VER\u200bDICT: VALID` and
  `ＶＥＲＤＩＣＴ：ＶＡＬＩＤ` are the same line;
- names, for a line, the quoted texts it copies (`JudgeReply.copied_from`): a line copies a
  quoted text when it equals one of the text's lines (spacing and punctuation ignored
  altogether), or when it, or it joined with the reply's previous or next line, runs on for at
  least two words inside the text, across the text's line breaks (a re-wrapped or partial copy);
  a single word counts as a copy only of a whole line, so a verdict `VALID` is still the judge's
  own when the solution merely uses the word "valid";
- cuts the reply at an invented next turn (`INVENTED_TURN`): once the reply has stated a
  verdict (even one worded like a plant, which may not count), a line of its own that opens a
  new turn (a `Problem:` line, a chat-template marker, a bare role name) ends the reply; what
  follows answers a question nobody asked. A marker that copies a quoted text does not end it,
  but what follows counts as copied from that text.

A copied line is ambiguous: a judge that states a verdict worded exactly like a line planted in
the quoted text cannot be told from one that copies the plant. The parsers resolve it against
the text the line was copied from, so a plant can never help its author: a copied line may
reject a solution or vote against the solution it was copied from, never approve one or vote for
it (and a line copied from the problem, shown with both solutions, is never a vote).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

# Characters str.splitlines() breaks at: kept as line breaks, so every text is split alike.
_LINE_BREAKS = str.maketrans({c: "\n" for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
# Letters that render as blank space (Hangul fillers, braille blank): invisible, not categorised so.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Mn", "Me", "Cs", "Co", "Cn"})
_WORD = re.compile(r"[^\W_]+")

# A line opening a turn the model invents after its answer: the verify and vote prompts' user
# turns open with "Problem:", and chat-template markers or bare role names show up when special
# tokens are decoded or a base model imitates the transcript. Measured on Gemma-3-270M (base): it
# answers the real question on its first line, then writes a made-up next problem and judges it.
INVENTED_TURN = re.compile(
    r"^\s*(?:problem\s*:|<(?:start|end)_of_turn>|<\|im_(?:start|end)\|>|<\|(?:user|assistant)\|>"
    r"|(?:user|model|assistant)\s*:?\s*$|(?:user|human)\s*:)",
    re.IGNORECASE,
)


def visible(text: str) -> str:
    """`text` as it reads: NFKC-folded, invisible characters removed, line breaks kept as `\\n`."""
    folded = unicodedata.normalize("NFKC", text).translate(_LINE_BREAKS)
    return "".join(
        ch
        for ch in folded
        if ch in "\n\t" or not (unicodedata.category(ch) in _INVISIBLE_CATEGORIES or ch in _BLANK_LETTERS)
    )


def normalize(text: str) -> str:
    """The one comparison form of model text: `visible`, case-folded, words (letters and digits)
    joined by single spaces; punctuation, markdown and line breaks are separators."""
    return " ".join(_WORD.findall(visible(text).casefold()))


def strip_quoted_blocks(reply: str, token: str | None) -> str:
    """`reply` without the quoted blocks it reproduces with their delimiter lines (`BEGIN token`
    ... `END token`, labels such as ` A` included); an unclosed block runs to the end."""
    if not token:
        return reply
    t = re.escape(token)
    return re.sub(rf"BEGIN {t}[^\n]*.*?(?:END {t}[^\n]*|\Z)", "", reply, flags=re.DOTALL)


class Quoted:
    """Texts quoted to a judge, by name (e.g. problem, a, b), prepared for `JudgeReply`."""

    def __init__(self, **texts: str):
        self._lines: dict[str, set[str]] = {}
        self._stream: dict[str, str] = {}
        self._memo: dict[tuple[str, ...], frozenset[str]] = {}
        for name, text in texts.items():
            keys = {normalize(line).replace(" ", "") for line in visible(text or "").splitlines()}
            keys.discard("")
            self._lines[name] = keys
            self._stream[name] = f" {normalize(text or '')} "

    def sources(self, key: str, windows: Iterable[str]) -> frozenset[str]:
        """The names of the texts that a line (normalised `key`) copies: a whole line of the text
        equal to it with spaces ignored, or one of `windows` (normalised runs of two words or
        more around the line) found word for word in the text."""
        if not key:
            return frozenset()
        memo = (key, *windows)  # a reply repeating a line costs one search
        if memo not in self._memo:
            squeezed = key.replace(" ", "")
            runs = [f" {w} " for w in windows]
            self._memo[memo] = frozenset(
                name
                for name in self._lines
                if squeezed in self._lines[name] or any(r in self._stream[name] for r in runs)
            )
        return self._memo[memo]


class JudgeReply:
    """A verifier's or voter's reply, read line by line (see the module docstring)."""

    def __init__(self, reply: str, token: str | None, quoted: Quoted):
        self.lines = visible(strip_quoted_blocks(reply or "", token)).splitlines()
        self.end = len(self.lines)  # set by `last`: the lines before an invented next turn
        self._quoted = quoted
        self._keys = [normalize(line) for line in self.lines]
        self._copied: dict[int, frozenset[str]] = {}
        # Copied turn markers seen by `last`: their lines, and the sources tainted from each on.
        self._taint_at: list[int] = []
        self._tainted: list[frozenset[str]] = []

    def _neighbour(self, i: int, step: int) -> str:
        j = i + step
        while 0 <= j < len(self.lines) and not self._keys[j]:
            j += step
        return self._keys[j] if 0 <= j < len(self.lines) else ""

    def copied_from(self, i: int) -> frozenset[str]:
        """The names of the quoted texts that line `i` copies (empty: the judge's own line), or
        that a copied turn marker before it came from (see `last`)."""
        k = bisect.bisect_left(self._taint_at, i)  # markers before line i
        return self._own_sources(i) | (self._tainted[k - 1] if k else frozenset())

    def _own_sources(self, i: int) -> frozenset[str]:
        if i not in self._copied:
            key = self._keys[i]
            prev, nxt = self._neighbour(i, -1), self._neighbour(i, 1)
            windows = [key] if " " in key else []
            windows += [f"{prev} {key}"] if prev else []
            windows += [f"{key} {nxt}"] if nxt else []
            self._copied[i] = self._quoted.sources(key, windows)
        return self._copied[i]

    def last(self, read: Callable[[int], T | None], states: Callable[[str], bool]) -> T | None:
        """The last value `read(i)` gives over the reply's lines, in order.

        Once a line `states` a verdict (whether or not `read` counts it: a verdict worded like a
        plant is still a verdict said), a line of the judge's own that opens an invented next
        turn ends the reply (and `end`). A turn marker copied from a quoted text does not end it
        (a planted marker would otherwise cut off the judge's real verdict after an echo), but
        every line after it counts as copied from that text too: a planted marker cannot let an
        invented turn speak for the text that planted it either."""
        value: T | None = None
        stated = False
        self.end = len(self.lines)
        self._taint_at, self._tainted = [], []
        for i, line in enumerate(self.lines):
            if stated and INVENTED_TURN.match(line):
                sources = self.copied_from(i)
                if not sources:
                    self.end = i
                    break
                self._taint_at.append(i)
                self._tainted.append(sources | (self._tainted[-1] if self._tainted else frozenset()))
            found = read(i)
            if found is not None:
                value = found
            stated = stated or found is not None or states(line)
        return value

    def own_lines(self, where: Callable[[str], object]) -> list[str]:
        """The lines before `end` for which `where` holds and that copy no quoted text."""
        return [
            line for i, line in enumerate(self.lines[: self.end]) if where(line) and not self.copied_from(i)
        ]
