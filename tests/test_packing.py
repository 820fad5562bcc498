"""A folder as bytes and back (`agora_cli/packing.py`): what a training task returns and what an
adapter's trip to a replica's node is made of."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agora_cli.packing import digest, pack, unpack_atomic

pytestmark = pytest.mark.unit


def _folder(root: Path, weights: bytes) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "sub" / "adapter_model.safetensors").write_bytes(weights)
    return root


def test_equal_files_pack_to_equal_bytes_whatever_their_times(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a", b"w"), _folder(tmp_path / "b", b"w")
    os.utime(b / "adapter_config.json", (0, 0))
    assert pack(a) == pack(b) and digest(pack(a)) == digest(pack(b))
    assert digest(pack(_folder(tmp_path / "c", b"other"))) != digest(pack(a))


def test_unpack_atomic_replaces_a_previous_attempts_folder(tmp_path: Path) -> None:
    out = tmp_path / "adapters" / "a-v1"
    _folder(out, b"stale attempt")
    (out / "leftover.bin").write_bytes(b"x")
    unpack_atomic(pack(_folder(tmp_path / "new", b"fresh")), out, replace=True)
    assert (out / "sub" / "adapter_model.safetensors").read_bytes() == b"fresh"
    assert not (out / "leftover.bin").exists()  # replaced whole, not merged
    assert sorted(p.name for p in out.parent.iterdir()) == ["a-v1"]  # no temporary left


def test_unpack_atomic_keeps_a_copy_already_there_when_not_replacing(tmp_path: Path) -> None:
    out = _folder(tmp_path / "node" / "a-v1-digest", b"first")
    unpack_atomic(pack(_folder(tmp_path / "new", b"second")), out, replace=False)
    assert (out / "sub" / "adapter_model.safetensors").read_bytes() == b"first"
