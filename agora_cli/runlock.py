"""One writer per run directory: a kernel lock (`flock`) on a file in the run directory.

Every command that writes a run's store (`agora run`, `train`, `generate|solve|verify|vote`, and
each run of `agora ablate`) holds `RUN/agora.lock` for as long as it runs; `agora serve` holds
`RUN/serve.lock` (one owner of a run's servers; `agora run` attaching to them is a reader of
those servers, not a second owner). A second holder exits 2 with one line naming the first: its
pid, its command and since when, which the holder writes into the lock file.

The lock is the kernel's, not the file's existence: the kernel drops an `flock` when its holder
dies, SIGKILL and OOM included, so a killed run never leaves the directory stuck and the next
command simply takes the lock (the stale pid text is overwritten). File descriptors are not
inherited by child processes (Python opens them non-inheritable and servers, workers and graders
are started with exec), so a server that outlives its agora does not keep the lock.

Readers never take it: `agora status`, `agora report` and `agora eval` read a live run's store
read-only (SQLite WAL) and write only their own files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agora_cli.errors import RunLockedError

RUN_LOCK = "agora.lock"  # held by store writers
SERVE_LOCK = "serve.lock"  # held by `agora serve`


def command_line() -> str:
    """This process's command, as a user would have typed it (for the holder's message)."""
    argv = sys.argv[1:]
    return shlex.join(["agora", *argv])


@contextmanager
def hold(root: Path | str, *, name: str = RUN_LOCK, command: str | None = None) -> Iterator[Path]:
    """Hold the lock `name` in run directory `root` for the block; RunLockedError when taken.

    Creates `root` if needed. Released when the block ends, and by the kernel if the process dies.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(_held_message(root, path)) from None
        os.ftruncate(fd, 0)
        holder = {"pid": os.getpid(), "command": command or command_line(), "since": time.time()}
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # unlocked: no holder to name
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder(path: Path) -> dict | None:
    """What the current holder wrote into the lock file (None when unreadable or empty)."""
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _held_message(root: Path, path: Path) -> str:
    what = "served" if path.name == SERVE_LOCK else "in use"
    h = holder(path)
    if h is None:  # the holder is between taking the lock and writing its name
        return (
            f"run directory {root} is {what} by another agora process; wait for it to "
            "finish or stop it, then re-run"
        )
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(h.get("since", 0))))
    return (
        f"run directory {root} is {what} by pid {h.get('pid')} (`{h.get('command')}`) "
        f"since {since}; wait for it to finish or stop it (Ctrl-C), then re-run"
    )
