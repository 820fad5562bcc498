"""`agora train`: one training round now, on whatever the buffer holds, outside the loop.

The library half of the command: open the run, attach to its servers when `agora serve` is
running for it, run one round (an unfinished one first) to the end, and summarise each member's
adapter. The CLI only renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agora_cli import runlock
from agora_cli.config import Config, load_config
from agora_cli.errors import NoRunError, StoreError, TrainingError, UsageError
from agora_cli.events import EventBus, JsonlSink
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving, read_servers_file
from agora_cli.store import Store
from agora_cli.training import round_store as rs
from agora_cli.training.rounds import RoundManager


@dataclass
class AdapterSummary:
    """One row of the `agora train` table."""

    member: str
    version: int
    status: str
    loss_first: float | None
    loss_last: float | None
    tokens_per_s: float | None
    peak_memory_mb: float | None
    path: str
    model_name: str | None


@dataclass
class RoundOutcome:
    round_id: int | None  # None: nothing to train
    status: str | None
    rows: int
    error: str | None
    attached: bool  # adapters were activated in running servers
    adapters: list[AdapterSummary]


def attached_serving(cfg: Config, paths: RunPaths, bus: EventBus) -> Serving | None:
    """The run's servers when `agora serve` is running for it (attached, never launched)."""
    if read_servers_file(paths) is None:
        return None
    serving = Serving(cfg, paths, bus)
    serving.start()  # attaches: the servers file names a live process with healthy servers
    return serving if serving.attached else None


def train_now(
    run_dir: Path | str,
    *,
    config: Path | str | None = None,
    member: str | None = None,
    bus: EventBus | None = None,
    timeout_s: float | None = None,
) -> RoundOutcome:
    """Run one round now on every unconsumed buffer row (an unfinished round is retried first).

    `member` restricts a new round to one member; the rows still count as consumed by it.
    """
    paths = RunPaths(run_dir)
    if not paths.store.exists():
        raise NoRunError(
            f"{run_dir} holds no run store; start a run with `agora run CONFIG --run-dir {run_dir}`"
        )
    if config is None and not paths.config.exists():
        raise StoreError(f"{paths.config} is missing; pass --config CONFIG")
    cfg = load_config(config if config is not None else paths.config)
    if member is not None and member not in {m.name for m in cfg.members}:
        known = ", ".join(m.name for m in cfg.members)
        raise UsageError(f"no member {member!r} in the config; members: {known}")
    if not cfg.ablations.lora:
        raise TrainingError("ablations.lora is off in this run's config: nothing is trained")
    bus = bus or EventBus()
    with runlock.hold(paths.root):
        sink = JsonlSink(paths.events)
        bus.add(sink)
        serving = None
        try:
            with Store(paths.store) as store:
                serving = attached_serving(cfg, paths, bus)
                rounds = RoundManager(
                    store, cfg, paths.ensure(), serving, bus, members=[member] if member else None
                )
                try:
                    round_id = rounds.start_now(max(store.last_committed_step(), 0))
                    if round_id is not None:
                        rounds.wait(timeout_s)
                finally:
                    rounds.shutdown()
                if round_id is None:
                    return RoundOutcome(None, None, 0, None, serving is not None, [])
                return _outcome(store, round_id, serving is not None)
        finally:
            if serving is not None:
                serving.stop()  # attached: stops nothing it did not start
            bus.remove(sink)
            sink.close()


def _outcome(store: Store, round_id: int, attached: bool) -> RoundOutcome:
    r = rs.round_row(store, round_id)
    adapters = []
    for a in sorted(rs.round_adapters(store, round_id), key=lambda a: a["member"]):
        m = json.loads(a["metrics"] or "{}")
        losses = m.get("losses") or [None]
        adapters.append(
            AdapterSummary(
                a["member"],
                a["version"],
                a["status"],
                losses[0],
                losses[-1],
                m.get("tokens_per_s"),
                m.get("peak_memory_mb"),
                a["path"],
                a["model_name"],
            )
        )
    return RoundOutcome(
        round_id, r["status"], len(json.loads(r["buffer_ids"])), r["error"], attached, adapters
    )
