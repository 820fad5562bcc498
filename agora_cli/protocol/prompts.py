"""Prompt templates: one Jinja file per role under `prompts/` (or `cfg.prompts_dir`).

`prompts/` is the repository's top-level folder in a source tree and the copy shipped inside the
package in a wheel; agora_cli/paths.py decides which (PROMPTS_DIR).

A template defines two blocks, `system` and `user`; `render` returns them as chat messages.
Models see no role marker (base models echo their prompt, and a marker line in the echo only
costs tokens and parses); the role travels out of band as the `X-Agora-Role` request header that
`ClientPool.chat(..., role=...)` sends.

Few-shot demonstrations can be real chat turns: inside the user block, `{{ assistant_turn }}` starts
an assistant message and `{{ user_turn }}` a new user message. Tiny models, base models above all,
follow a format they have just "said" far better than one they are told about. The two variables
are random per-render tokens, so model output passed as data can never open a turn of its own.

A prompt set is a directory of templates (`cfg.prompts_dir`). A variant set need not hold every
role: a role it lacks is read from the default set, `prompts/` (so `prompts/capable/` holds only the
verify and vote templates that differ, and solve/generate/explain/evaluate have one home). A file in
a set that names no role (a misspelt `verfy.jinja` would otherwise fall back silently) is an error;
files starting with `_` are partials for `{% include %}`.

A template may declare how its replies are parsed in a `{% block reply_format %}` (see
REPLY_FORMATS); without one the role's parser reads the free formats tiny models produce.

Model output is data: problems, solutions and explanations written by models only ever enter a
template as variables, and Jinja never re-renders a variable's value as template source. Templates
run with StrictUndefined, and `validate` (called once at start) rejects a template that uses a
variable its role does not provide, even inside a branch the sample render does not take.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from agora_cli.errors import PromptError
from agora_cli.paths import PROMPTS_DIR, resolve_shipped

_SEED = {"id": "seed/0", "problem": "Tom has 3 apples and buys 4 more. How many now?", "answer": "7"}
_EXAMPLE = {
    "problem": "Ann has 2 pens and buys 5 more. How many pens does she have?",
    "solution": "2 + 5 = 7, so \\boxed{7}",
    "explanation": "Adding the purchase to the starting amount gives the total.",
}

# The variables each role's template may use, with sample values for `validate`. A role's sample
# sets are rendered in turn (e.g. solve with and without few-shot examples).
ROLE_VARIABLES: dict[str, list[dict[str, Any]]] = {
    "generate": [{"difficulty": 1.0, "seeds": [_SEED]}, {"difficulty": 7.5, "seeds": []}],
    "solve": [
        {"problem": _SEED["problem"], "examples": [_EXAMPLE]},
        {"problem": _SEED["problem"], "examples": [{**_EXAMPLE, "explanation": None}]},
        {"problem": _SEED["problem"], "examples": []},
    ],
    "verify": [{"problem": _SEED["problem"], "solution": "3 + 4 = 7. \\boxed{7}", "delimiter": "Q7F3"}],
    "vote": [
        {
            "problem": _SEED["problem"],
            "solution_a": "3+4=7 \\boxed{7}",
            "solution_b": "7 \\boxed{7}",
            "delimiter": "Q7F3",
        }
    ],
    "explain": [{"problem": _SEED["problem"], "solution": "3 + 4 = 7. \\boxed{7}"}],
    "evaluate": [
        {"problem": _SEED["problem"], "examples": []},
        {"problem": _SEED["problem"], "examples": [_EXAMPLE]},
        {"problem": _SEED["problem"], "examples": [{**_EXAMPLE, "explanation": None}]},
    ],
}
ROLES = tuple(ROLE_VARIABLES)
# How a template asks to be answered, and so how its replies are parsed (`reply_format`):
#   free          the tiny models' formats: a bare word/letter or a plain sentence on its own line
#                 (protocol/verify.py, protocol/vote.py document what counts);
#   verdict_line  the model reasons first and ends with `VERDICT: VALID|INVALID` (verify) or
#                 `VERDICT: A|B` (vote); only such lines count, the last one decides, so words in
#                 the analysis ("step 2 is invalid") never do.
REPLY_FORMATS = ("free", "verdict_line")
FORMATTED_ROLES = ("verify", "vote")  # the roles whose parsers know both formats
TURN_VARIABLES = ("user_turn", "assistant_turn")  # provided by render to every template


class Prompts:
    """The prompt templates of one run. Construct once, `validate()` at start, `render` per call."""

    def __init__(self, prompts_dir: Path | str | None = None):
        # A config's relative prompts_dir (`prompts/capable`) names a shipped set unless the working
        # directory holds a folder of that name (paths.resolve_shipped).
        self.dir = resolve_shipped(prompts_dir) if prompts_dir else PROMPTS_DIR
        # The set's own templates first, then the default set for the roles it does not override.
        self.search = [self.dir]
        if self.dir.resolve() != PROMPTS_DIR.resolve():
            self.search.append(PROMPTS_DIR)
        # Sandboxed: templates may come from a user's prompts_dir; autoescape off (plain text).
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(d) for d in self.search]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
        )
        self._cache: dict[str, jinja2.Template] = {}
        self._formats: dict[str, str] = {}

    def path(self, role: str) -> Path:
        """The file `role` is read from: the set's own, else the default set's."""
        for d in self.search:
            if (d / f"{role}.jinja").exists():
                return d / f"{role}.jinja"
        return self.dir / f"{role}.jinja"

    def _template(self, role: str) -> jinja2.Template:
        if role not in ROLE_VARIABLES:
            raise PromptError(f"unknown prompt role {role!r}; known roles: {', '.join(ROLES)}")
        if role not in self._cache:
            path = self.path(role)
            if not path.exists():
                raise PromptError(
                    f"prompt template {role}.jinja is in none of "
                    f"{', '.join(str(d) for d in self.search)}; restore it or fix prompts_dir in "
                    "the config"
                )
            try:
                self._cache[role] = self.env.get_template(f"{role}.jinja")
            except jinja2.TemplateSyntaxError as e:
                raise PromptError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
        return self._cache[role]

    def variables(self, role: str) -> set[str]:
        """The variables `role`'s template uses (e.g. whether `evaluate` shows `examples`)."""
        self._template(role)  # a clear error when missing or unparsable
        return set(
            meta.find_undeclared_variables(self.env.parse(self.path(role).read_text(encoding="utf-8")))
        )

    def reply_format(self, role: str) -> str:
        """How `role`'s replies are parsed (REPLY_FORMATS): the template's `reply_format` block,
        else "free"."""
        if role not in self._formats:
            tmpl = self._template(role)
            value = "free"
            if "reply_format" in tmpl.blocks:
                try:
                    value = "".join(tmpl.blocks["reply_format"](tmpl.new_context({}))).strip()
                except jinja2.TemplateError as e:
                    raise PromptError(f"{self.path(role)}: reply_format block: {e}") from None
            if value != "free" and (value not in REPLY_FORMATS or role not in FORMATTED_ROLES):
                allowed = REPLY_FORMATS if role in FORMATTED_ROLES else ("free",)
                raise PromptError(
                    f"{self.path(role)}: reply_format {value!r} is not one the {role} parser "
                    f"reads; use one of: {', '.join(allowed)}"
                )
            self._formats[role] = value
        return self._formats[role]

    def sources(self) -> dict[str, Path]:
        """{role: the template file it is read from} (the set's own or the default set's)."""
        return {role: self.path(role) for role in ROLES}

    def validate(self) -> None:
        """Check every role: present, parses, uses only its variables, renders its samples.
        Raises one PromptError listing every problem."""
        problems = self.problems()
        if problems:
            raise PromptError("invalid prompt templates:\n  " + "\n  ".join(problems))

    def problems(self) -> list[str]:
        """Every problem of the set, one line each (empty when it is fine): the directory, files
        that name no role, and per role what `validate` checks."""
        if not self.dir.is_dir():
            return [
                f"prompt set {self.dir} is not a directory; fix prompts_dir in the config "
                f"(e.g. prompts/capable), or leave it unset for {PROMPTS_DIR}"
            ]
        problems: list[str] = []
        for f in sorted(self.dir.glob("*.jinja")):
            if f.stem not in ROLE_VARIABLES and not f.name.startswith("_"):
                problems.append(
                    f"{f}: names no prompt role (roles: {', '.join(ROLES)}; partials start "
                    "with '_'); a misspelt role would silently use the default template"
                )
        for role, samples in ROLE_VARIABLES.items():
            try:
                tmpl = self._template(role)
                if "user" not in tmpl.blocks:
                    raise PromptError(f"{self.path(role)}: defines no {{% block user %}}")
                source = self.path(role).read_text(encoding="utf-8")
                used = meta.find_undeclared_variables(self.env.parse(source))
                unknown = sorted(used - set(samples[0]) - set(TURN_VARIABLES))
                if unknown:
                    raise PromptError(
                        f"{self.path(role)}: uses undefined variable(s) {', '.join(unknown)}; "
                        f"the {role} role provides: {', '.join(sorted(samples[0]))}"
                    )
                for variables in samples:
                    self.render(role, **variables)
                self.reply_format(role)
            except PromptError as e:
                problems.append(str(e))
        return problems

    def render(self, role: str, **variables: Any) -> list[dict[str, str]]:
        """Chat messages for `role`: system, then user (and any demonstration turns), ending with
        a user message. Raises PromptError on a missing variable."""
        tmpl = self._template(role)
        token = _turn_token(variables)
        turns = {"user_turn": f"\x00{token}:user\x00", "assistant_turn": f"\x00{token}:assistant\x00"}
        try:
            ctx = tmpl.new_context({**variables, **turns})
            parts = {
                name: "".join(tmpl.blocks[name](ctx)) for name in ("system", "user") if name in tmpl.blocks
            }
        except jinja2.UndefinedError as e:
            raise PromptError(
                f"{self.path(role)}: {e.message}; the {role} role provides: "
                f"{', '.join(sorted(ROLE_VARIABLES[role][0]))}"
            ) from None
        except jinja2.TemplateError as e:  # e.g. the sandbox refusing an unsafe attribute
            raise PromptError(f"{self.path(role)}: {type(e).__name__}: {e}") from None
        if "user" not in parts:
            raise PromptError(f"{self.path(role)}: defines no {{% block user %}}")
        system = parts.get("system", "").strip()
        if token in system:
            raise PromptError(f"{self.path(role)}: turn markers belong in the user block")
        messages = [{"role": "system", "content": system}]
        for speaker, text in _split_turns(parts["user"], token):
            if messages[-1]["role"] == speaker:  # two markers in a row: one message
                messages[-1]["content"] = (messages[-1]["content"] + "\n" + text).strip()
            else:
                messages.append({"role": speaker, "content": text})
        if messages[-1]["role"] != "user" or len(messages) < 2:
            raise PromptError(f"{self.path(role)}: the user block must end with a user turn")
        return messages


