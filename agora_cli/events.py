"""Structured events. The engine emits; sinks (JSONL file, rich live view, plain printer) consume.

The engine never prints. Every event is a flat dict with `t` (unix time), `kind` and fields.
Kinds in use (add new ones here so consumers can find them):

  run_started, run_resumed, step_started, step_committed (+ unconsumed: untrained buffer rows)
  run_finished                            {steps} (+ nothing_to_do, steps_target when no step ran)
  phase_started, phase_finished          {phase, step, n}  (phase "anchor": external anchoring,
                                          + members on phase_started)
  phase_progress                          {phase, step, done, total}  (totals grow as work flows)
  seed_fallback                           {step, n, slot}  (a slot's retries all dropped)
  request_done                            {member, role, latency_s, prompt_tokens, completion_tokens, ok}
  problem_dropped                         {step, reason, author, slot}
  verdict                                 {step, solution_id, verifier, valid}
  rating_update                           {member, mu, sigma}
  buffer_size                             {size, threshold}
  difficulty                              {step, d, v, v_target}
  surprise                                {step, f, strategy, note?}  (note: why F_t is undefined)
  fem                                     {step, member, d_from, d_to, peak, current, n, text}
                                          (FEM lowered d: member None for the ensemble)
  training_started, training_progress, training_finished, training_failed  {round, member, ...}
                                          (training_progress step 0: the memory plan,
                                          {gradient_checkpointing, memory, estimated_peak_gb,
                                          memory_budget_gb}; then one per optimizer step)
  training_retried                        {round, member, task_attempt, node}  (a Ray task lost with
                                          its process or node was re-run on the same rows)
  adapter_live                            {member, version, model_name, latency_s}
  validation_score                        {step, member, benchmark, score, n, reused?}
  eval_progress                           {member, benchmark, done, total}  (`agora eval`; its
                                          phase_started "evaluate" carries `totals` per pair)
  consensus_audit                         {step, precision, recall, verifiers, total}  (probe
                                          counts {tp, fp, fn, tn} per verifier and '@consensus':
                                          this step's, and the run's `total`; agora_cli/audit.py)
  server_starting                         {backend, url, model, log, launch}  (launched, or
                                          waited for when `launch: false`; then server_started)
  server_started, server_stopped          {backend, url, log} (+ model on server_started)
  servers_attached                        {backends, file}  (`agora serve`'s servers, no start)
  training_wait                           {round, workers}  (the last step is committed; the run
                                          waits for this round to train and go live)
  adapter_unload_failed                   {backend, member, lora_name, error}  (sglang, vllm; harmless)
  server_stop_failed                      {backend, error}  (a server may still be running)
  sink_failed                             {sink, error}  (once per sink; the others keep going)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]
Sink = Callable[[Event], None]
log = logging.getLogger("agora")


class EventBus:
    """Fan-out of events to sinks. Thread-safe; a failing sink never breaks the engine.

    The first failure of a sink is said once: a warning on the `agora` logger (stderr unless
    configured otherwise) and a `sink_failed` event to the other sinks. The failing sink keeps
    receiving events (a full disk may free up) and every other sink keeps going.
    """

    def __init__(self, sinks: list[Sink] | None = None):
        self._sinks: list[Sink] = list(sinks or [])
        self._failed: set[int] = set()  # id() of sinks whose failure was reported
        self._lock = threading.RLock()

    def add(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def remove(self, sink: Sink) -> None:
        """Stop sending to `sink` (a no-op when it is not attached)."""
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]
            self._failed.discard(id(sink))

    def emit(self, kind: str, **fields: Any) -> Event:
        event: Event = {"t": round(time.time(), 3), "kind": kind, **fields}
        with self._lock:
            failures = []
            for sink in self._sinks:
                try:
                    sink(event)
                except Exception as e:  # noqa: BLE001 - display must never take the engine down
                    if id(sink) not in self._failed:
                        self._failed.add(id(sink))
                        failures.append((sink, e))
            for sink, exc in failures:
                name = getattr(sink, "name", None) or type(sink).__name__
                error = f"{type(exc).__name__}: {exc}"
                log.warning("event sink %s failed (%s); other sinks keep going", name, error)
                self.emit("sink_failed", sink=name, error=error)
        return event


class JsonlSink:
    """Appends one JSON line per event to `events.jsonl` (line-buffered, so `status` sees it live)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.name = str(path)
        self._f = path.open("a", buffering=1, encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # a line that failed to write (already reported by the bus) fails again
            pass


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
