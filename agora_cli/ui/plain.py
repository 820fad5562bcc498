"""Plain lines, for when stdout is not a terminal (`agora run ... | cat`, a log file).

An EventBus sink: one line per committed step (like nanochat's step line), plus one line per fact
that takes time (servers starting, the anchor, training rounds, swaps), so a log never goes quiet
for minutes; never a line per request. The rich live view (ui/live.py) shows the same facts.
"""

from __future__ import annotations

import sys
from typing import TextIO

from agora_cli.audit import CONSENSUS
from agora_cli.events import Event
from agora_cli.stats import fraction_text, rate_text


def _f(x: object, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def step_line(e: Event) -> str:
    """`step 3 | d_t 1.020 d_t+1 1.010 | approval 0.420 [..] (10/24) tgt 0.550 | F - | balanced |
    buffer untrained 6/8, total 14 | problems 8 sol 24 ok 10 +buf 6 | wall 8.1s req 20.0s`.

    `approval` is V_t, the share of the step's solutions that passed unanimous consensus."""
    members = e.get("members") or {}
    # The isolated control has no ratings and a threshold per member.
    mus = " ".join(f"{m}:{v['mu']:.1f}" for m, v in members.items() if v.get("mu") is not None)
    buffer, threshold = e.get("buffer", 0), e.get("threshold", 0)
    n = e.get("n_solutions")  # V_t with its 95% Wilson interval over the step's solutions
    v_t = fraction_text(e.get("n_correct") or 0, n) if n else _f(e.get("v_t"))
    buffer_text = (
        f"buffer {buffer} (threshold {threshold} per member)"
        if e.get("per_member")
        else f"buffer untrained {e.get('unconsumed', '-')}/{threshold}, total {buffer}"
    )
    return (
        f"step {e['step']} | d_t {_f(e.get('d'))} d_t+1 {_f(e.get('d_next'))} | "
        f"approval {v_t} tgt {_f(e.get('v_target'))} | F {_f(e.get('f_t'), '.4f')} | "
        f"{e.get('strategy', '-')} | {buffer_text} | "
        f"problems {e.get('n_problems', 0)} sol {e.get('n_solutions', 0)} "
        f"ok {e.get('n_correct', 0)} +buf {e.get('n_buffered', 0)} | "
        f"wall {_f(e.get('wall_s'), '.1f')}s req {_f(e.get('request_s'), '.1f')}s"
        + (f" | mu {mus}" if mus else "")
    )


def audit_step_line(e: Event) -> str:
    """`audit 3 | consensus vs gold, run so far: precision 66.7% [20.8, 93.9] (2/3) | recall ...`."""
    c = (e.get("total") or {}).get(CONSENSUS) or {}
    tp, fp, fn = c.get("tp", 0), c.get("fp", 0), c.get("fn", 0)
    return (
        f"audit {e['step']} | consensus vs gold, run so far: precision "
        f"{rate_text(tp, tp + fp)} | recall {rate_text(tp, tp + fn)}"
    )


def _quarter(done: int, total: int) -> bool:
    """True at the done counts that cross a quarter of `total` (and at the end): a progress line
    every ~25%, decided by counts alone, so a log gets four lines per phase, not one per request."""
    if total <= 0:
        return False
    return done == total or done * 4 // total != (done - 1) * 4 // total


class PlainPrinter:
    """EventBus sink printing one line per committed step, and one per fact that takes time: each
    server's start and readiness (with its elapsed seconds), the anchor's progress, each member's
    training round (start, progress, end), each adapter swap with its latency, and the wait for a
    round after the last step. Nothing per request."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self._starting: dict[tuple[str, str], float] = {}  # (backend, model) -> event time

    def __call__(self, e: Event) -> None:
        line = self.line(e)
        if line is not None:
            print(line, file=self.out, flush=True)

    def line(self, e: Event) -> str | None:
        """The line for one event, or None when it gets none."""
        kind = e["kind"]
        if kind == "step_committed":
            return step_line(e)
        if kind in ("run_started", "run_resumed"):
            verb = "resuming" if kind == "run_resumed" else "starting"
            return f"{verb} run {e.get('run_dir', '')} at step {e.get('step')}"
        if kind == "run_finished":
            if e.get("nothing_to_do"):
                return (
                    f"nothing to do: {e.get('steps')} step(s) already committed (--steps "
                    f"{e.get('steps_target')}); no server was started"
                )
            return f"run finished: {e.get('steps')} steps committed"
        if kind == "server_starting":
            self._starting[(e.get("backend", ""), e.get("model", ""))] = e["t"]
            verb = "launching" if e.get("launch", True) else "waiting for"
            return (
                f"server {verb}: {e.get('backend')} {e.get('model')} at {e.get('url')} (log {e.get('log')})"
            )
        if kind == "server_started":
            t0 = self._starting.pop((e.get("backend", ""), e.get("model", "")), None)
            took = f" after {e['t'] - t0:.1f} s" if t0 is not None else ""
            return f"server ready: {e.get('backend')} {e.get('model')} at {e.get('url')}{took}"
        if kind == "servers_attached":
            return f"attached to the running servers of `agora serve` ({e.get('file')})"
        if kind == "phase_started" and e.get("phase") == "anchor":
            return (
                f"anchor step {e.get('step')}: scoring {', '.join(e.get('members') or [])} "
                f"({e.get('n')} calibration requests)"
            )
        if kind == "phase_progress" and e.get("phase") == "anchor":
            done, total = int(e.get("done") or 0), int(e.get("total") or 0)
            return f"anchor step {e.get('step')}: {done}/{total} answered" if _quarter(done, total) else None
        if kind == "validation_score":
            reused = " (reused: adapter unchanged)" if e.get("reused") else ""
            return f"anchor {e.get('member')}: {_f(e.get('score'))} on {e.get('n')} items{reused}"
        if kind == "training_started":
            return (
                f"training round {e.get('round')} started: {e.get('member')} v{e.get('version')} "
                f"on {e.get('rows')} buffer rows"
            )
        if kind == "training_progress" and e.get("step"):
            step, total = int(e["step"]), int(e.get("total_steps") or 0)
            if total and not _quarter(step, total):
                return None
            return (
                f"training round {e.get('round')} {e.get('member')}: step {step}/{total or '?'} "
                f"loss {_f(e.get('loss'), '.4f')} {_f(e.get('tokens_per_s'), '.0f')} tok/s"
            )
        if kind == "training_finished":
            return (
                f"training round {e.get('round')} finished: {e.get('member')} v{e.get('version')} "
                f"loss {_f(e.get('loss_first'), '.4f')}->{_f(e.get('loss_last'), '.4f')}, "
                f"{e.get('steps')} steps, {_f(e.get('tokens_per_s'), '.0f')} tok/s; swapping it in"
            )
        if kind == "adapter_live":
            return (
                f"adapter swap: {e.get('member')} v{e.get('version')} live after "
                f"{_f(e.get('latency_s'), '.2f')} s"
            )
        if kind == "training_wait":
            return (
                f"all steps committed; waiting for training round {e.get('round')} "
                f"({', '.join(e.get('workers') or {}) or 'swap'}) to finish and go live before exiting"
            )
        if kind == "phase_started" and e.get("phase") == "evaluate":
            pairs = e.get("totals") or []
            return f"evaluating: {e.get('n')} requests over {len(pairs)} member/benchmark pair(s)"
        if kind == "eval_progress":
            done, total = int(e["done"]), int(e["total"])
            if not _quarter(done, total):
                return None
            return f"eval {e.get('member')} {e.get('benchmark')}: {done}/{total} answered"
        if kind == "fem":
            return f"step {e.get('step')} | {e.get('text', 'FEM lowered d')}"
        if kind == "consensus_audit":
            return audit_step_line(e)
        if kind == "training_failed":
            return f"training failed: {e.get('member', '')} {e.get('error', '')}"
        return None
