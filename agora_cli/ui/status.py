"""`agora status DIR`: a run's state from its store (opened read-only) and `events.jsonl`.

Safe to use from another terminal while the run is live: SQLite WAL lets a read-only reader see
the last committed transaction, and the JSONL reader skips a torn last line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from agora_cli.audit import CONSENSUS, Counts, step_counts, totals
from agora_cli.events import Event, read_events
from agora_cli.paths import RunPaths
from agora_cli.stats import fraction_text, rate_text
from agora_cli.steps import (
    buffer_size,
    committed_count,
    committed_totals,
    first_open_step,
    last_committed_row,
    latest_ratings,
    member_counts,
    member_steps,
    member_usage,
    waiting_rows,
    work_counts,
)
from agora_cli.store import Store
from agora_cli.training.round_store import live_versions, recent_rounds
from agora_cli.ui.live import LEGEND, MemberStats, Throughput, member_table

QUIET = {"request_done", "phase_progress", "verdict"}


@dataclass
class RunStatus:
    run_dir: str
    committed_steps: int
    open_step: int | None  # a step with stored work that has not committed yet
    last: dict[str, Any]  # the last committed steps row
    buffer: int
    unconsumed: int
    threshold: int
    members: dict[str, MemberStats]
    throughput: Throughput | None = None
    open_work: dict[str, int] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # The consensus audit over committed steps: {'@consensus' or verifier: Counts}, and how
    # many steps were audited.
    audit: dict[str, Counts] = field(default_factory=dict)
    audit_steps: int = 0
    # The isolated control: the threshold is per member (`unconsumed` is then the largest
    # member's own count), and each member's d_{t+1}^i after the last step.
    isolated: bool = False
    member_d: dict[str, float] = field(default_factory=dict)


def collect(run_dir: Path | str, n_events: int = 10) -> RunStatus:
    """Read everything `status` shows. Raises StoreError when DIR holds no run."""
    paths = RunPaths(run_dir)
    threshold = 0
    member_names: list[str] = []
    isolated = False
    if paths.config.exists():
        import yaml

        raw = yaml.safe_load(paths.config.read_text()) or {}
        threshold = int(raw.get("protocol", {}).get("buffer_threshold", 1024))
        member_names = [entry["name"] for entry in raw.get("members", [])]
        isolated = raw.get("protocol", {}).get("mode") == "isolated"
    with Store(paths.store, readonly=True) as store:
        last = last_committed_row(store) or {}
        committed = committed_count(store)
        open_step = first_open_step(store)
        open_work = {}
        if open_step is not None:
            open_work = work_counts(store, open_step, ("problems", "solutions", "verdicts", "votes"))
        members = {name: MemberStats() for name in member_names}
        counts = member_counts(store)
        for name, c in counts.items():
            m = members.setdefault(name, MemberStats())
            m.solutions, m.validated = c.solutions, c.validated
        # The isolated control never votes: its rows are the prior, not a rating.
        for name, (mu, sigma) in ({} if isolated else latest_ratings(store)).items():
            m = members.setdefault(name, MemberStats())
            m.mu, m.sigma = mu, sigma
        for name, c in counts.items():
            if c.buffered:
                members.setdefault(name, MemberStats()).buffered = c.buffered
        for name, version in live_versions(store).items():
            members.setdefault(name, MemberStats()).version = version
        for name, (tokens, busy) in member_usage(store).items():
            m = members.setdefault(name, MemberStats())
            m.tokens, m.busy_s = tokens, busy
        for name, c in counts.items():
            if c.generated is not None:
                m = members.setdefault(name, MemberStats())
                m.generated, m.dropped = c.generated, c.dropped or 0
        buffer = buffer_size(store)
        unconsumed = waiting_rows(store, isolated)
        member_d = {}
        if last and store.has_table("member_steps"):  # a store older than schema v4 has none
            member_d = {name: x.next_difficulty for name, x in member_steps(store, last["step"]).items()}
        n_done, n_buffered, wall, n_validated = committed_totals(store)
        throughput = Throughput(n_buffered, n_done, wall, unconsumed, threshold, n_validated)
        rounds = recent_rounds(store, 3)
        per_step = step_counts(store)
    # Per-request chatter would crowd out what matters; `events.jsonl` keeps all of it.
    events = [e for e in read_events(paths.events) if e.get("kind") not in QUIET][-n_events:]
    return RunStatus(
        run_dir=str(run_dir),
        committed_steps=committed,
        open_step=open_step,
        last=last,
        buffer=buffer,
        unconsumed=unconsumed,
        threshold=threshold,
        members=members,
        throughput=throughput,
        open_work=open_work,
        rounds=rounds,
        events=events,
        audit=totals(per_step.values()),
        audit_steps=len(per_step),
        isolated=isolated,
        member_d=member_d,
    )


def _f(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _v_t(last: dict[str, Any]) -> str:
    """V_t with its 95% Wilson interval over the step's solutions: `0.667 [0.300, 0.903] (4/6)`."""
    v, k, n = last.get("v_t"), last.get("n_correct"), last.get("n_solutions")
    if v is None or not n:
        return _f(v)
    return fraction_text(int(k or 0), int(n))


