"""The rich live view of a running loop. It consumes engine events only (an EventBus sink).

Header: step t, d_t, V_t, V_target, F_t, buffer fill x/threshold, elapsed and ETA, and the
throughput: validated (buffered) samples per hour of step wall time and the projected time until
the unconsumed buffer reaches the training threshold. A per-member table: TrueSkill mu and sigma,
solutions, validated, pass rate, share of the buffer, generated problems dropped, tokens/s and the
live adapter version. One progress bar per phase of the current step (generate, solve, verify,
vote, explain, commit).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from agora_cli.audit import CONSENSUS, Counts
from agora_cli.events import Event
from agora_cli.stats import fraction_text, rate_text, short_rate

PHASES = ["generate", "solve", "verify", "vote", "explain", "commit"]


@dataclass
class MemberStats:
    mu: float | None = None
    sigma: float | None = None
    solutions: int = 0
    validated: int = 0
    buffered: int = 0
    version: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    generated: int = 0  # problems this member wrote (stored: kept or dropped)
    dropped: int = 0  # ... of which dropped as malformed/duplicate/empty

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.busy_s if self.busy_s else None


@dataclass
class Throughput:
    """Validated (buffered) samples over committed steps' wall time: what a user plans with."""

    samples: int  # buffered by the steps measured
    steps: int
    wall_s: float  # the steps' own wall time (steps.wall_s), not time between runs
    unconsumed: int  # buffer rows no training round has taken yet
    threshold: int  # protocol.buffer_threshold

    @property
    def per_hour(self) -> float | None:
        return self.samples / self.wall_s * 3600 if self.wall_s > 0 and self.steps else None

    def to_threshold_s(self) -> float | None:
        """Projected seconds until the unconsumed buffer reaches the threshold (0 when it has)."""
        left = self.threshold - self.unconsumed
        if left <= 0:
            return 0.0
        return left / self.per_hour * 3600 if self.per_hour else None

    def line(self) -> str:
        """One line with its basis: the rate, what it was measured on, the projection."""
        if not self.steps:
            return "validated -/h (no committed step yet)"
        basis = f"{self.samples} in {self.steps} step(s), {self.wall_s:.0f} s step wall time"
        left = self.threshold - self.unconsumed
        if left <= 0:
            goal = f"buffer threshold {self.threshold} reached"
        else:
            eta = self.to_threshold_s()
            goal = f"buffer threshold {self.threshold}: {left} to go, " + (
                f"~{_dur(eta)} at that rate" if eta is not None else "no projection at 0/h"
            )
        return f"validated {_f(self.per_hour, '.1f')}/h ({basis}); {goal}"


