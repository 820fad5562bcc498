"""Configs: every shipped one loads; broken ones report every problem with its YAML path, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import load_config
from agora_cli.errors import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))
runner = CliRunner()


def test_every_switch_has_an_ablation_config():
    names = {p.stem for p in (REPO / "configs" / "ablations").glob("*.yaml")}
    from agora_cli.config import Ablations

    assert names == {"no-" + f.replace("_", "-") for f in Ablations.model_fields}


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_config_loads_and_names_its_command(path: Path):
    cfg = load_config(path)
    assert len(cfg.members) >= 2
    first = path.read_text().splitlines()[0]
    assert first.startswith("# agora "), f"{path} must start with its run command"
    if path.parent.name == "ablations":
        switch = path.stem.removeprefix("no-").replace("-", "_")
        assert getattr(cfg.ablations, switch) is False
        others = [f for f in type(cfg.ablations).model_fields if f != switch]
        assert all(getattr(cfg.ablations, f) for f in others)


@pytest.mark.parametrize("name,engine", [("tiny", "vllm"), ("tiny-transformers", "transformers")])
def test_tiny_is_the_heterogeneous_cpu_trio(name: str, engine: str):
    """tiny.yaml (the CPU default, on vLLM) and tiny-transformers.yaml differ only in the engine."""
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert [m.name for m in cfg.members] == ["smol-a", "smol-b", "gemma"]
    assert cfg.members[0].model == cfg.members[1].model  # same base, separate adapters
    assert cfg.backend_of("gemma").kind == engine
    assert cfg.members[2].chat_template  # Gemma-3 base ships no chat template
    other = load_config(REPO / "configs" / "tiny-transformers.yaml")
    assert cfg.protocol == other.protocol and cfg.training == other.training


def test_paper_defaults():
    cfg = load_config(REPO / "configs" / "paper-mixed.yaml")
    p, t = cfg.protocol, cfg.training
    assert (p.difficulty.d0, p.difficulty.alpha, p.elite_k, p.buffer_threshold) == (1.0, 0.05, 3, 1024)
    assert (t.r, t.alpha, t.dropout) == (16, 32, 0.05)
    assert (p.sampling.solve.temperature, p.sampling.solve.top_p) == (0.6, 0.95)
    assert p.anchor_every == 5 and p.self_consistency_samples == 32


BROKEN = [
    # (yaml text, the error paths that must all be reported)
    (
        "name: x\nmembers:\n  - {name: a, model: m}\n  - {name: b, model: m, temprature: 1}\n"
        "protocol: {elite_k: -1, problem_per_step: 3}\n",
        {"members[1].temprature", "protocol.elite_k", "protocol.problem_per_step"},
    ),
    ("name: x\nmembers:\n  - {name: a, model: m}\n", {"members"}),
    (
        "name: x\nmembers:\n  - {name: a, model: m}\n  - {name: a, model: m, backend: nope}\n",
        {"members[1].name", "members[1].backend"},
    ),
    (
        "name: x\nbackends:\n  remote: {kind: openai, base_url: 'http://h/v1'}\n"
        "members:\n  - {name: a, model: m, backend: remote}\n  - {name: b, model: m, backend: remote}\n",
        {"members[0].backend", "members[1].backend"},  # LoRA cannot load on openai endpoints
    ),
    (
        "name: x\nbackends:\n  gpu: {kind: sglang, max_lora_rank: 8}\n"
        "members:\n  - {name: a, model: m, backend: gpu}\n  - {name: b, model: m, backend: gpu}\n",
        {"training.r"},
    ),
    ("name: x\nbackends:\n  b: {kind: tgi}\nmembers: []\n", {"backends.b", "members"}),
    ("name: [unclosed\n", {"line 2, column 1"}),
    ("- just\n- a list\n", {"<root>"}),
    (
        "name: x\nmembers:\n  - {name: a, model: m}\n  - {name: b, model: m}\n"
        "protocol: {generators_per_step: 5, difficulty: {d0: 20}}\n",
        {"protocol.generators_per_step", "protocol.difficulty.d0"},
    ),
]


@pytest.mark.parametrize("text,paths", BROKEN)
def test_broken_configs_list_every_problem(tmp_path: Path, text: str, paths: set[str]):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    reported = {p for p, _ in err.value.problems}
    assert paths <= reported

    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 2
    for p in paths:
        assert p in result.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_overrides_apply_and_are_validated(tmp_path: Path):
    tiny = REPO / "configs" / "tiny-transformers.yaml"
    cfg = load_config(tiny, ["protocol.elite_k=5", "ablations.fem=false", "members.0.max_concurrency=2"])
    assert cfg.protocol.elite_k == 5 and cfg.ablations.fem is False
    assert cfg.members[0].max_concurrency == 2
    with pytest.raises(ConfigError) as err:
        load_config(tiny, ["protocol.elite_k=many"])
    assert err.value.problems[0][0] == "protocol.elite_k"
    result = runner.invoke(app, ["validate", str(tiny), "protocol.nope=1"])
    assert result.exit_code == 2 and "protocol.nope" in result.output


def test_extends_merges_and_detects_cycles(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    base = yaml.safe_load((REPO / "configs" / "tiny-transformers.yaml").read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nprotocol: {elite_k: 1}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.name == "child" and cfg.protocol.elite_k == 1
    assert cfg.protocol.problems_per_step == base["protocol"]["problems_per_step"]


def test_yaml_is_loaded_safely(tmp_path: Path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo pwned']\nmembers: []\n")
    with pytest.raises(ConfigError):
        load_config(bad)
