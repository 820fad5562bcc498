"""One plain line per committed step, for when stdout is not a terminal (`agora run ... | cat`).

An EventBus sink: it reads `step_committed` (and a few run-level events) and prints nothing else,
so logs stay greppable and one line long per step, like nanochat's step line.
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
    """`step 3 | d 1.02->1.01 | V 0.42 tgt 0.55 | F - | buffer 12/16 | sol 24 ok 10 | 8.1s`."""
    members = e.get("members") or {}
    # The isolated control has no ratings and a threshold per member.
    mus = " ".join(f"{m}:{v['mu']:.1f}" for m, v in members.items() if v.get("mu") is not None)
    buffer, threshold = e.get("buffer", 0), e.get("threshold", 0)
    n = e.get("n_solutions")  # V_t with its 95% Wilson interval over the step's solutions
    v_t = fraction_text(e.get("n_correct") or 0, n) if n else _f(e.get("v_t"))
    buffer_text = (
        f"buffer {buffer} (threshold {threshold} per member)"
        if e.get("per_member")
        else f"buffer {buffer}/{threshold}"
    )
    return (
        f"step {e['step']} | d {_f(e.get('d'))}->{_f(e.get('d_next'))} | "
        f"V {v_t} tgt {_f(e.get('v_target'))} | F {_f(e.get('f_t'), '.4f')} | "
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


class PlainPrinter:
    """EventBus sink printing one line per committed step (plus run start/end and adapters)."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout

    def __call__(self, e: Event) -> None:
        kind = e["kind"]
        if kind == "step_committed":
            line = step_line(e)
        elif kind in ("run_started", "run_resumed"):
            verb = "resuming" if kind == "run_resumed" else "starting"
            line = f"{verb} run {e.get('run_dir', '')} at step {e.get('step')}"
        elif kind == "run_finished":
            line = f"run finished: {e.get('steps')} steps committed"
        elif kind == "adapter_live":
            line = f"adapter live: {e.get('member')} v{e.get('version')}"
        elif kind == "fem":
            line = f"step {e.get('step')} | {e.get('text', 'FEM lowered d')}"
        elif kind == "consensus_audit":
            line = audit_step_line(e)
        elif kind == "training_failed":
            line = f"training failed: {e.get('member', '')} {e.get('error', '')}"
        else:
            return
        print(line, file=self.out, flush=True)
