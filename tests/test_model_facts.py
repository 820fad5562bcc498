"""Each model's facts reach every shipped config that names it, and every GPU config fits its GPU.

- The facts (agora_cli/model_facts.py) land in each member at config load, so the server's launch
  command (SGLang's or vLLM's, as `agora serve --dry-run` prints it), the trainer's settings (the
  member as `training/rounds.py` hands it over) and each request's extra body carry them; a field
  the YAML sets wins; a config replacing its parent's member list keeps them.
- The homogeneous configs are the paper's three-model groups.
- The GPU memory plan (config/gpu.py): `agora validate --gpu-memory` refuses paper-mixed on a 40
  GiB GPU (exit 2, naming the servers) and passes it on 80; every shipped GPU config passes on the
  GPU its header names; vLLM's flags come from the same plan as SGLang's.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import (
    Config,
    VLLMBackend,
    chat_template_text,
    config_from_dict,
    gpu_plan,
    load_config,
    memory_plan,
)
from agora_cli.model_facts import FACTS, facts_for
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.vllm import VLLMServing, default_python

pytestmark = pytest.mark.unit

CONFIGS = sorted(str(p.relative_to(REPO_DIR)) for p in (REPO_DIR / "configs").rglob("*.yaml"))
# The GPU each shipped GPU config's header says it needs (GiB per GPU).
GPU_CONFIGS = {
    "configs/paper-mixed.yaml": 80,
    "configs/paper-mixed-vllm.yaml": 80,
    "configs/homogeneous-1b.yaml": 40,
    "configs/homogeneous-4b.yaml": 80,
    "configs/cluster/paper-mixed-ray.yaml": 80,  # each replica's share, as on one GPU
}


def _launch_lines(cfg: Config, tmp_path: Path) -> dict[str, str]:
    """member name -> the launch line of its server (as `agora serve --dry-run` prints it)."""
    out = {}
    for line in Serving(cfg, RunPaths(tmp_path)).describe():
        cmd, _, who = line.rpartition("    # ")
        args = cmd.split()[1:]  # the "[backend]" label off, then the environment's NAME=value
        while args and re.fullmatch(r"[A-Z_]+=\S*", args[0]):
            args.pop(0)
        for name in who.split(", "):
            out[name] = " ".join(args)
    return out


@pytest.mark.parametrize("path", CONFIGS)
def test_every_member_of_every_shipped_config_carries_its_models_facts(path: str, tmp_path: Path) -> None:
    cfg = load_config(REPO_DIR / path)
    lines = _launch_lines(cfg, tmp_path)
    extra = Serving(cfg, RunPaths(tmp_path)).client_pool().extra_body
    for m in cfg.members:
        f = facts_for(m.model)
        trainer = m.model_dump(mode="json")  # what the trainer is given (training/rounds.py)
        assert trainer["trust_remote_code"] is f.trust_remote_code, (path, m.name)
        assert trainer["chat_template"] == f.chat_template, (path, m.name)
        assert trainer["chat_template_kwargs"] == f.chat_template_kwargs, (path, m.name)
        assert extra.get(m.name, {}).get("chat_template_kwargs") == f.chat_template_kwargs, (path, m.name)
        line = lines.get(m.name)
        if line is None or "launch_server" not in line and "api_server" not in line:
            continue  # transformers serve reads trust/template per request, not from flags
        assert ("--trust-remote-code" in line.split()) is f.trust_remote_code, (path, m.name, line)
        if f.chat_template:
            template = re.search(r"--chat-template (\S+)", line)
            assert template, (path, m.name, line)
            want = (REPO_DIR / f.chat_template).read_text()
            given = Path(template.group(1))
            # vLLM's copy under the run's logs is written at start (a dry run names it only); what
            # it will hold is the member's template text.
            assert (given.read_text() if given.exists() else chat_template_text(m)) == want, (path, m.name)


def test_a_field_the_yaml_sets_wins_over_the_facts() -> None:
    cfg = config_from_dict(
        {
            "name": "x",
            "backends": {"sglang": {"kind": "sglang"}},
            "members": [
                {"name": "a", "model": "openbmb/BitCPM4-1B", "backend": "sglang", "trust_remote_code": False},
                {"name": "b", "model": "Qwen/Qwen3-1.7B", "backend": "sglang", "chat_template_kwargs": None},
                {"name": "c", "model": "Qwen/Qwen3-1.7B", "backend": "sglang"},
            ],
        }
    )
    a, b, c = cfg.members
    assert a.trust_remote_code is False and a.chat_template == FACTS["openbmb/BitCPM4-1B"].chat_template
    assert b.chat_template_kwargs is None
    assert c.chat_template_kwargs == {"enable_thinking": False}


def test_the_homogeneous_configs_are_the_papers_three_model_groups() -> None:
    groups = {
        "homogeneous-1b": {"openbmb/BitCPM4-1B", "meta-llama/Llama-3.2-1B-Instruct", "google/gemma-3-1b-it"},
        "homogeneous-4b": {"google/gemma-3-4b-it", "Qwen/Qwen3-4B", "microsoft/Phi-4-mini-instruct"},
    }
    for name, models in groups.items():
        cfg = load_config(REPO_DIR / "configs" / f"{name}.yaml")
        assert [m.model for m in cfg.members] == sorted(models, key=[m.model for m in cfg.members].index)
        assert {m.model for m in cfg.members} == models


def test_validate_refuses_paper_mixed_on_40_gib_and_passes_it_on_80() -> None:
    r = CliRunner().invoke(app, ["validate", "configs/paper-mixed.yaml", "--gpu-memory", "40"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "server google/gemma-3-4b-it on a 40 GiB GPU 0" in text
    assert "the trainer on a 40 GiB GPU 0 needs about" in text
    r = CliRunner().invoke(app, ["validate", "configs/paper-mixed.yaml", "--gpu-memory", "80"])
    assert r.exit_code == 0, r.output
    assert "KV room" in r.output


@pytest.mark.parametrize("path", sorted(GPU_CONFIGS))
def test_every_shipped_gpu_config_fits_the_gpu_its_header_names(path: str) -> None:
    gib = GPU_CONFIGS[path]
    header = (REPO_DIR / path).read_text().split("\nname:")[0]
    assert f"{gib} GB" in header, f"{path}: its header must say it needs a {gib} GB GPU"
    cfg = load_config(REPO_DIR / path)
    fits, problems, _ = gpu_plan(cfg, gib, (0.0, 0.0))
    assert fits and problems == []
    for f in fits:
        assert f.kv_room_tokens >= f.tokens_needed


def test_shares_follow_need_not_equal_splits() -> None:
    cfg = load_config(REPO_DIR / "configs/paper-mixed.yaml")
    fits, _, _ = gpu_plan(cfg, 80)
    share = {f.base: f.share for f in fits}
    assert sum(share.values()) == pytest.approx(0.65, abs=1e-3)
    assert share["google/gemma-3-4b-it"] > 1.5 * share["Qwen/Qwen3-1.7B"]


def test_vllm_gpu_commands_split_the_gpu_by_the_same_plan(tmp_path: Path) -> None:
    cfg = load_config(REPO_DIR / "configs/paper-mixed-vllm.yaml")
    lines = _launch_lines(cfg, tmp_path)
    utils = {}
    for m in cfg.members:
        args = lines[m.name].split()
        assert args[0] == sys.executable  # the interpreter running agora on GPU, not .venv-vllm
        assert args[args.index("--max-model-len") + 1] == "8192"
        assert args[args.index("--max-lora-rank") + 1] == "16" and "--max-loras" in args
        utils[m.model] = float(args[args.index("--gpu-memory-utilization") + 1])
    b = cfg.backends["vllm"]
    assert isinstance(b, VLLMBackend)
    bases = {m.model: [m] for m in cfg.members}
    planned = {base: share for rows in memory_plan(b, bases, cfg).values() for base, share, _ in rows}
    # vLLM's utilization is a share of the GPU's total memory: the plan's share itself.
    assert utils == pytest.approx(planned, abs=1e-4)
    assert sum(utils.values()) == pytest.approx(0.65, abs=1e-3)


def test_vllm_cpu_commands_keep_the_cpu_defaults(tmp_path: Path) -> None:
    cfg = load_config(REPO_DIR / "configs/tiny.yaml")
    backend = next(b for b in Serving(cfg, RunPaths(tmp_path)).backends.values())
    assert isinstance(backend, VLLMServing) and not backend.on_gpu
    for line in backend.describe():
        args = line.split()
        assert "--gpu-memory-utilization" not in args
        assert default_python() in args


@pytest.mark.parametrize("path", ["configs/paper-mixed.yaml", "configs/paper-mixed-vllm.yaml"])
def test_a_plan_that_cannot_fit_stops_the_launch_before_any_server_starts(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agora_cli.serving.gpu_check as gpu_check
    from agora_cli.errors import ConfigError
    from agora_cli.serving.lora_server import LoraServing

    monkeypatch.setattr(gpu_check, "cuda_memory_gib", lambda: 40.0)  # as if on a 40 GiB card
    cfg = load_config(REPO_DIR / path)
    backend = next(iter(Serving(cfg, RunPaths(tmp_path)).backends.values()))
    assert isinstance(backend, LoraServing)
    base, members = next(iter(backend._bases(planned=True).items()))
    with pytest.raises(ConfigError, match="on a 40 GiB GPU 0"):
        backend._launch(base, members, 30000, dry_run=False)
