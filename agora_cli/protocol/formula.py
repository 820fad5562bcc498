"""A small evaluator for the arithmetic that final answers take, for the one grader.

`evaluate(s)` reads a formula as a value: an exact rational where it can (`\\frac12`, `1/2`,
`0.5`, `1.5 \\times 10^{3}`, `2^{10}`), a float where it must (`\\sqrt{2}`, `\\pi`), or, when the
formula has single-letter variables, its values at three fixed rational points (so `(x+1)^2` and
`x^2+2x+1` are the same answer). Anything else (functions, `\\pm`, matrices, words) is None and
the caller compares it as text. Values past `_MAX_BITS` bits or formulas past
`MAX_FORMULA_CHARS` characters are refused, never computed (a power tower must not hang a step).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

Value = tuple  # ("exact", Fraction) | ("float", float) | ("fn", (values at the probe points))
MAX_FORMULA_CHARS = 400  # a longer "answer" is compared as text, never evaluated
_MAX_BITS = 4096  # an exact value larger than this is not compared (e.g. a power tower)
_POINTS = (Fraction(3, 7), Fraction(-5, 3), Fraction(11, 2))  # where expressions in x are compared
_FUNCS = {"\\frac", "\\sqrt", "\\pi", "\\infty", "\\times", "\\cdot", "\\div"}
_TOKEN = re.compile(r"\s*(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\\[A-Za-z]+|[A-Za-z]+|\S)")


class _Fail(Exception):
    pass


class _Expr:
    """A small evaluator for the arithmetic answers take: exact rationals where it can, floats
    (irrationals), or the expression's values at `_POINTS` when it has variables. Anything else
    (functions, \\pm, matrices) fails, and the part compares as text."""

    def __init__(self, tokens: list[str], point: Fraction | None, names: set[str]):
        self.toks, self.i, self.point, self.names = tokens, 0, point, names

    @staticmethod
    def parse(s: str) -> Value | None:
        tokens: list[str] = []
        pos = 0
        while pos < len(s):
            m = _TOKEN.match(s, pos)
            if not m:
                break
            tokens.append(m.group(1))
            pos = m.end()
        if not tokens or any(t.startswith("\\") and t not in _FUNCS for t in tokens):
            return None
        names: set[str] = set()
        try:
            first = _Expr(list(tokens), _POINTS[0], names).run()
            if not names:
                return first
            # Variables: the value at each probe point (one variable name set per answer).
            values = tuple(_Expr(list(tokens), p, set()).run() for p in _POINTS)
            return ("fn", (tuple(sorted(names)), values))
        except (_Fail, ZeroDivisionError, OverflowError, ValueError, RecursionError):
            return None

    def run(self) -> Value:
        v = self.expr()
        if self.i != len(self.toks):
            raise _Fail
        return v

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        t = self.peek()
        if t is None or (want is not None and t != want):
            raise _Fail
        self.i += 1
        return t

    def expr(self) -> Value:
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            w = self.term()
            v = _arith(v, w, op)
        return v

    def term(self) -> Value:
        v = self.unary()
        while True:
            t = self.peek()
            if t in ("*", "/", "\\times", "\\cdot", "\\div"):
                self.take()
                v = _arith(v, self.unary(), "/" if t in ("/", "\\div") else "*")
            elif (
                t is not None
                and (t[0].isdigit() or t[0] == "." or t.isalpha() or t in ("(", "{"))
                or t
                in (
                    "\\frac",
                    "\\sqrt",
                    "\\pi",
                )
            ):
                # Juxtaposition: 2\sqrt{2}, 3x; a whole number before \frac is a mixed number.
                mixed = (
                    t == "\\frac" and v[0] == "exact" and v[1].denominator == 1 and self._last_was_number()
                )
                w = self.power()
                v = _arith(v, w, "+" if mixed else "*")
            else:
                return v

    def _last_was_number(self) -> bool:
        return (
            self.i > 0 and self.toks[self.i - 1][0].isdigit() and (self.i < 2 or self.toks[self.i - 2] != "^")
        )

    def unary(self) -> Value:
        if self.peek() == "-":
            self.take()
            return _arith(("exact", Fraction(0)), self.unary(), "-")
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> Value:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exp = self.unary() if self.peek() in ("-", "+") else self.atom(single_digit=False)
            return _pow(base, exp)
        return base

    def arg(self) -> Value:
        """A macro argument: a {group} or a single character (`\\frac12`)."""
        t = self.peek()
        if t is not None and t[0].isdigit() and len(t) > 1:
            self.toks[self.i] = t[1:]  # `\frac12`: the argument is the first digit only
            return ("exact", Fraction(int(t[0])))
        return self.atom()

    def atom(self, single_digit: bool = False) -> Value:
        t = self.take()
        if t in ("(", "{", "["):
            v = self.expr()
            self.take({"(": ")", "{": "}", "[": "]"}[t])
            return v
        if t[0].isdigit() or t[0] == ".":
            return ("exact", Fraction(t)) if abs(_exponent(t)) <= 1000 else _fail()
        if t == "\\frac":
            num = self.arg()
            return _arith(num, self.arg(), "/")
        if t == "\\sqrt":
            index: Value = ("exact", Fraction(2))
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            return _pow(self.arg(), _arith(("exact", Fraction(1)), index, "/"))
        if t == "\\pi":
            return ("float", math.pi)
        if t == "\\infty":
            return ("float", math.inf)
        if len(t) == 1 and t.isalpha():  # a variable; a longer word is prose
            self.names.add(t)
            return ("exact", self.point if self.point is not None else _POINTS[0])
        raise _Fail


def _fail() -> Value:
    raise _Fail


def _exponent(t: str) -> int:
    m = re.search(r"[eE]([-+]?\d+)$", t)
    return int(m.group(1)) if m else 0


def _arith(a: Value, b: Value, op: str) -> Value:
    if a[0] == "exact" and b[0] == "exact":
        x, y = a[1], b[1]
        r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: x / y}[op]()
        return _checked(r)
    x, y = float(a[1]), float(b[1])
    r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y, "/": lambda: x / y}[op]()
    if math.isnan(r):
        raise _Fail
    return ("float", r)


def _checked(r: Fraction) -> Value:
    if r.numerator.bit_length() > _MAX_BITS or r.denominator.bit_length() > _MAX_BITS:
        raise _Fail
    return ("exact", r)


def _pow(base: Value, exp: Value) -> Value:
    if exp[0] == "exact" and exp[1].denominator == 1 and base[0] == "exact":
        e = int(exp[1])
        bits = max(base[1].numerator.bit_length(), base[1].denominator.bit_length())
        if bits * abs(e) > _MAX_BITS:
            raise _Fail
        return _checked(base[1] ** e)
    if (
        base[0] == "exact"
        and exp[0] == "exact"
        and base[1] >= 0
        and exp[1].denominator <= 64
        and abs(exp[1].numerator) <= 64
    ):
        # A rational root that comes out exact (\sqrt{9/4} = 3/2) stays exact.
        root = Fraction(round(float(base[1]) ** float(exp[1]) * 10**9), 10**9)
        if root ** exp[1].denominator == base[1] ** exp[1].numerator:
            return ("exact", root)
    fb, fe = float(base[1]), float(exp[1])
    if fb < 0 and fe != int(fe):
        raise _Fail
    return ("float", math.pow(fb, fe))


def _values_equal(a: Value, b: Value) -> bool:
    if a[0] == "fn" or b[0] == "fn":
        if a[0] != "fn" or b[0] != "fn" or a[1][0] != b[1][0]:
            return False
        return all(_values_equal(x, y) for x, y in zip(a[1][1], b[1][1], strict=True))
    if a[0] == "exact" and b[0] == "exact":
        return a[1] == b[1]
    x, y = float(a[1]), float(b[1])
    if math.isinf(x) or math.isinf(y):
        return x == y
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def evaluate(formula: str) -> Value | None:
    """`formula` as a value (see the module docstring), or None when it is not arithmetic."""
    if len(formula) > MAX_FORMULA_CHARS:
        return None
    return _Expr.parse(formula)


def values_equal(a: Value, b: Value) -> bool:
    """Exact values compare exactly (0.333 is not 1/3), floats to 1e-9 relative, formulas with
    variables at every probe point (and only with the same variables)."""
    return _values_equal(a, b)


def percent_of(v: Value) -> Value | None:
    """v / 100 (what `v%` is as a fraction); None for a formula with variables."""
    return None if v[0] == "fn" else _arith(v, ("exact", Fraction(100)), "/")
