"""Which serving module builds the backend for each kind of `backends:` entry.

Each backend module registers one builder for its settings model:

    @register(SGLangBackend)
    def build(name, spec, members, run_paths, bus, config) -> SGLangServing: ...

and `serving.build_backend` looks the builder up by the type of `cfg.backends[name]`, so `Serving`
never names a backend. Adding a backend is its settings model in `agora_cli/config/schema.py` (config is
read and validated below this layer, so the model cannot live beside its backend) and one module
here that registers a builder for it; `serving/__init__.py` imports the backend modules so their
registrations run, and a test checks that every settings model has a builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from agora_cli.config import Config, Member
from agora_cli.errors import ServerError
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving.base import ServingBackend

SpecT = TypeVar("SpecT", bound=BaseModel)

# (backend name, its settings, the members it serves, run paths, event bus, the whole run config)
Builder = Callable[[str, SpecT, list[Member], RunPaths, EventBus, Config], ServingBackend]

_BUILDERS: dict[type[BaseModel], Builder] = {}


def register(model: type[SpecT]) -> Callable[[Builder[SpecT]], Builder[SpecT]]:
    """Decorator: the function builds the backend for `backends:` entries of settings `model`."""

    def add(builder: Builder[SpecT]) -> Builder[SpecT]:
        if model in _BUILDERS and _BUILDERS[model] is not builder:
            # Two modules claiming one kind would make the winner depend on import order.
            raise ValueError(f"a builder for {model.__name__} is already registered")
        _BUILDERS[model] = builder
        return builder

    return add


def registered_models() -> set[type[BaseModel]]:
    """The settings models that have a builder."""
    return set(_BUILDERS)


def builder_for(name: str, spec: BaseModel) -> Builder:
    """The registered builder for backend `name`'s settings `spec` (looked up by its type)."""
    builder = _BUILDERS.get(type(spec))
    if builder is None:
        kind = getattr(spec, "kind", type(spec).__name__)
        raise ServerError(f"backend {name!r} has kind {kind!r}, which no serving module builds")
    return builder
