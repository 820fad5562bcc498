"""A folder as bytes and back: how an adapter (or a trainer's inputs and outputs) travels between
the driver and a Ray node, through Ray's object store or an S3 bucket, with no shared filesystem.

`pack` writes only names and contents (no times, owners or modes), so the same files give the same
bytes and the same digest; `unpack` refuses anything that would land outside its target (absolute
paths, `..`, links out: tarfile's `data` filter); `unpack_atomic` extracts beside the target and
renames it into place, so a reader never sees a half-written folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path


def pack(folder: Path) -> bytes:
    """The files under `folder` as an uncompressed tar (safetensors barely compress), in a stable
    order and with no times or owners, so equal files give equal bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False, filter=_plain)
    return buf.getvalue()


def digest(data: bytes) -> str:
    """A short name for packed bytes: the first 12 hex digits of their sha256."""
    return hashlib.sha256(data).hexdigest()[:12]


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def unpack(data: bytes, target: Path) -> None:
    """Extract `pack`'s bytes into `target` (created), refusing paths and links that leave it."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(target, filter="data")


def unpack_atomic(data: bytes, out: Path, *, replace: bool) -> Path:
    """Extract into a temporary sibling of `out`, then rename it to `out`. An `out` already there
    is replaced (`replace`: a previous attempt's folder) or kept (the same bytes under a name that
    carries their digest; another process may have won the rename)."""
    if out.is_dir() and not replace:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        unpack(data, tmp)
        if replace and out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace or not out.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
