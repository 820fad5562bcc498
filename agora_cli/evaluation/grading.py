"""Answer grading in worker processes with a hard per-item deadline.

The rule is `agora_cli.protocol.answers.grade` (the one grader: the final answer, normalised,
compared as values); math-verify is its symbolic step, for answers the rule cannot read as values.

math-verify's own timeouts use `signal.alarm`, which only works on a process's main thread (and
the evaluator and the anchor grade from threads). So each worker calls it with its timeouts
disabled, and the parent enforces the deadline: an item that is not graded in `timeout_s` counts
as wrong, and the worker process stuck on it is killed and replaced. The grader itself survives.

Each worker is a one-process `concurrent.futures.ProcessPoolExecutor` (spawn context): with a
single worker per executor, killing a stuck item's process costs only that slot, never the other
in-flight items, and needs no private executor internals (the worker's pid is asked for once).
Workers are direct children that ask the kernel to kill them when their parent dies, so a
SIGKILLed `agora eval` leaves no grader behind (a forkserver would outlive it, with its workers).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from agora_cli.protocol.answers import Symbolic, grade

GradeFn = Callable[[str, str], bool]

_WORKER_START_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# --------------------------------------------------------------------------- worker side


def _quiet() -> None:
    # math-verify warns once per process that its timeout is disabled; that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _parse(text: str) -> list:
    from math_verify import parse

    parsed = parse(text, parsing_timeout=None)
    if not parsed and "$" not in text and "\\boxed" not in text:
        # A bare LaTeX answer ("[2,5)", "\frac12") is only found inside math delimiters.
        parsed = parse(f"${text}$", parsing_timeout=None)
    return parsed


def symbolic_equal(answer: str, gold: str) -> bool:
    """math-verify's symbolic equivalence of two final answers (never whole replies: on a reply
    it would merge every boxed answer into one set). Timeouts off: call it only inside a
    `Grader` worker, whose deadline is the parent's."""
    from math_verify import verify

    _quiet()
    # Currency signs and thin spaces (MATH500 golds such as `\$32,\!348`) defeat the parser.
    answer, gold = (t.replace("\\$", "").replace("\\!", "") for t in (answer, gold))
    gold_parsed, answer_parsed = _parse(f"${gold}$"), _parse(f"${answer}$")
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def grade_pair(pred: str, gold: str) -> bool:
    """True when the final answer in `pred` (a reply or an extracted answer) equals `gold`, by
    the one rule (`agora_cli.protocol.answers.grade`), with math-verify as its symbolic step.

    Call it only inside a `Grader` worker (math-verify runs with its timeouts off).
    """
    return grade(pred, gold, symbolic=symbolic_equal).correct


@contextmanager
def symbolic_checker(timeout_s: float = 5.0) -> Iterator[Symbolic]:
    """The one grader's symbolic step for a caller outside the worker pool (`agora grade`): a
    one-worker `Grader` running `symbolic_equal`, started on first use (most answers never need
    it) and stopped on exit. A comparison past `timeout_s` counts as different."""
    grader: Grader | None = None

    def check(answer: str, gold: str) -> bool:
        nonlocal grader
        if grader is None:
            grader = Grader(1, timeout_s, fn=symbolic_equal)
        return grader.grade(answer, gold)

    try:
        yield check
    finally:
        if grader is not None:
            grader.close()


def _die_with_parent(parent: int) -> None:
    """Worker initializer: SIGKILL this worker when the process that started it dies (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent cleans up
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)


def _worker_ready() -> int:
    """Import math-verify (sympy) once, before any deadline runs, and report the worker's pid."""
    import math_verify  # noqa: F401

    _quiet()
    return os.getpid()


# --------------------------------------------------------------------------- parent side


@dataclass
class _Slot:
    executor: ProcessPoolExecutor
    pid: int

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.executor.shutdown(wait=False, cancel_futures=True)


