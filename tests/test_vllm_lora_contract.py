"""Contract test against vLLM's own LoRA code (the project's `.venv-vllm`, vLLM 0.32): the adapter
agora's trainer writes for each paper architecture loads into the server agora launches for it.

For Qwen3-1.7B, Phi-4-mini, Gemma-3-4B and Llama-3.2-1B (their shipped config.json, shrunk as
bench/gpu_check.py's `--tiny` does: the same classes and module names, random weights), and for
Gemma-3-4B as its checkpoint really loads (Gemma3ForConditionalGeneration, with a vision tower),
the trainer's `lora_model` writes an adapter with `paper-mixed.yaml`'s training settings. The
probe (`tests/contract/vllm_lora_probe.py`, in the vLLM venv) builds vLLM's model class for the
architecture on CPU under the engine configuration of `paper-mixed-vllm.yaml`'s launch command
and loads the adapter the way `POST /v1/load_lora_adapter` does: PEFTHelper.validate_legal,
LoRAModel.from_local_checkpoint against the modules vLLM expects for that model, packing and
copying every tensor into its layer. Two adapters agora must never write are refused or lose
weights there: a rank above --max-lora-rank, and PEFT's plain all-linear over the multimodal
Gemma-3 (vLLM takes it but drops its vision-tower modules without a word).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agora_cli.config import Training, load_config
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.vllm import VLLMServing
from agora_cli.training.trainer import lora_model

pytestmark = pytest.mark.integration

MODULE = "vllm.entrypoints.openai.api_server"
CONFIG = "configs/paper-mixed-vllm.yaml"
# Paper architecture (tests/data/model_configs) -> the model agora serves for it, where it does.
ARCHS = {
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "phi-4-mini": "microsoft/Phi-4-mini-instruct",
    "gemma-3-4b": "google/gemma-3-4b-it",
    "llama-3.2-1b": None,  # named in the paper's text only: no shipped member
}
LAYERS = 2  # num_hidden_layers of the shrunk configs
# The modules of an all-linear adapter as vLLM's layers hold them (q/k/v and gate/up packed).
VLLM_LAYERS = ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


def vllm_python() -> str:
    python = os.environ.get("AGORA_VLLM_PYTHON") or str(REPO_DIR / ".venv-vllm/bin/python")
    if not Path(python).exists():
        pytest.fail(f"no vLLM venv at {python}: run scripts/setup.sh or set AGORA_VLLM_PYTHON")
    return python


def server_args(tmp: Path) -> tuple[VLLMServing, dict[str, list[str]]]:
    """The vLLM backend of paper-mixed-vllm.yaml and each base's arguments after the module."""
    cfg = load_config(REPO_DIR / CONFIG)
    (backend,) = [b for b in Serving(cfg, RunPaths(tmp)).backends.values() if isinstance(b, VLLMServing)]
    bases = backend._bases(planned=True)
    args = {}
    for i, base in enumerate(bases):
        cmd = backend.command(
            base, backend.cfg.base_port + i, backend._chat_template(base, bases[base], False)
        )
        args[base] = cmd[cmd.index(MODULE) + 1 :]
    return backend, args


