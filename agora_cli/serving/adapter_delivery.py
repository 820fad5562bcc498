"""How an adapter directory on the driver reaches the node of each Ray replica (config
`cluster.adapters`): the pieces both sides share, with no Ray import.

- `object_store` (the default): the driver packs the directory once into tar bytes (`pack`), puts
  them in Ray's object store, and each replica's actor unpacks them into a folder on its own node
  (`unpack`); the load names that folder. No shared filesystem, no S3.
- `s3`: the driver uploads the same bytes once (`S3Store.upload`; boto3, the `agora-cli[s3]`
  extra); each actor downloads them and unpacks as above. Credentials come from the environment
  of each process (boto3's own lookup: `AWS_ACCESS_KEY_ID`, `~/.aws`, an instance role), never
  from the config.
- `shared`: every node reads the driver's directory by path (a shared filesystem); nothing is
  copied.

A node-local copy lives at `<node temp dir>/agora-adapters/<run>-<backend>/<node>/<name>-<digest>`
(removed when the name is unloaded there, and with the replicas when they are stopped): the
digest of the packed bytes keeps two different adapters that were given one name (a run directory
deleted and started over) from ever sharing a copy, and `unpack` is atomic (a half-written folder is
never loaded, and a copy already there is kept, since the same name and digest are the same bytes).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_cli import packing
from agora_cli.errors import ServerError


@dataclass(frozen=True)
class Packed:
    """An adapter directory as bytes, with the digest that names its node-local copies."""

    data: bytes
    digest: str  # sha256 of `data`, first 12 hex digits


def pack(adapter_dir: Path) -> Packed:
    """The files of `adapter_dir` as bytes (`packing.pack`: equal files, equal bytes) and their
    digest."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ServerError(f"adapter directory {adapter_dir} does not exist; nothing to deliver")
    data = packing.pack(adapter_dir)
    return Packed(data, packing.digest(data))


def local_root(run: str, node: str) -> Path:
    """This node's folder for a run's adapter copies (`node`: Ray's node id, so simulated nodes
    sharing one temp dir keep separate copies)."""
    return Path(tempfile.gettempdir()) / "agora-adapters" / run / node[:12]


def unpack(data: bytes, digest: str, root: Path, name: str) -> Path:
    """Unpack `data` as `root/<name>-<digest>` (atomically) and return that folder; one already
    there is kept (the same name and digest are the same bytes)."""
    return packing.unpack_atomic(data, root / f"{name}-{digest}", replace=False)


def remove(root: Path, name: str) -> None:
    """Delete the node-local copies of `name` under `root` (best effort: a leftover costs disk)."""
    for path in root.glob(f"{name}-*"):
        if path.name.removeprefix(f"{name}-").isalnum():  # `a-v1-<digest>`, never `a-v10-...`
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class S3Store:
    """Adapters in an S3 bucket (or any S3-compatible store at `endpoint_url`)."""

    bucket: str
    prefix: str = "agora"
    endpoint_url: str | None = None

    def key(self, run: str, name: str, digest: str) -> str:
        return f"{self.prefix.strip('/')}/{run}/{name}-{digest}.tar".lstrip("/")

    def _client(self) -> Any:
        try:
            import boto3
        except ImportError as e:
            raise ServerError(
                "cluster.adapters: s3 needs boto3 on the driver and every node: pip install 'agora-cli[s3]'"
            ) from e
        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def upload(self, key: str, data: bytes) -> None:
        try:
            self._client().put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as e:  # botocore's errors share no base class worth importing
            raise ServerError(f"could not upload s3://{self.bucket}/{key}: {type(e).__name__}: {e}") from e

    def delete(self, key: str) -> None:
        """Delete the object at `key`, best effort: a refusal or no answer leaves it (it costs
        storage only)."""
        with contextlib.suppress(Exception):  # botocore's errors share no base class worth importing
            self._client().delete_object(Bucket=self.bucket, Key=key)

    def download(self, key: str) -> bytes:
        try:
            body: bytes = self._client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as e:
            raise ServerError(f"could not download s3://{self.bucket}/{key}: {type(e).__name__}: {e}") from e
        return body
