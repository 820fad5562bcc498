"""Shared test setup: caches and run directories point below the test session, never at ~/.cache.

De-quantised models are expensive to build (Gemma-3's GGUF takes about a minute), so the model
cache is shared by the whole session: `AGORA_HOME` from the environment when set (CI points it at
the clone), otherwise `<repo>/.agora-home`.

Every test belongs to exactly one tier, a marker registered in pyproject.toml:

- `unit`: in process only (no subprocess, no server, no model, no network socket); the whole tier
  runs in about a minute: `./scripts/test.sh -m unit`.
- `integration`: real processes (`agora run` killed and resumed, stub workers), fake servers on
  127.0.0.1, and the engines' own code in their contract venvs.
- `e2e`: the real small models.

Collection fails for a test with no tier or with several, and a `unit` test that starts a process
or opens a socket fails with what it tried (see `in_process_only`).
"""

from __future__ import annotations

import _posixsubprocess
import asyncio
import contextlib
import multiprocessing.process
import multiprocessing.util
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `tests.fakes` importable from every test module

os.environ.setdefault("AGORA_HOME", str(REPO / ".agora-home"))
# Transformers and the hub must never reach the network from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell starts background jobs (`cmd &`, nohup) with SIGINT ignored, and an ignored signal stays
# ignored through exec: the agora processes the tests interrupt would never see their Ctrl-C.
# A handled signal is reset to the default in children, so the suite restores Python's own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Tests that draw random cases (the import orders of test_imports.py) take them from this seed, so
# that every pytest-xdist worker collects the same test ids. It is drawn afresh for each session
# (the workers inherit it through the environment), printed in the header and in the test ids, and
# `AGORA_TEST_SEED=<n>` replays one.
os.environ.setdefault("AGORA_TEST_SEED", str(random.SystemRandom().randrange(10**6)))

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs planted tests through the hooks below

TIERS = ("unit", "integration", "e2e")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run directory for one test."""
    d = tmp_path / "run"
    d.mkdir()
    return d


def pytest_report_header(config: pytest.Config) -> str:
    """The session's seed, to replay its random cases."""
    return f"AGORA_TEST_SEED={os.environ['AGORA_TEST_SEED']} (set it to replay the random cases)"


# A collection error of the module (rather than a usage error) so that pytest-xdist's workers
# report it too, and every tier's run (`-m` deselects later) stops on it.
@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[pytest.CollectReport]:
    """Collecting a module or class fails, naming each test, unless every test in it carries
    exactly one tier marker."""
    report = yield
    if report.passed:
        bad = []
        for item in report.result:
            if isinstance(item, pytest.Item):
                tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
                if len(tiers) != 1:
                    bad.append(f"  {item.nodeid}: {', '.join(tiers) if tiers else 'no tier'}")
        if bad:
            report.outcome = "failed"
            report.result = []
            report.longrepr = (
                f"every test needs exactly one tier marker of {', '.join(TIERS)} "
                "(a module-level `pytestmark` or a mark on the test):\n" + "\n".join(bad)
            )
    return report


class NotInProcess(RuntimeError):
    """A `unit` test tried to start a process or open a socket."""


@contextlib.contextmanager
def in_process_only(nodeid: str) -> Iterator[list[str]]:
    """While open, starting a process or connecting/binding a socket raises `NotInProcess`, from
    any thread; each attempt is also recorded in the yielded list, so that an attempt the code
    under test catches and falls back from still fails the test."""
    tried: list[str] = []

    def refuse(what: str) -> NotInProcess:
        tried.append(what)
        return NotInProcess(
            f"{nodeid} is a unit test (in process only) but tried {what}; "
            "mark it integration if it needs a real process or socket"
        )

    def blocked(owner: Any, name: str, describe: Callable[..., str]) -> tuple[Any, str, Any]:
        original = getattr(owner, name)

        def guard(*args: Any, **kwargs: Any) -> Any:
            raise refuse(describe(*args, **kwargs))

        setattr(owner, name, guard)
        return owner, name, original

    def first(args: tuple) -> str:  # the command or address, enough to find the call
        return repr(args[0]) if args else ""

    def sock(call: str) -> Callable[..., str]:
        return lambda self, *a, **k: f"to open a network socket: socket.{call}({first(a)})"

    def proc(call: str) -> Callable[..., str]:
        return lambda *a, **k: f"to start a process: {call}({first(a)})"

    # subprocess.Popen covers run/call/check_output, os.popen and asyncio's subprocesses; the
    # multiprocessing entries cover Process and ProcessPoolExecutor (fork, spawn, forkserver) and
    # the resource tracker; os.* are the bare calls.
    patches = [
        blocked(socket.socket, "connect", sock("connect")),
        blocked(socket.socket, "connect_ex", sock("connect_ex")),
        blocked(socket.socket, "bind", sock("bind")),
        blocked(subprocess.Popen, "__init__", lambda self, *a, **k: proc("subprocess.Popen")(*a)),
        blocked(asyncio, "create_subprocess_exec", proc("asyncio.create_subprocess_exec")),
        blocked(asyncio, "create_subprocess_shell", proc("asyncio.create_subprocess_shell")),
        blocked(
            multiprocessing.process.BaseProcess,
            "start",
            lambda self: (
                f"to start a process: "
                f"multiprocessing {type(self).__name__}.start() (a Process or a ProcessPoolExecutor)"
            ),
        ),
        blocked(multiprocessing.util, "spawnv_passfds", proc("multiprocessing.util.spawnv_passfds")),
        blocked(_posixsubprocess, "fork_exec", proc("_posixsubprocess.fork_exec")),
    ]
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            patches.append(blocked(os, name, proc(f"os.{name}")))
    try:
        yield tried
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


def _guarded(item: pytest.Item) -> Iterator[None]:
    """Run one phase of a `unit` test under `in_process_only`; the test fails if it tried."""
    if item.get_closest_marker("unit") is None:
        return (yield)
    with in_process_only(item.nodeid) as tried:
        try:
            result = yield
        except NotInProcess:
            raise
        except BaseException as e:
            if tried:  # the refusal was caught and something else failed: name the cause
                raise NotInProcess(f"{item.nodeid} is a unit test but tried {tried[0]}") from e
            raise
    if tried:
        raise NotInProcess(
            f"{item.nodeid} is a unit test (in process only) but tried {'; '.join(tried)} "
            "(the code caught the refusal); mark it integration if it needs that"
        )
    return result


# Setup and the test itself; not teardown, where a wider fixture that an integration test set up
# (a fake server) may be torn down after the last test of its module or session.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))