@dataclass
class LiveState:
    """Everything the view shows, folded from events."""

    run_dir: str = ""
    step: int | None = None
    d: float | None = None
    v_t: float | None = None
    v_counts: tuple[int, int] | None = None  # (validated, solutions) of the last committed step
    v_target: float | None = None
    f_t: float | None = None
    strategy: str | None = None
    buffer: int = 0
    unconsumed: int = 0
    threshold: int = 0
    buffered_in_steps: int = 0  # samples buffered by the steps committed in this view
    started: float = field(default_factory=time.time)
    first_step: int = 0
    target_steps: int | None = None
    committed: int = 0
    step_times: list[float] = field(default_factory=list)
    members: dict[str, MemberStats] = field(default_factory=dict)
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # phase -> (done, total)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    audit: dict[str, Counts] = field(default_factory=dict)  # the run's consensus audit totals
    audit_step: Counts | None = None  # the last audited step's consensus counts
    per_member: bool = False  # the isolated control: the threshold is each member's own

    def member(self, name: str) -> MemberStats:
        return self.members.setdefault(name, MemberStats())

    def apply(self, e: Event) -> None:
        """Fold one event into the state."""
        kind = e["kind"]
        if kind in ("run_started", "run_resumed"):
            self.run_dir = e.get("run_dir", self.run_dir)
            self.first_step = self.step = e.get("step", 0)
            self.target_steps = e.get("steps_target")
            self.threshold = e.get("threshold", self.threshold)
            self.buffer = e.get("buffer", self.buffer)
            self._members(e.get("members") or {})
        elif kind == "step_started":
            self.step, self.d = e["step"], e.get("d")
            self.v_target, self.strategy = e.get("v_target"), e.get("strategy")
            self.phases = {p: (0, 0) for p in PHASES}
        elif kind in ("phase_started", "phase_progress", "phase_finished"):
            n = e.get("n", 0)
            done: int = e["done"] if "done" in e else (n if kind == "phase_finished" else 0)
            total: int = e["total"] if "total" in e else n
            self.phases[e["phase"]] = (done, total)
        elif kind == "request_done" and e.get("ok"):
            m = self.member(e["member"])
            m.tokens += e.get("completion_tokens") or 0
            m.busy_s += e.get("latency_s") or 0.0
        elif kind == "rating_update":
            m = self.member(e["member"])
            m.mu, m.sigma = e.get("mu"), e.get("sigma")
        elif kind == "buffer_size":
            self.buffer, self.threshold = e["size"], e.get("threshold", self.threshold)
            self.unconsumed = e.get("unconsumed", self.unconsumed)
            self.per_member = bool(e.get("per_member", self.per_member))
        elif kind == "step_committed":
            self.committed += 1
            self.step_times.append(e.get("wall_s") or 0.0)
            self.buffered_in_steps += e.get("n_buffered") or 0
            self.v_t, self.f_t, self.d = e.get("v_t"), e.get("f_t"), e.get("d_next")
            n = e.get("n_solutions")
            self.v_counts = (int(e.get("n_correct") or 0), int(n)) if n else None
            self.buffer = e.get("buffer", self.buffer)
            self._members(e.get("members") or {})
            self.recent.append(
                f"step {e['step']} committed: V={_f(e.get('v_t'))}, +{e.get('n_buffered', 0)} buffered"
            )
        elif kind == "adapter_live":
            self.member(e["member"]).version = e.get("version", 0)
            self.recent.append(f"adapter live: {e['member']} v{e.get('version')}")
        elif kind in ("training_started", "training_finished", "training_failed"):
            self.recent.append(
                f"{kind.replace('_', ' ')}: round {e.get('round', '?')} {e.get('member', '')}".rstrip()
            )
        elif kind == "validation_score":
            self.recent.append(
                f"anchor {e.get('member')}: {_f(e.get('score'))} (n={e.get('n')}"
                + (", reused: adapter unchanged)" if e.get("reused") else ")")
            )
        elif kind == "consensus_audit":
            self.audit = {v: Counts(**c) for v, c in (e.get("total") or {}).items()}
            step = (e.get("verifiers") or {}).get(CONSENSUS)
            self.audit_step = Counts(**step) if step else None
        elif kind == "problem_dropped":
            self.recent.append(f"problem dropped ({e.get('reason')})")
        elif kind == "fem":  # why d moved beyond Eq. 1
            self.recent.append(str(e.get("text", "FEM lowered d")))

    def _members(self, reported: dict[str, Any]) -> None:
        """Update each member's stats from an event's `members` field ({name: {field: value}})."""
        for name, v in reported.items():
            m = self.member(name)
            for key in (
                "mu",
                "sigma",
                "solutions",
                "validated",
                "buffered",
                "version",
                "generated",
                "dropped",
            ):
                if v.get(key) is not None:
                    setattr(m, key, v[key])

    def throughput(self) -> Throughput:
        return Throughput(
            self.buffered_in_steps, self.committed, sum(self.step_times), self.unconsumed, self.threshold
        )

    def eta_s(self) -> float | None:
        if self.target_steps is None or not self.step_times:
            return None
        left = self.target_steps - (self.first_step + self.committed)
        return max(left, 0) * sum(self.step_times) / len(self.step_times)


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def member_table(members: dict[str, MemberStats], buffer_total: int) -> Table:
    """Per-member table (shared with `agora status`). Without any rating (the isolated control
    has no votes) the mu and sigma columns are left out rather than shown empty."""
    rated = any(m.mu is not None for m in members.values())
    table = Table(expand=False, pad_edge=False)
    for col in (
        ("member",)
        + (("mu", "sigma") if rated else ())
        + ("sol", "valid", "pass", "buf share", "q drop", "tok/s", "adapter")
    ):
        table.add_column(col, justify="left" if col == "member" else "right")
    for name, m in members.items():
        share = m.buffered / buffer_total if buffer_total else None
        table.add_row(
            name,
            *((_f(m.mu, ".2f"), _f(m.sigma, ".2f")) if rated else ()),
            str(m.solutions),
            str(m.validated),
            short_rate(m.validated, m.solutions),
            _f(share, ".0%"),
            short_rate(m.dropped, m.generated),
            _f(m.tokens_per_s, ".1f"),
            f"v{m.version}",
        )
    return table


