"""Run one server as our child and stop it when agora dies: `guard.py --parent PID -- CMD...`.

agora starts every server with its own process group (so a terminal Ctrl-C reaches agora first and
agora stops its servers in order) and stops it with SIGTERM to the group, then SIGKILL after a
grace (uvicorn drains in-flight requests on SIGTERM; the hot-swap relies on that). None of that
runs when agora is SIGKILLed or taken by the OOM killer, and the servers would keep their RAM and
cores forever. This guard sits between agora and the server:

    agora ──Popen(start_new_session)──▶ guard (group leader) ──Popen──▶ server (same group)

- agora's `ServerProcess.stop` is unchanged: SIGTERM to the group reaches the server directly
  (exactly once: the guard does not forward it, so drain semantics are what they were), the
  guard waits for the server and exits with its status, and SIGKILL to the group takes both.
- When agora dies, the guard is re-parented: a thread polls `getppid()` and then stops the group
  itself (SIGTERM, `--grace` seconds, SIGKILL), including anything the server started (SGLang's
  scheduler processes share its group).

Why not `prctl(PR_SET_PDEATHSIG)` on the server, as the grader does for its pool: the signal fires
when the *thread* that forked the child exits, not the process, and hot-swaps launch servers from
the round manager's thread, which ends while its server must live on. A long-lived launcher
thread doing every Popen would fix that but needs a `preexec_fn` in a threaded program (the
subprocess docs warn it can deadlock), is Linux-only, delivers one signal with no grace or
SIGKILL follow-up, and reaches only the server, not its children. The guard costs one small
Python process per server (about 12 MB; it imports nothing but the standard library: agora
launches it as a script with `-P`, not through the package) and works on macOS too.

The guard also keeps the server's API key out of its log: given the key in `AGORA_GUARD_REDACT`
(its environment, which only the user can read; never its command line), it removes that variable
before starting the server, reads the server's output through a pipe and writes it to the log line
by line with the key replaced by `<redacted>` (SGLang logs its `server_args`, key included, at
start). Without that variable the server writes to the log directly, as before.

A guard can itself be SIGKILLed alone: Ray, when an actor's worker process dies (`ray.kill`, a
crash), SIGKILLs that worker's children, and the guard of a replica's server is one; the server, a
grandchild, would be left running with its port and memory. So the guard forks a watchdog into
the server's group right after launching it: it ignores SIGTERM (agora's stop is for the server),
waits for the guard to go, and then, if the server still runs, stops the group as an orphaned
guard would (SIGTERM, `--grace` seconds, SIGKILL, itself included).

`exit_with_parent` is the same watch for our own children that can simply exit (the merge).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

POLL_S = 0.5  # how often an orphan is noticed; getppid() is a cheap syscall
REDACT_ENV = "AGORA_GUARD_REDACT"  # the secret to keep out of the log; removed before the server starts
REDACTED = b"<redacted>"


def watch_parent(parent: int, on_orphan: Callable[[], None], poll_s: float = POLL_S) -> None:
    """Call `on_orphan` from a daemon thread once `parent` is no longer our parent process.

    Re-parenting (to init or a subreaper) is what a parent's death looks like from here; this
    works whichever thread of the parent started us, and catches a parent that died before we
    got this far (getppid() differs from the start).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        on_orphan()

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def exit_with_parent(parent: int, poll_s: float = POLL_S) -> None:
    """Exit this process at once (status 1) when `parent` dies."""
    watch_parent(parent, lambda: os._exit(1), poll_s)


def _stop_orphaned(child: subprocess.Popen, grace_s: float) -> None:
    """agora is gone: SIGTERM the group (the server and whatever it started), SIGKILL after
    `grace_s`. Signalling our own group signals us too; the SIGTERM handler ignores it and the
    SIGKILL ends the guard with the rest."""
    leader = os.getpgrp() == os.getpid()
    try:
        if leader:
            os.killpg(0, signal.SIGTERM)
        else:
            child.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while child.returncode is None and time.monotonic() < deadline:
        time.sleep(0.1)  # main thread reaps the child and sets returncode
    if leader:
        os.killpg(0, signal.SIGKILL)  # stragglers of the server's own, and this guard
    else:
        child.kill()


def _watchdog(guard: int, server: int, grace_s: float, poll_s: float = POLL_S) -> None:
    """The forked watchdog's life (see the module docstring); never returns."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while os.getppid() == guard:
            time.sleep(poll_s)
        if _exists(server):  # the guard was killed under a running server
            os.killpg(0, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _exists(server) and time.monotonic() < deadline:
                time.sleep(0.1)
            os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def _exists(pid: int) -> bool:
    """`pid` still runs (a zombie awaiting its new parent's reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def run(parent: int, grace_s: float, cmd: list[str]) -> int:
    """Run `cmd` until it exits, stopping it when `parent` dies; returns its exit code."""
    if os.getppid() != parent:
        return 1  # agora died before the server started: start nothing
    leader = os.getpgrp() == os.getpid()
    child: subprocess.Popen | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        # As group leader the group's SIGTERM already reached the server; keep waiting for it to
        # drain. Started without our own group (by hand), pass it on.
        if not leader and child is not None and child.returncode is None:
            child.send_signal(signum)

    # Before the child exists, so a stop that races the launch is not lost; caught handlers reset
    # to the default in the child at exec, so the server gets SIGTERM's default or its own.
    signal.signal(signal.SIGTERM, on_sigterm)
    secret = os.environ.pop(REDACT_ENV, "").encode()
    try:
        if secret:
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        else:
            child = subprocess.Popen(cmd)  # stdio (the log file) is inherited
    except OSError as e:  # lands in the server's log, which agora's error message names
        print(f"agora guard: cannot run {cmd[0]}: {e}", file=sys.stderr)
        return 127
    if leader and os.fork() == 0:  # before any thread starts here: fork is safe
        _watchdog(os.getppid(), child.pid, grace_s)
    copier = None
    if secret and child.stdout is not None:
        copier = threading.Thread(target=copy_redacted, args=(child.stdout, secret), daemon=True)
        copier.start()
    watch_parent(parent, lambda: _stop_orphaned(child, grace_s))
    rc = child.wait()
    if copier is not None:  # the server's own children may hold the pipe open: do not wait on them
        copier.join(timeout=2.0)
    if rc < 0:  # died of a signal: die of the same one, so agora sees what it would have seen
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


def copy_redacted(source: IO[bytes], secret: bytes, sink: IO[bytes] | None = None) -> None:
    """Copy `source` to `sink` (our stdout: the log file) line by line, `secret` replaced."""
    out = sink if sink is not None else sys.stdout.buffer
    for line in iter(source.readline, b""):
        out.write(line.replace(secret, REDACTED))
        out.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = "usage: guard.py --parent PID [--grace SECONDS] -- CMD..."
    if "--" not in args:
        print(usage, file=sys.stderr)
        return 2
    split = args.index("--")
    opts, cmd = args[:split], args[split + 1 :]
    try:
        values = dict(zip(opts[::2], opts[1::2], strict=True))
        parent = int(values.pop("--parent"))
        grace_s = float(values.pop("--grace", "5"))
    except (KeyError, ValueError):
        print(usage, file=sys.stderr)
        return 2
    if values or not cmd:
        print(usage, file=sys.stderr)
        return 2
    return run(parent, grace_s, cmd)


if __name__ == "__main__":
    sys.exit(main())