class Grader:
    """Grades (prediction, gold) pairs in `workers` processes, each item within `timeout_s`.

    Use as a context manager, or call `close()`. Thread-safe (calls are serialised).
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, fn: GradeFn = grade_pair):
        if workers < 1 or timeout_s <= 0:
            raise ValueError("Grader needs workers >= 1 and timeout_s > 0")
        self.workers = workers
        self.timeout_s = timeout_s
        self.fn = fn
        self.timeouts = 0  # items that hit the deadline (counted wrong)
        self.errors = 0  # items whose grading raised (counted wrong)
        self._slots: list[_Slot] = []
        # spawn, not fork: the parent has threads (event loop, executors) that fork would copy
        # mid-state.
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="grader-spawn")

    def _new_slot(self) -> _Slot:
        # The kernel's parent-death signal follows the *thread* that started the worker, so
        # workers are always started from the grader's own thread, which lives until close():
        # a short-lived caller thread (an event loop's executor) must not take them down.
        return self._spawner.submit(self._start_slot).result()

    def _start_slot(self) -> _Slot:
        ex = ProcessPoolExecutor(
            max_workers=1, mp_context=self._ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        )
        pid = ex.submit(_worker_ready).result(timeout=_WORKER_START_TIMEOUT_S)
        return _Slot(ex, pid)

    def _submit(self, s: int, pair: tuple[str, str]) -> Future:
        try:
            return self._slots[s].executor.submit(self.fn, *pair)
        except BrokenProcessPool:  # the worker died between calls: replace it
            self._slots[s].kill()
            self._slots[s] = self._new_slot()
            return self._slots[s].executor.submit(self.fn, *pair)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (they change only when one is killed or dies)."""
        return [slot.pid for slot in self._slots]

    def grade(self, pred: str, gold: str) -> bool:
        """Grade one pair."""
        return self.grade_many([(pred, gold)])[0]

    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Grade every pair; results in input order. Timeouts and errors count as False."""
        with self._lock:
            return self._grade_many(list(pairs))

    def _grade_many(self, pairs: list[tuple[str, str]]) -> list[bool]:
        results: list[bool] = [False] * len(pairs)
        if not pairs:
            return results
        while len(self._slots) < min(self.workers, len(pairs)):
            self._slots.append(self._new_slot())
        todo = list(range(len(pairs)))[::-1]  # popped from the end: input order
        free = list(range(len(self._slots)))
        running: dict[Future, tuple[int, int, float]] = {}  # future -> (item, slot, deadline)
        while todo or running:
            while todo and free:
                i, s = todo.pop(), free.pop()
                fut = self._submit(s, pairs[i])
                running[fut] = (i, s, time.monotonic() + self.timeout_s)
            next_deadline = min(d for _, _, d in running.values())
            done, _ = wait(
                list(running),
                timeout=max(0.0, next_deadline - time.monotonic()),
                return_when=FIRST_COMPLETED,
            )
            for fut in done:
                i, s, _ = running.pop(fut)
                try:
                    results[i] = bool(fut.result())
                except BrokenProcessPool:  # the worker died (e.g. out of memory): replace it
                    self.errors += 1
                    self._slots[s].kill()
                    self._slots[s] = self._new_slot()
                except Exception:  # noqa: BLE001 - a grading crash is a wrong answer, not a crash
                    self.errors += 1
                free.append(s)
            now = time.monotonic()
            for fut, (_, s, deadline) in list(running.items()):
                if deadline <= now and not fut.done():
                    # Hard deadline: the item is wrong, its worker is killed and replaced.
                    running.pop(fut)
                    self.timeouts += 1
                    self._slots[s].kill()
                    self._slots[s] = self._new_slot()
                    free.append(s)
        return results

    def close(self) -> None:
        """Stop every worker process."""
        with self._lock:
            for slot in self._slots:
                slot.kill()
            self._slots.clear()
            self._spawner.shutdown(wait=False)
            self._spawner = ThreadPoolExecutor(1, thread_name_prefix="grader-spawn")  # reusable

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leave processes behind
        try:
            for slot in self._slots:
                slot.kill()
        except Exception:  # noqa: BLE001
            pass
