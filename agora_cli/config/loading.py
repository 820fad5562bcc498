"""Reading a config: YAML (safe loader), `extends`, `key=value` overrides, and every problem at once.

`load_config` collects *every* problem (schema errors, then cross-field checks) and raises one
`ConfigError` listing each with its YAML path, so `agora validate CONFIG` can print them all and
exit 2.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agora_cli.config.checks import cross_checks
from agora_cli.config.schema import BACKEND_KINDS, Config
from agora_cli.errors import ConfigError, ConfigFileMissing
from agora_cli.model_facts import member_defaults
from agora_cli.paths import resolve_extends


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "<root>"


def _drop_union_tag(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the discriminator value in the path (backends.gpu.sglang.base_port); the
    YAML has no such level, so drop it."""
    if len(loc) > 2 and loc[0] == "backends" and loc[2] in BACKEND_KINDS:
        return loc[:2] + loc[3:]
    return loc


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _containers(annotation: Any) -> list[Any]:
    """`list[X]` / `dict[str, X]` -> [X]: what one index or key below this field holds."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple) and args:
        return [args[0]]
    if origin is dict and len(args) == 2:
        return [args[1]]
    return [c for arg in args for c in _containers(arg)] if origin is not None else []


def valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The setting names the schema accepts in the mapping at YAML path `loc` (e.g.
    ('protocol',) -> Protocol's fields). Lists and `backends.<name>` levels are stepped through;
    a level the schema cannot name gives []."""
    models: list[Any] = [Config]
    for part in loc:
        nxt: list[Any] = []
        for m in models:
            if isinstance(m, type) and issubclass(m, BaseModel):
                field = m.model_fields.get(str(part))
                if field is not None:
                    nxt.append(field.annotation)
            else:  # a list or dict annotation: this part is an index or a key
                nxt += _containers(m)
        models = nxt
    return sorted({name for a in models for m in _models(a) for name in m.model_fields})


def did_you_mean(loc: tuple[Any, ...]) -> str:
    """' (did you mean `protocol.buffer_threshold`?)' for an unknown key at `loc`, or ''."""
    close = difflib.get_close_matches(str(loc[-1]), valid_keys(loc[:-1]), n=1, cutoff=0.6)
    return f"; did you mean `{_loc((*loc[:-1], close[0]))}`?" if close else ""


def parse_override(item: str) -> tuple[list[str], Any]:
    """`protocol.elite_k=5` -> (['protocol', 'elite_k'], 5). The value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError("overrides", [(item, "expected key=value")])
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError("overrides", [(item, "empty key")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:  # e.g. `name=[x` or a `!!python/...` tag: an error, not a crash
        raise ConfigError("overrides", [(item, f"value is not valid YAML: {e}")]) from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            if node is None or not isinstance(node, (dict, list)):
                raise ConfigError("overrides", [(item, f"cannot descend into {part!r}")])
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError("overrides", [(item, f"no list index {last!r}")])
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _problem(err: Any, overrides: dict[str, str]) -> tuple[str, str]:
    """(where, what) for one pydantic error: an unknown key says so with the closest valid
    name, and a problem an override made names the override, not the file."""
    loc = _drop_union_tag(err["loc"])
    where = _loc(loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = f"unknown setting{did_you_mean(loc)}"
    for key, item in overrides.items():  # `traning.lr=3`: the error is at `traning`
        if key == where or key.startswith(where + ".") or key.startswith(where + "["):
            return where, f"from the override `{item}`: {msg}"
    return where, msg


def config_from_dict(data: Any, source: str = "<config>", overrides: dict[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise one ConfigError with every problem.

    `overrides` maps a YAML path to the `key=value` override that set it, so a problem there is
    blamed on the override."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("<root>", "expected a mapping at the top level")])
    try:
        cfg = Config.model_validate(with_model_facts(data))
    except ValidationError as e:
        problems = [_problem(err, overrides or {}) for err in e.errors()]
        if all(msg.startswith("from the override") for _, msg in problems):
            source = f"{source} overrides"  # the file is fine; the command line is not
        # Schema errors can hide cross-field errors; report what we can see of both.
        raise ConfigError(source, problems) from None
    problems = cross_checks(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def with_model_facts(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each member's unset fields filled from its model's facts (agora_cli/
    model_facts.py): a field the YAML sets, even to null or false, wins. Done here, on the
    merged document, so a config that replaces its parent's member list keeps them."""
    members = data.get("members")
    if not isinstance(members, list):
        return data
    filled = [
        {**member_defaults(m["model"]), **m} if isinstance(m, dict) and isinstance(m.get("model"), str) else m
        for m in members
    ]
    return {**data, "members": filled}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`; mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    """Parse one YAML file, following `extends: other.yaml` first (relative to the file, else a
    shipped config of that name: agora_cli/paths.py `resolve_extends`)."""
    if not path.exists():
        raise ConfigFileMissing(path)
    if path.resolve() in chain:
        raise ConfigError(str(path), [("extends", "circular extends chain")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        raise ConfigError(str(path), [(where, f"YAML syntax: {getattr(e, 'problem', e)}")]) from None
    if isinstance(data, dict) and "extends" in data:
        parent = data.pop("extends")
        if not isinstance(parent, str):
            raise ConfigError(str(path), [("extends", "expected a path to another config")])
        base = _read_yaml(resolve_extends(path, parent), chain + (path.resolve(),))
        if not isinstance(base, dict):
            raise ConfigError(str(path), [("extends", f"{parent} is not a mapping")])
        data = _deep_merge(base, data)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config file (safe loader only).

    A config may start from another with `extends: ../paper-mixed.yaml`; its own keys then
    override the parent's (mappings merge, lists replace).
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(str(path), [("<root>", "expected a mapping at the top level")])
        data = apply_overrides(data, overrides)
    given = {
        _loc(tuple(int(p) if p.isdigit() else p for p in parse_override(o)[0])): o for o in overrides or []
    }
    # The last override of a key is the one that took effect.
    return config_from_dict(data, str(path), given)


def dump_config(cfg: Config) -> str:
    """YAML of the fully resolved config (stored in each run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
