"""Optional TensorBoard logging of a run's step scalars (`logging.tensorboard: true`).

An event sink like `events.JsonlSink`: it reads the events the engine already emits and writes
`RUN/tensorboard/events.out.tfevents.*` with `torch.utils.tensorboard.SummaryWriter`. Being a sink,
it can never stop a run: the bus reports its first failure once (`sink_failed`) and goes on.

Scalars, by event (x axis = the loop step unless said otherwise):

  step_committed      protocol/d_t, protocol/d_next (Eq. 1), protocol/V_t, protocol/V_target,
                      protocol/F_t (Eq. 2; when computed), buffer/size, step/wall_s,
                      rating_mu/<member>, rating_sigma/<member>, validated/<member> (cumulative)
  validation_score    anchor/<benchmark>/<member> (the in-run external anchor; `agora eval`
                      scores have no step and are not logged)
  training_progress   train_loss/<member>/round_<n>, x = the round's optimizer step
  consensus_audit     audit/precision, audit/recall (unanimous consensus vs gold on this step's
                      probe solutions), audit/precision_run, audit/recall_run (the run so far),
                      audit_precision/<verifier>, audit_recall/<verifier> (each verifier's own
                      verdicts, this step); a rate with no cases (e.g. nothing approved) is not
                      logged. TensorBoard shows no intervals: `agora status` and the report give
                      each rate with its 95% Wilson interval (agora_cli/audit.py).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from agora_cli.audit import CONSENSUS, Counts
from agora_cli.errors import ConfigError
from agora_cli.events import Event

PACKAGE = "tensorboard"


def check_tensorboard(source: str) -> None:
    """ConfigError (exit 2) when `logging.tensorboard` is on and the package is missing."""
    try:
        ok = importlib.util.find_spec(PACKAGE) is not None
    except (ImportError, ValueError):  # a broken or blocked package
        ok = False
    if not ok:
        raise ConfigError(
            source,
            [
                (
                    "logging.tensorboard",
                    "needs the tensorboard package, which this Python cannot import; "
                    "`pip install tensorboard` (or `pip install -e '.[tensorboard]'`), or set "
                    "logging.tensorboard: false",
                )
            ],
        )


class TensorBoardSink:
    """Writes the step scalars of the events it receives to a TensorBoard log directory.

    The writer is created at the first event, so an unwritable directory is a sink failure the bus
    reports, not a crash at start.
    """

    def __init__(self, log_dir: Any):
        self.name = str(log_dir)
        self._dir = log_dir
        self._writer: Any = None

    def _w(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._dir))
        return self._writer

    def __call__(self, event: Event) -> None:
        kind = event.get("kind")
        if kind == "step_committed":
            self._step(event)
        elif kind == "validation_score" and event.get("step") is not None:
            self._scalar(f"anchor/{event['benchmark']}/{event['member']}", event.get("score"), event["step"])
        elif kind == "consensus_audit":
            self._audit(event)
        elif kind == "training_progress" and "loss" in event:
            self._scalar(
                f"train_loss/{event['member']}/round_{event.get('round')}",
                event["loss"],
                event.get("step", 0),
            )

    def _step(self, e: Event) -> None:
        t = e["step"]
        for tag, key in (
            ("protocol/d_t", "d"),
            ("protocol/d_next", "d_next"),
            ("protocol/V_t", "v_t"),
            ("protocol/V_target", "v_target"),
            ("protocol/F_t", "f_t"),
            ("buffer/size", "buffer"),
            ("step/wall_s", "wall_s"),
        ):
            self._scalar(tag, e.get(key), t)
        for member, stats in (e.get("members") or {}).items():
            for key, tag in (("mu", "rating_mu"), ("sigma", "rating_sigma"), ("validated", "validated")):
                self._scalar(f"{tag}/{member}", stats.get(key), t)
        self._w().flush()  # one flush per step: TensorBoard shows a live run

    def _audit(self, e: Event) -> None:
        t = e["step"]

        def rates(counts: dict[str, int] | None) -> tuple[float | None, float | None]:
            c = Counts(**(counts or {}))
            return _rate(*c.precision), _rate(*c.recall)

        for verifier, counts in (e.get("verifiers") or {}).items():
            precision, recall = rates(counts)
            if verifier == CONSENSUS:
                self._scalar("audit/precision", precision, t)
                self._scalar("audit/recall", recall, t)
            else:
                self._scalar(f"audit_precision/{verifier}", precision, t)
                self._scalar(f"audit_recall/{verifier}", recall, t)
        precision, recall = rates((e.get("total") or {}).get(CONSENSUS))
        self._scalar("audit/precision_run", precision, t)
        self._scalar("audit/recall_run", recall, t)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return  # not computed this step (None)
        self._w().add_scalar(tag, float(value), int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None