def prompt_set_note(prompts_dir: Path | str | None) -> str:
    """One line naming where each role's template comes from, for `agora validate`."""
    prompts = Prompts(prompts_dir)
    own = [r for r, path in prompts.sources().items() if path.parent == prompts.dir]
    if prompts.dir.resolve() == PROMPTS_DIR.resolve():
        return f"prompts: the default set {PROMPTS_DIR} (tiny-model formats)"
    rest = f"; the rest from {PROMPTS_DIR}" if len(own) < len(ROLES) else ""
    return f"prompts: {', '.join(own)} from {prompts.dir}{rest}"


def _turn_token(variables: dict[str, Any]) -> str:
    """A random token that occurs in none of the variables' text."""
    blob = repr(variables)
    while True:
        token = "AGORA-TURN-" + secrets.token_hex(8)
        if token not in blob:
            return token


def _split_turns(text: str, token: str) -> list[tuple[str, str]]:
    """[(speaker, text)] from a rendered user block; empty segments are dropped."""
    out: list[tuple[str, str]] = []
    speaker = "user"
    pieces = text.split(f"\x00{token}:")
    for i, piece in enumerate(pieces):
        if i:
            speaker, _, piece = piece.partition("\x00")
        if piece.strip():
            out.append((speaker, piece.strip()))
    return out
