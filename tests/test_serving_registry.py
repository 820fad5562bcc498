"""The backend registry: every backend kind the config accepts has exactly one builder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import pytest

from agora_cli.config import BackendSpec, Sampling, SGLangBackend, Strict, load_config
from agora_cli.errors import ServerError
from agora_cli.paths import CONFIGS_DIR, RunPaths
from agora_cli.serving import build_backend
from agora_cli.serving.registry import builder_for, register, registered_models
from agora_cli.serving.transformers import TransformersServing

pytestmark = pytest.mark.unit


def test_every_backend_kind_in_the_config_has_a_builder() -> None:
    """A settings model the YAML accepts but no serving module builds would fail only at start."""
    missing = {m.__name__ for m in get_args(BackendSpec)} - {m.__name__ for m in registered_models()}
    assert not missing, f"no serving module registers a builder for {sorted(missing)}"


def test_build_backend_runs_the_builder_registered_for_the_kind(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS_DIR / "tiny-transformers.yaml")
    backend = build_backend(cfg, "embedded", RunPaths(tmp_path))
    assert isinstance(backend, TransformersServing)
    assert backend.name == "embedded"
    assert sorted(backend.members) == sorted(m.name for m in cfg.members if m.backend == "embedded")
    # No member sets its own sampling in this config: warm-up uses the solve stage's.
    assert backend.warm_sampling == cfg.protocol.sampling.solve


def test_a_members_own_sampling_warms_its_server(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS_DIR / "tiny-transformers.yaml",
        ["members.1.sampling={temperature: 0.3, top_p: 0.5, max_tokens: 7}"],
    )
    backend = build_backend(cfg, "embedded", RunPaths(tmp_path))
    assert isinstance(backend, TransformersServing)
    assert backend.warm_sampling == Sampling(temperature=0.3, top_p=0.5, max_tokens=7)


def test_settings_with_no_builder_are_a_clear_error() -> None:
    class PigeonBackend(Strict):
        kind: Literal["pigeon"] = "pigeon"

    with pytest.raises(
        ServerError, match=r"backend 'coop' has kind 'pigeon', which no serving module builds"
    ):
        builder_for("coop", PigeonBackend())


def test_a_second_builder_for_one_kind_is_refused() -> None:
    """Two modules claiming one kind would leave the choice to import order."""
    with pytest.raises(ValueError, match="SGLangBackend is already registered"):
        register(SGLangBackend)(lambda *args: None)  # type: ignore[arg-type, return-value]
    assert builder_for("gpu", SGLangBackend()).__module__ == "agora_cli.serving.sglang"
