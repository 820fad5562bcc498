"""Child server processes: launch with a log file, wait for health, stop (SIGTERM, then SIGKILL).

Shared by the `transformers`, `sglang` and `vllm` backends. Each server runs in its own process
group so a Ctrl-C in the terminal reaches agora first, and agora stops its servers in order (the
children would otherwise die mid-request). Each runs under `guard.py`, which stops it when agora itself is
killed (SIGKILL, the OOM killer), whichever thread launched it; see that module for the design.

Every server this process started is remembered until it is reaped, so `kill_all` can SIGKILL
them all at once when shutdown is interrupted by a second signal (`Serving.stop`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agora_cli.errors import ServerError
from agora_cli.serving.guard import REDACT_ENV

_GUARD = Path(__file__).with_name("guard.py")
# Started and not yet reaped, by id (dataclasses are unhashable). Plain dict operations, no lock:
# `kill_all` runs from a signal handler, which must not wait on a lock its own thread holds.
_LIVE: dict[int, ServerProcess] = {}


@dataclass
class Reply:
    """An HTTP answer: status code, decoded JSON body (None when not JSON) and raw text."""

    status: int
    json: Any
    text: str


def http(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One JSON request with the standard library (control-plane calls only; model traffic
    goes through the OpenAI client). Raises OSError when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return Reply(status, parsed, text)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_healthy(url: str, timeout: float = 3.0) -> bool:
    """True when `GET {url}/health` answers 200."""
    try:
        return http("GET", f"{url.rstrip('/')}/health", timeout=timeout).status == 200
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ServerProcess:
    """One server child process: `url` is its root (http://host:port), `log` gets its output."""

    name: str
    cmd: list[str]
    url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a key (VLLM_API_KEY)
    # Replaced by `<redacted>` in the server's log (the guard filters its output): the API key.
    secret: str | None = field(default=None, repr=False)
    # How long the guard lets the server drain after agora died, before SIGKILL.
    orphan_grace_s: float = 5.0
    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The guard's pid, which is also the server's process group id."""
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Launch `cmd` under the guard, in a new process group (see the module docstring)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # -P: the guard's directory (which holds transformers.py) must not shadow real modules.
        guarded = [
            sys.executable,
            "-P",
            str(_GUARD),
            "--parent",
            str(os.getpid()),
            "--grace",
            str(self.orphan_grace_s),
            "--",
            *self.cmd,
        ]
        with self.log.open("ab") as log:
            log.write(f"\n# agora: {' '.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                guarded,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: see module docstring
                env={**os.environ, **self.env, **({REDACT_ENV: self.secret} if self.secret else {})},
            )
        _LIVE[id(self)] = self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, timeout_s: float) -> None:
        """Block until `/health` answers; raise ServerError naming the log when it dies or times
        out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"see {self.log}:\n{tail(self.log)}"
                )
            if is_healthy(self.url, timeout=2.0):
                return
            time.sleep(0.5)
        self.stop()
        raise ServerError(
            f"{self.name} at {self.url} did not become healthy in {timeout_s:.0f} s; see {self.log} "
            "(raise the backend's startup_timeout_s if the machine is just slow)"
        )

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server's process group (`stop_group`; idempotent)."""
        if self.proc is None or self.proc.poll() is not None:
            _LIVE.pop(id(self), None)
            return
        try:
            stop_group(self.proc, grace_s)
        finally:
            if self.proc.poll() is not None:
                _LIVE.pop(id(self), None)

    def kill(self) -> None:
        """SIGKILL the process group (the guard, the server and anything it started), then reap."""
        if self.proc is None:
            return
        kill_group(self.proc)
        if self.proc.poll() is not None:
            _LIVE.pop(id(self), None)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (a guard, what it runs and what that started), SIGKILL
    it after `grace_s`, and reap `proc`.

    Interrupted while waiting (a second Ctrl-C raises KeyboardInterrupt here), it SIGKILLs the
    group before passing the interruption on, rather than leave it running.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        kill_group(proc)
    except BaseException:
        kill_group(proc)
        raise


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads, then reap `proc`."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
        pass


def kill_all() -> int:
    """SIGKILL every server this process started that is still running; returns how many.

    Safe in a signal handler: it only sends signals (reaping is left to whoever waits on each).
    """
    killed = 0
    for server in tuple(_LIVE.values()):
        if server.proc is None or server.proc.returncode is not None:
            continue
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (another user's counts; a zombie, exited but not reaped,
    does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a zombie (an orphan not reaped yet) has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