def audit_text(audit: dict[str, Counts], steps: int) -> str:
    """The consensus audit's run totals, rates with 95% Wilson intervals: the unanimous
    decision first, then each verifier's own verdicts."""
    c = audit.get(CONSENSUS, Counts())
    lines = [f"consensus audit ({c.n} probe solutions, {steps} step(s)): {c.text()}"]
    lines += [
        f"  verifier {v}: precision {rate_text(*x.precision)}, recall {rate_text(*x.recall)}"
        for v, x in audit.items()
        if v != CONSENSUS
    ]
    return "\n".join(lines)


def event_line(e: Event) -> str:
    t = datetime.fromtimestamp(e.get("t", 0)).strftime("%H:%M:%S")
    fields = " ".join(
        f"{k}={round(v, 4) if isinstance(v, float) else v}"
        for k, v in e.items()
        if k not in ("t", "kind", "members", "verifiers", "total")
    )
    return f"{t} {e.get('kind')} {fields}"[:160]


def render(s: RunStatus) -> RenderableType:
    """The status page as one rich renderable."""
    last = s.last
    head = Text(str(s.run_dir), style="bold") + Text(
        f": {s.committed_steps} step(s) committed"
        + (f", step {s.open_step} open" if s.open_step is not None else "")
        + "\n"
        f"last step {last.get('step', '-')}: d_t {_f(last.get('difficulty'))} -> "
        f"d_t+1 {_f(last.get('next_difficulty'))}  consensus approval V_t {_v_t(last)}  "
        f"V_target {_f(last.get('v_target'))}  F_t {_f(last.get('f_t'), '.4f')}  "
        f"strategy {last.get('strategy') or '-'}\n"
        + (
            f"d_t+1 per member: {', '.join(f'{name} {d:.3f}' for name, d in s.member_d.items())}\n"
            if s.member_d
            else ""
        )
        + (
            f"buffer untrained {s.unconsumed}/{s.threshold} ({s.buffer} buffered in total)"
            if not s.isolated
            else f"buffer {s.buffer}; threshold {s.threshold} per member, nearest member has "
            f"{s.unconsumed} of its own rows untrained"
        )
        + (f"\n{s.throughput.line()}" if s.throughput else "")
    )
    parts: list[RenderableType] = [head, member_table(s.members, s.buffer), Text(LEGEND, style="dim")]
    if s.audit:
        parts.append(Text(audit_text(s.audit, s.audit_steps)))
    if s.open_work:
        parts.append(Text("open step work: " + ", ".join(f"{k} {v}" for k, v in s.open_work.items())))
    for r in s.rounds:
        parts.append(
            Text(
                f"round {r['id']} (after step {r['step']}): {r['status']}, "
                f"{r['n']} samples" + (f", error: {r['error']}" if r["error"] else "")
            )
        )
    if s.events:
        parts.append(Text("last events:", style="bold"))
        parts.append(Text("\n".join(event_line(e) for e in s.events), style="dim"))
    return Group(*parts)
