"""The rich live view of a running loop. It consumes engine events only (an EventBus sink).

Header: step t, d_t (this step's difficulty) and d_{t+1} (set by its commit), V_t (the step's
consensus approval: the share of its solutions every verifier passed), V_target, F_t, the buffer
as untrained rows over the training threshold and its running total, elapsed and an ETA that
counts down with the clock, and the throughput: validated (passed consensus) and buffered samples
per hour of step wall time, with the projected time until the untrained rows reach the threshold.
Then what is happening now, so no minute passes with nothing moving: each server starting (with
its elapsed time) until it is ready, each member's training round (steps, loss, tokens/s), swaps
with their latency, and the wait for a round after the last step. A per-member table (its columns
explained by LEGEND, printed under it) and one progress bar per phase of the current step
(generate, solve, verify, vote, explain, commit, and the anchor when it runs).
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

LEGEND = (
    "mu/sigma: TrueSkill rating from the quality votes; sol: solutions written; valid: solutions "
    "every verifier passed; pass: valid/sol [95% CI]; buf share: the member's share of the buffer; "
    "q drop: its generated problems dropped as malformed or duplicate [95% CI]; tok/s: completion "
    "tokens per second of request time; adapter: live LoRA version (v0 = base model)"
)


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
    """Validated and buffered samples over committed steps' wall time: what a user plans with."""

    samples: int  # buffered by the steps measured
    steps: int
    wall_s: float  # the steps' own wall time (steps.wall_s), not time between runs
    unconsumed: int  # buffer rows no training round has taken yet
    threshold: int  # protocol.buffer_threshold
    validated: int = 0  # solutions the steps measured passed by unanimous consensus

    @property
    def per_hour(self) -> float | None:
        """Buffered samples per hour (what fills the buffer toward the threshold)."""
        return self.samples / self.wall_s * 3600 if self.wall_s > 0 and self.steps else None

    @property
    def validated_per_hour(self) -> float | None:
        return self.validated / self.wall_s * 3600 if self.wall_s > 0 and self.steps else None

    def to_threshold_s(self) -> float | None:
        """Projected seconds until the unconsumed buffer reaches the threshold (0 when it has)."""
        left = self.threshold - self.unconsumed
        if left <= 0:
            return 0.0
        return left / self.per_hour * 3600 if self.per_hour else None

    def line(self) -> str:
        """One line with its basis: the rate, what it was measured on, the projection."""
        if not self.steps:
            return "validated/h and buffered/h: measured once a step commits in this view"
        basis = (
            f"{self.validated} validated, {self.samples} buffered in {self.steps} step(s), "
            f"{self.wall_s:.0f} s step wall time"
        )
        left = self.threshold - self.unconsumed
        if left <= 0:
            goal = f"buffer threshold {self.threshold} reached"
        else:
            eta = self.to_threshold_s()
            goal = f"buffer threshold {self.threshold}: {left} untrained rows to go, " + (
                f"~{_dur(eta)} at the buffered rate" if eta is not None else "no projection at 0/h"
            )
        return (
            f"validated {_f(self.validated_per_hour, '.1f')}/h (passed consensus), buffered "
            f"{_f(self.per_hour, '.1f')}/h (entered the buffer) ({basis}); {goal}"
        )


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
    d_next: float | None = None  # d_{t+1}, set by the last commit
    buffer: int = 0
    unconsumed: int = 0
    threshold: int = 0
    buffered_in_steps: int = 0  # samples buffered by the steps committed in this view
    validated_in_steps: int = 0  # solutions those steps validated by consensus
    step_started: float | None = None  # when the current step started (event time)
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
    # (backend, model) -> [url, starting event time, ready event time or None]
    servers: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # member -> its training round now: {round, step, total, loss, tps, state}
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting_round: int | None = None  # after the last step: the round the run waits for
    finished: bool = False

    def member(self, name: str) -> MemberStats:
        return self.members.setdefault(name, MemberStats())

    def apply(self, e: Event) -> None:
        """Fold one event into the state."""
        kind = e["kind"]
        if kind in ("run_started", "run_resumed"):
            self.started = min(self.started, e.get("t", self.started))
            self.run_dir = e.get("run_dir", self.run_dir)
            self.first_step = self.step = e.get("step", 0)
            self.target_steps = e.get("steps_target")
            self.threshold = e.get("threshold", self.threshold)
            self.buffer = e.get("buffer", self.buffer)
            self.unconsumed = e.get("unconsumed", self.unconsumed)
            self._members(e.get("members") or {})
        elif kind == "step_started":
            self.step, self.d, self.d_next = e["step"], e.get("d"), None
            self.v_target, self.strategy = e.get("v_target"), e.get("strategy")
            self.phases = {p: (0, 0) for p in PHASES}
            self.step_started = e.get("t")
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
            self.validated_in_steps += e.get("n_correct") or 0
            self.step_started = None
            # d_t stays this step's own; d_{t+1} is what the commit set for the next one.
            self.v_t, self.f_t, self.d, self.d_next = e.get("v_t"), e.get("f_t"), e.get("d"), e.get("d_next")
            self.unconsumed = e.get("unconsumed", self.unconsumed)
            n = e.get("n_solutions")
            self.v_counts = (int(e.get("n_correct") or 0), int(n)) if n else None
            self.buffer = e.get("buffer", self.buffer)
            self._members(e.get("members") or {})
            self.recent.append(
                f"step {e['step']} committed: consensus approval {_f(e.get('v_t'))}, "
                f"+{e.get('n_buffered', 0)} buffered"
            )
        elif kind == "server_starting":
            self.servers[(e.get("backend", ""), e.get("model", ""))] = [e.get("url"), e["t"], None]
        elif kind == "server_started":
            entry = self.servers.setdefault(
                (e.get("backend", ""), e.get("model", "")), [e.get("url"), e["t"], None]
            )
            entry[2] = e["t"]
        elif kind == "adapter_live":
            self.member(e["member"]).version = e.get("version", 0)
            self.training.pop(e["member"], None)
            latency = _f(e.get("latency_s"), ".2f")
            self.recent.append(f"adapter swap: {e['member']} v{e.get('version')} live after {latency} s")
        elif kind == "training_started":
            self.training[e.get("member", "")] = {
                "round": e.get("round"),
                "state": "starting",
                "rows": e.get("rows"),
            }
            self.recent.append(f"training round {e.get('round', '?')} started: {e.get('member', '')}")
        elif kind == "training_progress" and e.get("step"):
            t = self.training.setdefault(e.get("member", ""), {"round": e.get("round")})
            t.update(
                state="training",
                step=e.get("step"),
                total=e.get("total_steps"),
                loss=e.get("loss"),
                tps=e.get("tokens_per_s"),
            )
        elif kind == "training_finished":
            self.training.setdefault(e.get("member", ""), {"round": e.get("round")})["state"] = "swapping in"
            self.recent.append(f"training round {e.get('round', '?')} finished: {e.get('member', '')}")
        elif kind == "training_failed":
            self.training.pop(e.get("member", ""), None)
            self.recent.append(f"training failed: round {e.get('round', '?')} {e.get('member', '')}".rstrip())
        elif kind == "training_wait":
            self.waiting_round = e.get("round")
        elif kind == "run_finished":
            self.finished, self.waiting_round = True, None
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
            self.buffered_in_steps,
            self.committed,
            sum(self.step_times),
            self.unconsumed,
            self.threshold,
            self.validated_in_steps,
        )

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until the last step commits: the steps left at the mean step time, less the
        time the current step has already run (so it counts down between commits). None without
        a target or a measured step, and once the steps are done (training may still run)."""
        if self.target_steps is None or not self.step_times:
            return None
        left = self.target_steps - (self.first_step + self.committed)
        if left <= 0:
            return None
        running = (now or time.time()) - self.step_started if self.step_started is not None else 0.0
        return max(left * sum(self.step_times) / len(self.step_times) - running, 0.0)

    def eta_text(self, now: float | None = None) -> str:
        if self.finished:
            return "finished"
        if self.waiting_round is not None:
            return f"steps done; waiting for training round {self.waiting_round} to go live"
        if self.target_steps is not None and self.first_step + self.committed >= self.target_steps:
            return "steps done"
        if self.target_steps is not None and not self.step_times:
            return "- (measured once a step commits)"
        return _dur(self.eta_s(now))


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


def buffer_text(s: LiveState) -> str:
    """The buffer as what training waits on (untrained rows over the threshold) and its total."""
    if s.per_member:
        return (
            f"buffer {s.buffer} in total; threshold {s.threshold} per member, nearest member has "
            f"{s.unconsumed} of its own rows untrained"
        )
    return f"buffer untrained {s.unconsumed}/{s.threshold} ({s.buffer} buffered in total)"


def header(s: LiveState, now: float | None = None) -> Text:
    now = now or time.time()
    v_t = fraction_text(*s.v_counts) if s.v_counts else _f(s.v_t)
    return Text.from_markup(
        f"[bold]agora[/bold] {s.run_dir}  step t=[bold]{s.step if s.step is not None else '-'}"
        f"[/bold]{f' (of {s.target_steps} steps)' if s.target_steps else ''}  "
        f"d_t {_f(s.d)}  d_{{t+1}} {_f(s.d_next)}  consensus approval V_t {v_t}  "
        f"V_target {_f(s.v_target)}  F_t {_f(s.f_t, '.4f')}  strategy {s.strategy or '-'}\n"
        f"{buffer_text(s)}  elapsed {_dur(now - s.started)}  ETA {s.eta_text(now)}\n"
        f"{s.throughput().line()}" + (f"\n{audit_line(s)}" if s.audit else ""),
    )


def activity(s: LiveState, now: float | None = None) -> Text:
    """What is happening besides the step's phases: servers starting, training rounds."""
    now = now or time.time()
    lines = []
    for (backend, model), (url, t0, ready) in s.servers.items():
        if ready is None:
            lines.append(
                f"server {backend} {model}: starting, loading the model ({now - t0:.0f} s) {url or ''}"
            )
        elif not s.committed and s.step_started is None:
            lines.append(f"server {backend} {model}: ready after {ready - t0:.1f} s")
    for member, t in s.training.items():
        if t.get("step"):
            progress = (
                f"step {t['step']}/{t.get('total') or '?'}, loss {_f(t.get('loss'), '.4f')}, "
                f"{_f(t.get('tps'), '.0f')} tok/s"
            )
        else:
            progress = f"on {t.get('rows', '?')} rows" if t.get("state") == "starting" else ""
        state = t.get("state", "training")
        detail = f", {progress}" if progress and state != "swapping in" else ""
        lines.append(f"training round {t.get('round')} {member}: {state}{detail}")
    return Text("\n".join(lines))


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
    for phase in PHASES + [p for p in s.phases if p not in PHASES]:  # + the anchor, when it runs
        done, total = s.phases.get(phase, (0, 0))
        # A phase with nothing to do this step (e.g. no new elite entry to explain) shows 0/0.
        progress.add_task(phase, total=total or 1, completed=done if total else 0, label=f"{done}/{total}")
    return progress


def render(s: LiveState, now: float | None = None) -> RenderableType:
    """The whole view as one renderable (also used to capture it as text)."""
    recent = Text("\n".join(s.recent), style="dim") if s.recent else Text("")
    return Group(
        header(s, now),
        activity(s, now),
        member_table(s.members, s.buffer),
        Text(LEGEND, style="dim"),
        phase_bars(s),
        recent,
    )


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

    def __enter__(self) -> LiveView:
        # Drawn at the first event, not here: a config or lock error raised before the run
        # emits anything is then printed alone, with no empty view above it.
        return self

    def __call__(self, e: Event) -> None:  # noqa: F811 - redefined to start the display lazily
        self.state.apply(e)
        if not self._live.is_started:
            self._live.start()

    def __exit__(self, *exc: object) -> None:
        if self._live.is_started:
            self._live.stop()