def header(s: LiveState) -> Text:
    elapsed = time.time() - s.started
    v_t = fraction_text(*s.v_counts) if s.v_counts else _f(s.v_t)
    return Text.from_markup(
        f"[bold]agora[/bold] {s.run_dir}  step t=[bold]{s.step if s.step is not None else '-'}"
        f"[/bold]{f' (of {s.target_steps} steps)' if s.target_steps else ''}  "
        f"d_t {_f(s.d)}  V_t {v_t}  V_target {_f(s.v_target)}  F_t {_f(s.f_t, '.4f')}  "
        f"strategy {s.strategy or '-'}\n"
        + (
            f"buffer {s.buffer}; threshold {s.threshold} per member, nearest member has "
            f"{s.unconsumed} of its own rows untrained"
            if s.per_member
            else f"buffer {s.buffer}/{s.threshold}"
        )
        + f"  elapsed {_dur(elapsed)}  ETA {_dur(s.eta_s())}\n"
        f"{s.throughput().line()}" + (f"\n{audit_line(s)}" if s.audit else "")
    )


def audit_line(s: LiveState) -> str:
    """The consensus audit in one line: the run's totals with 95% Wilson intervals, and the
    last step's counts."""
    c = s.audit.get(CONSENSUS, Counts())
    last = s.audit_step
    step = f"; last step tp {last.tp} fp {last.fp} fn {last.fn} tn {last.tn}" if last is not None else ""
    return (
        f"consensus vs gold ({c.n} probe solutions): precision {rate_text(*c.precision)}, "
        f"recall {rate_text(*c.recall)}{step}"
    )


def phase_bars(s: LiveState) -> Progress:
    progress = Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(bar_width=30),
        TaskProgressColumn(),
        TextColumn("{task.fields[label]}"),
        auto_refresh=False,
    )
    for phase in PHASES:
        done, total = s.phases.get(phase, (0, 0))
        # A phase with nothing to do this step (e.g. no new elite entry to explain) shows 0/0.
        progress.add_task(phase, total=total or 1, completed=done if total else 0, label=f"{done}/{total}")
    return progress


def render(s: LiveState) -> RenderableType:
    """The whole view as one renderable (also used to capture it as text)."""
    recent = Text("\n".join(s.recent), style="dim") if s.recent else Text("")
    return Group(header(s), member_table(s.members, s.buffer), phase_bars(s), recent)


class LiveView:
    """A rich `Live` display fed by events: `bus.add(view)` then `with view: ...`."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4.0):
        self.state = LiveState()
        self.console = console or Console()
        self._live = Live(
            get_renderable=lambda: render(self.state),
            console=self.console,
            refresh_per_second=refresh_per_second,
            transient=False,
        )

    def __call__(self, e: Event) -> None:
        self.state.apply(e)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()
