"""Packing an adapter directory and unpacking it on a node (`serving/adapter_delivery.py`), with no
Ray: what each replica's actor does with the bytes it is given."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agora_cli.errors import ServerError
from agora_cli.serving.adapter_delivery import pack, remove, unpack

pytestmark = pytest.mark.unit


def _adapter(tmp_path: Path, name: str, weights: bytes) -> Path:
    d = tmp_path / "driver" / name
    (d / "sub").mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "sub" / "adapter_model.safetensors").write_bytes(weights)
    return d


def test_an_unpacked_copy_holds_the_same_files_under_its_name_and_digest(tmp_path: Path) -> None:
    packed = pack(_adapter(tmp_path, "v1", b"\x00\x01weights"))
    copy = unpack(packed.data, packed.digest, tmp_path / "node", "a-v1")
    assert copy == tmp_path / "node" / f"a-v1-{packed.digest}"
    assert (copy / "adapter_config.json").read_text() == '{"r": 8}'
    assert (copy / "sub" / "adapter_model.safetensors").read_bytes() == b"\x00\x01weights"
    assert [p.name for p in (tmp_path / "node").iterdir()] == [copy.name]  # no temporary left


def test_other_weights_under_one_name_get_their_own_copy(tmp_path: Path) -> None:
    """A run directory started over reuses `a-v1` for new weights: the old copy must not be loaded
    for it (and the digest of the same bytes is the same, so a retry reuses its copy)."""
    first, second = pack(_adapter(tmp_path, "v1", b"old")), pack(_adapter(tmp_path, "v1b", b"new"))
    assert pack(_adapter(tmp_path, "v1c", b"old")).digest == first.digest
    a = unpack(first.data, first.digest, tmp_path / "node", "a-v1")
    b = unpack(second.data, second.digest, tmp_path / "node", "a-v1")
    assert a != b and (b / "sub" / "adapter_model.safetensors").read_bytes() == b"new"
    assert unpack(first.data, first.digest, tmp_path / "node", "a-v1") == a


def test_a_tar_reaching_outside_its_folder_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(buf.getvalue(), "d", tmp_path / "node", "a-v1")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "node" / "a-v1-d").exists()


def test_remove_deletes_only_that_names_copies(tmp_path: Path) -> None:
    node = tmp_path / "node"
    for name in ("a-v1-0123abcd", "a-v1-v2-0123abcd", "a-v10-0123abcd"):
        (node / name).mkdir(parents=True)
    remove(node, "a-v1")
    assert sorted(p.name for p in node.iterdir()) == ["a-v1-v2-0123abcd", "a-v10-0123abcd"]


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        pack(tmp_path / "nope")