def tiny_models(tmp: Path) -> dict[str, str]:
    """Random-weight models of the paper architectures, shrunk, saved as checkpoints; plus
    Gemma-3-4B as its checkpoint loads (multimodal, a small vision tower)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration

    from bench.gpu_check import load_config as arch_config  # imports torch: not at collection

    dirs = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch_config(arch, tiny=True)))
        dirs[arch] = str(tmp / arch)
        model.save_pretrained(dirs[arch])
    text = arch_config("gemma-3-4b", tiny=True)
    text.pop("architectures")
    mm = Gemma3Config(
        text_config=text,
        mm_tokens_per_image=4,
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
    )
    mm.architectures = ["Gemma3ForConditionalGeneration"]
    dirs["gemma-3-4b-it"] = str(tmp / "gemma-3-4b-it")
    Gemma3ForConditionalGeneration(mm).save_pretrained(dirs["gemma-3-4b-it"])
    return dirs


def save_adapter(model_dir: str, out: Path, cfg: Training) -> str:
    """What the trainer writes for a member of this model (a fresh round's adapter)."""
    lora_model(model_dir, cfg, None, "cpu").save_pretrained(str(out))
    return str(out)


def run_probe(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [vllm_python(), str(REPO_DIR / "tests/contract/vllm_lora_probe.py")],
        input=json.dumps({"cases": cases}),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, f"probe failed (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(line[len("PROBE ") :])["cases"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("vllm-lora")
    backend, args = server_args(tmp / "run")
    training = load_config(REPO_DIR / CONFIG).training
    models = tiny_models(tmp / "models")
    adapters = {name: save_adapter(d, tmp / "adapters" / name, training) for name, d in models.items()}
    # Broken on purpose: a rank above the server's --max-lora-rank ...
    over = training.model_copy(update={"r": backend.cfg.max_lora_rank * 2})
    adapters["rank-over"] = save_adapter(models["qwen3-1.7b"], tmp / "adapters" / "rank-over", over)
    # ... and PEFT's plain all-linear over the whole multimodal Gemma-3 (the vision tower too).
    whole = get_peft_model(
        AutoModelForCausalLM.from_pretrained(models["gemma-3-4b-it"]),
        LoraConfig(r=training.r, lora_alpha=training.alpha, target_modules="all-linear"),
    )
    whole.save_pretrained(str(tmp / "adapters" / "gemma-whole"))
    adapters["gemma-whole"] = str(tmp / "adapters" / "gemma-whole")

    def served(name: str) -> list[str]:
        base = ARCHS.get(name.removesuffix("-it")) or "Qwen/Qwen3-1.7B"  # Llama: the same flags
        return args[base]

    model_of = {"rank-over": "qwen3-1.7b", "gemma-whole": "gemma-3-4b-it"}
    cases = [
        {
            "name": name,
            "model": models[model_of.get(name, name)],
            "adapter": path,
            "args": served(model_of.get(name, name)),
        }
        for name, path in adapters.items()
    ]
    rows = run_probe(cases)
    return {"backend": backend, "rows": {r["name"]: r for r in rows}, "adapters": adapters}


@pytest.mark.parametrize("name", [*ARCHS, "gemma-3-4b-it"])
def test_trainer_adapter_loads_into_the_vllm_server_agora_launches(probe: dict[str, Any], name: str) -> None:
    row = probe["rows"][name]
    backend = probe["backend"]
    # The LoRA pool vLLM built from agora's command line.
    assert row["max_lora_rank"] == backend.cfg.max_lora_rank == 16
    assert row["max_loras"] == backend.cfg.max_loras
    assert row["error"] is None, f"{name}: vLLM refuses the trainer's adapter: {row['error']}"
    assert row["rank"] == 16
    assert row["unused"] == [], f"{name}: vLLM would drop {row['unused']}"
    # Every attention and MLP projection of every decoder layer carries the adapter, nothing else.
    assert len(row["applied"]) == 4 * LAYERS
    assert sorted({n.rsplit(".", 1)[-1] for n in row["applied"]}) == VLLM_LAYERS
    assert all(".layers." in n and "vision" not in n for n in row["applied"])
    assert set(VLLM_LAYERS) <= set(row["supported"])


def test_vllm_classes_are_the_paper_architectures(probe: dict[str, Any]) -> None:
    classes = {n: probe["rows"][n]["model_class"] for n in [*ARCHS, "gemma-3-4b-it"]}
    assert classes == {
        "qwen3-1.7b": "Qwen3ForCausalLM",
        "phi-4-mini": "Phi3ForCausalLM",
        "gemma-3-4b": "Gemma3ForCausalLM",
        "llama-3.2-1b": "LlamaForCausalLM",
        "gemma-3-4b-it": "Gemma3ForConditionalGeneration",
    }
    # Phi-3's fused projections are their own adapter modules; the others' q/k/v are packed.
    assert probe["rows"]["phi-4-mini"]["packed"]["qkv_proj"] == ["qkv_proj"]
    assert probe["rows"]["qwen3-1.7b"]["packed"]["qkv_proj"] == ["q_proj", "k_proj", "v_proj"]


def test_rank_above_the_servers_max_lora_rank_is_refused(probe: dict[str, Any]) -> None:
    row = probe["rows"]["rank-over"]
    assert row["error"] and "LoRA rank 32 is greater than max_lora_rank 16" in row["error"]


def test_whole_multimodal_adapter_would_lose_its_vision_tower_weights(probe: dict[str, Any]) -> None:
    """vLLM loads it without a word (the tower's modules are in its expected names: the tower is
    built of vLLM linear layers), but only the text decoder's LoRA reaches a layer: without
    --enable-tower-connector-lora the tower gets no LoRA slots, and the PEFT names
    (`vision_tower.encoder...`) are not vLLM's (`vision_tower.vision_model.encoder...`)."""
    row = probe["rows"]["gemma-whole"]
    assert row["error"] is None
    assert row["applied"] == probe["rows"]["gemma-3-4b-it"]["applied"]
    assert row["unused"] and all(n.startswith("vision_tower.") for n in row["unused"])
    assert {"fc1", "fc2", "out_proj"} <= {n.rsplit(".", 1)[-1] for n in row["unused"]}
