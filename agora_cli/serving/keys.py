"""API keys of the servers agora talks to: the user's, or one agora makes for the run.

The one home of these rules for every backend:

- a backend that names `api_key_env` uses the key in that environment variable (read at start,
  kept in memory);
- a server agora launches without one gets the run's own key (`run_key`): random, made once per
  run directory, stored in `<run>/server.key` with mode 0600 (created with that mode, never
  widened), and read back when `agora run` attaches to `agora serve`'s servers or a run resumes;
- a key never travels in a command line (`ps` shows those to every local user), an event,
  `servers.json`, the config dump or a log line: engines get it through their environment or a
  0600 file (`serving/vllm.py`, `serving/sglang.py`), and a launched server's output is copied
  into its log with the key replaced by `<redacted>` (`process.py`, `guard.py`).

The `transformers` backend cannot take a key (`transformers serve` has no such option) and stays on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import stat
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from agora_cli.config import Config, OpenAIBackend, SGLangBackend, TransformersBackend, VLLMBackend
from agora_cli.errors import ServerError

KEY_FILE = "server.key"  # in the run directory
# The first SGLang release with the fixes for unauthenticated code execution through
# /load_lora_adapter_from_tensors and for the `lora_path` denial of service; pyproject's extra
# asks for it too.
SGLANG_SAFE = (0, 5, 23)


def api_key(backend: str, env: str | None) -> str | None:
    """The key in `$env`, or None when the backend names no variable. A named variable that is
    unset or empty is an error now, before any request, rather than a 401 later."""
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ServerError(
            f"backend {backend!r} reads its API key from ${env}, which is not set; "
            f"export {env}=... and run the command again"
        )
    return value


def server_key(backend: str, env: str | None, run_dir: Path, launch: bool) -> str | None:
    """The key of a backend's servers: `$env` when named; else, for servers agora launches, the
    run's key (`run_key`); else (servers started elsewhere without a key) None."""
    key = api_key(backend, env)
    if key is not None or not launch:
        return key
    return run_key(run_dir)


def run_key(run_dir: Path) -> str:
    """The run's server key: read from `<run_dir>/server.key`, or made and stored there first.

    The file is written under a temporary name created with mode 0600 and linked into place, so
    no reader ever sees it empty or readable by others, and two processes starting at once agree
    on one key (the second link fails and that process reads the first one's key).
    """
    path = Path(run_dir) / KEY_FILE
    key = _read_key(path)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    # A fixed first letter: SGLang's --config hands the key to argparse as `--api-key VALUE`, and
    # a value starting with '-' (1 in 64 of bare url-safe tokens) reads as an option there.
    write_private(tmp, "k" + secrets.token_urlsafe(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    key = _read_key(path)
    if key is None:  # pragma: no cover - we just linked it
        raise ServerError(f"could not create the run's server key at {path}")
    return key


def _read_key(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ServerError(f"cannot read the run's server key {path} ({e})") from e
    with os.fdopen(fd, "r") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ServerError(
                f"{path} (the run's server key) is readable by other users (mode {stat.filemode(mode)}); "
                "delete it and start again: agora makes a new one with mode 0600"
            )
        key = f.read().strip()
    return key or None


def write_private(path: Path, text: str | bytes) -> None:
    """Create `path` with mode 0600 from the start (never world-readable, even for an instant)
    and write `text`; fails when `path` exists (callers write a fresh name, then rename/link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def replace_private(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` (mode 0600), replacing any earlier file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(tmp, text)
    try:
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def installed_sglang() -> str | None:
    """The version of SGLang installed in this interpreter, or None."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def security_warnings(cfg: Config, sglang_version: str | None = None) -> list[str]:
    """What `agora validate` warns about (exit 0): an SGLang older than SGLANG_SAFE when the
    config uses SGLang (`sglang_version`: the installed one, looked up when None), and servers
    reached on a non-loopback host without a key."""
    out = []
    used = {m.backend for m in cfg.members}
    backends = {n: b for n, b in cfg.backends.items() if n in used}
    version = sglang_version or installed_sglang()
    numbers = tuple(int(x) for x in re.findall(r"\d+", version or "")[:3])
    if version and any(isinstance(b, SGLangBackend) for b in backends.values()) and numbers < SGLANG_SAFE:
        safe = ".".join(map(str, SGLANG_SAFE))
        out.append(
            f"SGLang {version} is installed; releases before {safe} let anyone who reaches the "
            f"server run code through /load_lora_adapter_from_tensors or stall it through "
            f"lora_path: pip install 'sglang>={safe}'"
        )
    for name, b in backends.items():
        if isinstance(b, TransformersBackend):
            hosts = [b.host]  # `transformers serve` takes no key at all
        elif isinstance(b, SGLangBackend | VLLMBackend):
            # launched servers always get a key; servers started elsewhere only with api_key_env
            hosts = (
                []
                if b.launch or b.api_key_env
                else [urlsplit(u).hostname or u for us in b.urls.values() for u in us]
            )
        elif isinstance(b, OpenAIBackend):
            hosts = [] if b.api_key_env else [urlsplit(b.base_url).hostname or b.base_url]
        else:  # pragma: no cover - every kind is listed above
            hosts = []
        for host in dict.fromkeys(hosts):
            if not is_loopback(host):
                out.append(
                    f"backends.{name}: requests go to {host}, which is not this machine's loopback, "
                    "without an API key: anyone on the network can use (or, for a LoRA server, "
                    "reconfigure) it; set api_key_env or serve on 127.0.0.1"
                )
    return out


def bearer(key: str | None) -> dict[str, str]:
    """The HTTP headers that carry `key` (none without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}
