"""Structured events. The engine emits; sinks (JSONL file, rich live view, plain printer) consume.

The engine never prints. Every event is a flat dict with `t` (unix time), `kind` and fields.
Kinds in use (add new ones here so consumers can find them):

  run_started, run_resumed, run_finished, step_started, step_committed,
  phase_started, phase_finished          {phase, step, n}
  phase_progress                          {phase, step, done, total}  (totals grow as work flows)
  seed_fallback                           {step, n}  (all generated problems dropped)
  request_done                            {member, role, latency_s, prompt_tokens, completion_tokens, ok}
  problem_dropped                         {step, reason}
  verdict                                 {step, solution_id, verifier, valid}
  rating_update                           {member, mu, sigma}
  buffer_size                             {size, threshold}
  difficulty                              {step, d, v, v_target}
  surprise                                {step, f, strategy}
  training_started, training_progress, training_finished, training_failed  {round, member, ...}
                                          (training_progress step 0: the memory plan,
                                          {gradient_checkpointing, memory, estimated_peak_gb,
                                          memory_budget_gb}; then one per optimizer step)
  adapter_live                            {member, version, model_name, latency_s}
  validation_score                        {step, member, benchmark, score, n}
  server_started, server_stopped          {backend, url, log} (+ model on server_started)
  adapter_unload_failed                   {backend, member, lora_name, error}  (sglang; harmless)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]
Sink = Callable[[Event], None]


class EventBus:
    """Fan-out of events to sinks. Thread-safe; a failing sink never breaks the engine."""

    def __init__(self, sinks: list[Sink] | None = None):
        self._sinks: list[Sink] = list(sinks or [])
        self._lock = threading.Lock()

    def add(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(self, kind: str, **fields: Any) -> Event:
        event: Event = {"t": round(time.time(), 3), "kind": kind, **fields}
        with self._lock:
            for sink in self._sinks:
                try:
                    sink(event)
                except Exception:  # noqa: BLE001 - display must never take the engine down
                    pass
        return event


class JsonlSink:
    """Appends one JSON line per event to `events.jsonl` (line-buffered, so `status` sees it live)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", buffering=1, encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self._f.close()


def read_events(path: Path) -> list[Event]:
    """All events of a run (a torn last line from a killed writer is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


NULL_BUS = EventBus()
