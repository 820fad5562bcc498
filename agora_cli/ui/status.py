"""`agora status DIR`: a run's state from its store (opened read-only) and `events.jsonl`.

Safe to use from another terminal while the run is live: SQLite WAL lets a read-only reader see
the last committed transaction, and the JSONL reader skips a torn last line.
"""

from __future__ import annotations

import json
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
    NOT_PROBE,
    generation_counts,
    latest_ratings,
    member_steps,
    waiting_rows,
)
from agora_cli.store import Store
from agora_cli.ui.live import MemberStats, Throughput, member_table

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
        member_names = [m["name"] for m in raw.get("members", [])]
        isolated = raw.get("protocol", {}).get("mode") == "isolated"
    with Store(paths.store, readonly=True) as store:
        last_row = store.one("SELECT * FROM steps WHERE committed_at IS NOT NULL ORDER BY step DESC LIMIT 1")
        last = dict(last_row) if last_row else {}
        committed = int(store.scalar("SELECT COUNT(*) FROM steps WHERE committed_at IS NOT NULL") or 0)
        open_step = store.scalar("SELECT MIN(step) FROM steps WHERE committed_at IS NULL")
        open_work = {}
        if open_step is not None:
            for table in ("problems", "solutions", "verdicts", "votes"):
                open_work[table] = int(
                    store.scalar(f"SELECT COUNT(*) FROM {table} WHERE step = ?", (open_step,)) or 0
                )
        members = {name: MemberStats() for name in member_names}
        for r in store.query(
            "SELECT member, COUNT(*) AS n, SUM(correct = 1) AS ok FROM solutions s "
            "JOIN steps t ON t.step = s.step AND t.committed_at IS NOT NULL "
            f"WHERE {NOT_PROBE} GROUP BY member"
        ):
            m = members.setdefault(r["member"], MemberStats())
            m.solutions, m.validated = r["n"], r["ok"] or 0
        # The isolated control never votes: its rows are the prior, not a rating.
        for name, (mu, sigma) in ({} if isolated else latest_ratings(store)).items():
            m = members.setdefault(name, MemberStats())
            m.mu, m.sigma = mu, sigma
        for r in store.query("SELECT member, COUNT(*) AS n FROM buffer GROUP BY member"):
            members.setdefault(r["member"], MemberStats()).buffered = r["n"]
        for r in store.query(
            "SELECT member, MAX(version) AS v FROM adapters WHERE status = 'live' GROUP BY member"
        ):
            members.setdefault(r["member"], MemberStats()).version = r["v"]
        for r in store.query(
            "SELECT member, SUM(completion_tokens) AS tok, SUM(latency_s) AS busy "
            "FROM solutions WHERE error IS NULL GROUP BY member"
        ):
            m = members.setdefault(r["member"], MemberStats())
            m.tokens, m.busy_s = r["tok"] or 0, r["busy"] or 0.0
        for name, (n, dropped) in generation_counts(store).items():
            m = members.setdefault(name, MemberStats())
            m.generated, m.dropped = n, dropped
        buffer = int(store.scalar("SELECT COUNT(*) FROM buffer") or 0)
        unconsumed = waiting_rows(store, isolated)
        member_d = {}
        if last and store.scalar(  # a store older than schema v4 has no member_steps
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'member_steps'"
        ):
            member_d = {m: x.next_difficulty for m, x in member_steps(store, last["step"]).items()}
        done = store.one(
            "SELECT COUNT(*) AS n, SUM(n_buffered) AS buffered, SUM(wall_s) AS wall "
            "FROM steps WHERE committed_at IS NOT NULL"
        )
        throughput = Throughput(
            int(done["buffered"] or 0), int(done["n"] or 0), float(done["wall"] or 0.0), unconsumed, threshold
        )
        rounds = [
            dict(r)
            for r in store.query(
                "SELECT id, step, status, buffer_ids, error FROM rounds ORDER BY id DESC LIMIT 3"
            )
        ]
        for r in rounds:
            r["n"] = len(json.loads(r.pop("buffer_ids") or "[]"))
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
        f"d_t+1 {_f(last.get('next_difficulty'))}  V_t {_v_t(last)}  "
        f"V_target {_f(last.get('v_target'))}  F_t {_f(last.get('f_t'), '.4f')}  "
        f"strategy {last.get('strategy') or '-'}\n"
        + (
            f"d_t+1 per member: {', '.join(f'{m} {d:.3f}' for m, d in s.member_d.items())}\n"
            if s.member_d
            else ""
        )
        + (
            f"buffer {s.buffer} ({s.unconsumed} not yet trained)/{s.threshold}"
            if not s.isolated
            else f"buffer {s.buffer}; threshold {s.threshold} per member, nearest member has "
            f"{s.unconsumed} of its own rows untrained"
        )
        + (f"\n{s.throughput.line()}" if s.throughput else "")
    )
    parts: list[RenderableType] = [head, member_table(s.members, s.buffer)]
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
