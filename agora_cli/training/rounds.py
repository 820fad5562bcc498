"""Asynchronous training rounds (protocol step 6): buffer rows -> one adapter per member -> live.

The loop keeps running on the old adapters while a round trains. A round's life:

  maybe_start   one transaction: `rounds` row (status pending, the buffer ids as JSON), those buffer
                rows' `round_id`, and one `adapters` row per member (status training, its version)
  (training)    one worker process per member (`python -m agora_cli.training.worker SPEC.json`),
                at once when each has GPUs of its own, else one at a time (a small box has
                few cores); as Ray tasks with a cluster (ray_rounds.py)
  poll          a finished worker's adapter becomes `ready`; activation (merging, loading into the
                server) runs on a background thread so the caller's event loop never stalls; then
                the adapter is `live` and the member's previous one `retired`
  (live)        every member's adapter is live: the round is `live` and its rows are consumed

A failure anywhere (worker crash, save error, activation error) leaves the previous adapter live
and the round retriable with the same rows: `maybe_start` relaunches it (up to MAX_ATTEMPTS), and
`resume()` in a new process relaunches it whatever its attempt count. A member whose adapter for
the round is already `ready` or `live` is not trained again. Rows are therefore used by exactly
one round, and a round's rows are trained into each member exactly once.

Statuses (written through `round_store`, the one home of the rounds' SQL): rounds
`pending | training | live | failed`; adapters `training | ready | live | retired | failed`.
`live` means "the member's current adapter"; its `model_name` is set when a server has loaded it
(NULL when trained with no server attached).

Where a worker runs is a seam (`Workers`: start, exit_code, stop): `LocalWorkers`, subprocesses of
this process, unless the config's cluster has a `training` section; then `ray_rounds.RayWorkers`
runs each member's worker as a Ray task on whichever node Ray places it and brings its files back
into the run directory, so everything after a worker exits is the same for both.

The worker's command is a parameter (`command(spec_path) -> argv`, default `worker_command`), so
the retry, crash, activation-failure and shutdown paths run in the fast tests against a small stub
worker; real training runs in the training and end-to-end tests.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agora_cli.config import Config, chat_template_text
from agora_cli.errors import TrainingError
from agora_cli.events import NULL_BUS, EventBus
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from agora_cli.training import round_store as rs
from agora_cli.training.data import load_samples, member_seed, samples_to_json
from agora_cli.training.devices import training_gpus, visible_gpus, worker_env
from agora_cli.training.trainer import TrainSpec
from agora_cli.training.worker import terminate, worker_command

MAX_ATTEMPTS = 3  # in one process; resume() always retries once more
WorkerCommand = Callable[[Path], list[str]]  # spec path -> the worker's argv


@dataclass
class _Job:
    """One member's worker in the round in flight."""

    member: str
    version: int
    adapter_dir: Path
    spec_path: Path
    progress_path: Path
    result_path: Path
    log_path: Path
    handle: Any = None  # what the Workers started: a Popen, a Ray task's reference
    pid: int | None = None  # a local worker's process id
    offset: int = 0  # bytes of the progress file already emitted as events
    started: float = 0.0


class Workers(Protocol):
    """Where members' workers run. `start` runs the worker for `spec` (a TrainSpec whose paths are
    the job's, already written to its `spec_path`); once `exit_code` is not None, the job's
    result, progress and log files and its adapter directory are in the run directory, as a
    local worker leaves them. `can_start` says whether `member`'s worker may start beside the
    members' workers now running."""

    def start(self, job: _Job, spec: TrainSpec) -> None: ...
    def exit_code(self, job: _Job) -> int | None: ...
    def stop(self, job: _Job) -> None: ...
    def can_start(self, member: str, running: Collection[str]) -> bool: ...


class LocalWorkers:
    """Each worker a subprocess of this process, on the GPUs devices.py gives its member.
    Members whose trainers have GPUs of their own, none shared, train at once (a homogeneous group
    with a GPU per member trains in the time of one member); a trainer without GPUs (a CPU
    machine) or sharing one trains alone."""

    def __init__(self, cfg: Config, command: WorkerCommand):
        self.cfg = cfg
        self.command = command
        self.gpus = training_gpus(cfg, visible_gpus())  # member -> its trainer's GPUs

    def start(self, job: _Job, spec: TrainSpec) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.cfg.training.max_threads:
            env["OMP_NUM_THREADS"] = str(self.cfg.training.max_threads)
        env.update(worker_env(self.gpus.get(job.member)))
        with open(job.log_path, "a") as log:  # the child keeps its own descriptor
            job.handle = subprocess.Popen(
                self.command(job.spec_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        job.pid = job.handle.pid

    def exit_code(self, job: _Job) -> int | None:
        return job.handle.poll()

    def can_start(self, member: str, running: Collection[str]) -> bool:
        if not running:
            return True
        mine = set(self.gpus.get(member) or ())
        theirs = [set(self.gpus.get(r) or ()) for r in running]
        return bool(mine) and all(gpus and not mine & gpus for gpus in theirs)

    def stop(self, job: _Job) -> None:
        terminate(job.handle)


def workers_for(cfg: Config, command: WorkerCommand | None, bus: EventBus) -> tuple[Workers, int | None]:
    """The config's workers and how many members train at once: Ray tasks when the cluster has a
    `training` section (all members at once unless it says otherwise; Ray queues what the
    cluster cannot hold), else local subprocesses (`LocalWorkers.can_start`: at once on GPUs of
    their own, else one at a time)."""
    cluster = cfg.cluster
    if cluster is not None and cluster.training is not None:
        from agora_cli.training.ray_rounds import RayWorkers  # imports ray: only with a cluster

        return RayWorkers(cfg, cluster, cluster.training, bus, command), cluster.training.max_parallel
    return LocalWorkers(cfg, command or (lambda spec: worker_command(spec, cfg.training))), None


@dataclass
class _Flight:
    round_id: int
    attempt: int
    to_train: list[str]
    running: dict[str, _Job] = field(default_factory=dict)
    activating: dict[str, tuple[Future, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class RoundManager:
    """Starts, watches and finishes training rounds for one run. Call from one thread."""

    def __init__(
        self,
        store: Store,
        cfg: Config,
        run_paths: RunPaths,
        serving: Any = None,
        bus: EventBus = NULL_BUS,
        *,
        members: list[str] | None = None,
        max_parallel: int | None = None,
        poll_interval_s: float = 0.5,
        command: WorkerCommand | None = None,
    ):
        self.store = store
        self.cfg = cfg
        self.paths = run_paths
        self.serving = serving  # anything with activate(member, adapter_dir, version) -> Endpoint
        self.bus = bus
        self.members = members or [m.name for m in cfg.members]
        self.poll_interval_s = poll_interval_s
        self.runner, default_parallel = workers_for(cfg, command, bus)
        self.max_parallel = max_parallel or default_parallel or len(self.members)
        self._flight: _Flight | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agora-activate")

    # ------------------------------------------------------------------ public API

    def resume(self) -> None:
        """Put live adapters back into restarted servers, then retry an unfinished round.

        A round a killed (or failed) run left unfinished is relaunched with its own reserved rows
        (attempts + 1); members already trained for it are only activated.
        """
        if self._flight is not None:
            return
        self.restore_live()
        row = rs.retriable_round(self.store)
        if row is not None:
            self._launch(int(row["id"]))

    def maybe_start(self, step: int) -> int | None:
        """Start a round when none is in flight and `protocol.buffer_threshold` rows wait (in the
        isolated control: when some member's OWN unconsumed rows reach it; only such members
        train, each on its own `buffer_threshold` rows).

        An unfinished round (failed attempt) is retried first, up to MAX_ATTEMPTS; a round that
        used them all blocks new rounds until `resume()` (a restart) retries it. Returns the id of
        the round launched, or None.
        """
        if self._flight is not None or not self.cfg.ablations.lora:
            return None
        row = rs.retriable_round(self.store)
        if row is not None:
            if row["attempts"] >= MAX_ATTEMPTS:
                return None
            self._launch(int(row["id"]))
            return int(row["id"])
        round_id = self.create_round(step, limit=self.cfg.protocol.buffer_threshold, exact=True)
        if round_id is None:
            return None
        self._launch(round_id)
        return round_id

    def start_now(self, step: int) -> int | None:
        """`agora train`: a round on every unconsumed row now, even below the threshold.

        An unfinished round is retried instead (its rows come first). None when nothing waits.
        """
        if self._flight is not None:
            raise TrainingError(f"round {self._flight.round_id} is already in flight")
        row = rs.retriable_round(self.store)
        round_id = int(row["id"]) if row is not None else self.create_round(step, limit=None)
        if round_id is not None:
            self._launch(round_id)
        return round_id

    def poll(self) -> None:
        """Non-blocking: emit progress, collect finished workers and activations, start the next."""
        f = self._flight
        if f is None:
            return
        for job in list(f.running.values()):
            self._emit_progress(f, job)
            code = self.runner.exit_code(job)
            if code is not None:
                del f.running[job.member]
                self._collect(f, job, code)
        self._start_workers(f)
        for member, (future, t0) in list(f.activating.items()):
            if future.done():
                del f.activating[member]
                self._finish_activation(f, member, future, t0)
        if not f.running and not f.activating and not f.to_train:
            self._finish_round(f)

    def wait(self, timeout: float | None = None) -> None:
        """Block until no round is in flight (TrainingError on timeout; the round keeps going)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._flight is not None:
            self.poll()
            if self._flight is None:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingError(
                    f"round {self._flight.round_id} still training after {timeout:.0f} s; "
                    f"see {self.paths.logs}/train-r{self._flight.round_id}-*.log"
                )
            time.sleep(self.poll_interval_s)

    def restore_live(self) -> None:
        """Re-activate each member's live adapter in servers that came up on the base weights.

        Blocking, at start: the loop's first requests must already use the recorded versions.
        """
        if self.serving is None:
            return
        for member, (version, path) in rs.live_adapters(self.store).items():
            if member not in self.members:
                continue
            name = rs.model_name(self.store, member, version)
            try:
                if name and self.serving.endpoint(member).model == name:
                    continue  # attached to servers that already serve it
                t0 = time.perf_counter()
                endpoint = self.serving.activate(member, path, version)
            except Exception as exc:  # noqa: BLE001 - reported; the loop can still run
                self.bus.emit(
                    "training_failed",
                    member=member,
                    stage="restore",
                    version=version,
                    error=f"could not re-activate adapter v{version} from {path}: {exc}",
                )
                continue
            rs.set_model_name(self.store, member, version, endpoint.model)
            self.bus.emit(
                "adapter_live",
                member=member,
                version=version,
                model_name=endpoint.model,
                latency_s=round(time.perf_counter() - t0, 3),
                restored=True,
            )

    def in_flight(self) -> int | None:
        """The id of the round in flight, or None."""
        return None if self._flight is None else self._flight.round_id

    def workers(self) -> dict[str, int]:
        """member -> pid of the local worker processes running now (a Ray task's worker runs on
        the node Ray chose, under a pid of that node: not listed)."""
        f = self._flight
        if f is None:
            return {}
        return {m: j.pid for m, j in f.running.items() if j.pid is not None}

    def live_versions(self) -> dict[str, int]:
        """member -> live adapter version (0 = the base model)."""
        return rs.live_versions(self.store, [m.name for m in self.cfg.members])

    def shutdown(self) -> None:
        """Stop in-flight workers; the round stays retriable by the next run's `resume()`.

        Final: the manager starts nothing after this.
        """
        f = self._flight
        if f is not None:
            for job in f.running.values():
                self.runner.stop(job)
            f.running.clear()
            f.to_train.clear()
            for member, (future, t0) in list(f.activating.items()):
                wait_for([future])  # an activation in progress finishes: server and store agree
                self._finish_activation(f, member, future, t0)
            f.activating.clear()
        self._flight = None
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ round creation

    def create_round(self, step: int, *, limit: int | None, exact: bool = False) -> int | None:
        """Reserve unconsumed rows (oldest first) for a new round, in ONE transaction.

        `exact`: only when at least `limit` rows wait, and then exactly `limit`. Each member gets
        an `adapters` row (status training) with its next version. In the isolated-evolution
        control a member learns only from its own validated solutions, so only members with rows
        in the round train in it.
        """
        return rs.create_round(
            self.store,
            step,
            self.members,
            self.paths.adapter_dir,
            limit=limit,
            exact=exact,
            own_rows_only=self.cfg.protocol.mode == "isolated",
        )

    # ------------------------------------------------------------------ launching

    def _launch(self, round_id: int) -> None:
        attempt = rs.start_attempt(self.store, round_id)
        rows = rs.round_adapters(self.store, round_id)
        f = _Flight(round_id, attempt, to_train=[])
        self._flight = f
        for r in rows:
            if r["status"] in ("live", "retired"):
                continue
            if r["status"] == "ready" and Path(r["path"]).is_dir():
                self._activate(f, r["member"], Path(r["path"]), r["version"])
            else:
                f.to_train.append(r["member"])
        self._start_workers(f)

    def _start_workers(self, f: _Flight) -> None:
        while f.to_train and len(f.running) < self.max_parallel and self._flight is f:
            member = next((m for m in f.to_train if self.runner.can_start(m, f.running.keys())), None)
            if member is None:  # each waits for a GPU a running trainer holds
                return
            f.to_train.remove(member)
            try:
                job = self._spawn(f, member)
            except Exception as exc:  # noqa: BLE001 - any launch failure fails this member only
                self._member_failed(f, member, f"could not start the worker: {exc}")
                continue
            f.running[member] = job

    def _spawn(self, f: _Flight, member: str) -> _Job:
        row = rs.adapter_of(self.store, f.round_id, member)
        version, out = int(row["version"]), Path(row["path"])
        buffer_ids = rs.buffer_ids(self.store, f.round_id)
        work = self.paths.root / "training" / f"round-{f.round_id}"
        work.mkdir(parents=True, exist_ok=True)
        for stale in glob.glob(str(out.parent / f".{out.name}.tmp-*")):  # a killed save
            shutil.rmtree(stale, ignore_errors=True)
        job = _Job(
            member,
            version,
            out,
            spec_path=work / f"{member}.spec.json",
            progress_path=work / f"{member}.attempt{f.attempt}.progress.jsonl",
            result_path=work / f"{member}.attempt{f.attempt}.result.json",
            log_path=self.paths.logs / f"train-r{f.round_id}-{member}.log",
        )
        spec = TrainSpec(
            member=member,
            version=version,
            base_model_dir=None,  # the worker prepares it (see TrainSpec.member_config)
            member_config=self.cfg.member(member).model_dump(mode="json"),
            output_dir=str(out),
            samples=samples_to_json(
                load_samples(
                    self.store,
                    buffer_ids,
                    self.cfg.prompts_dir,
                    author=member if self.cfg.protocol.mode == "isolated" else None,
                )
            ),
            # Each member its own seed, so members sharing a base and the buffer stay distinct.
            training={
                **self.cfg.training.model_dump(mode="json"),
                "seed": member_seed(self.cfg.seed, self.cfg.training.seed, member),
            },
            round_id=f.round_id,
            previous_adapter_dir=self._previous_adapter(member, f.round_id),
            chat_template=chat_template_text(self.cfg.member(member)),
            progress_path=str(job.progress_path),
            result_path=str(job.result_path),
        )
        job.result_path.unlink(missing_ok=True)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        job.spec_path.write_text(spec.to_json())  # the record, wherever the worker runs
        self.runner.start(job, spec)
        job.started = time.monotonic()
        self.bus.emit(
            "training_started",
            round=f.round_id,
            member=member,
            version=version,
            attempt=f.attempt,
            rows=len(buffer_ids),
            pid=job.pid,
        )
        return job

    def _previous_adapter(self, member: str, round_id: int) -> str | None:
        path = rs.previous_live_path(self.store, member, round_id)
        return path if path is not None and Path(path).is_dir() else None

    # ------------------------------------------------------------------ collecting

    def _emit_progress(self, f: _Flight, job: _Job) -> None:
        try:
            with job.progress_path.open() as fh:
                fh.seek(job.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]  # a torn last line is read next time
        job.offset += len(complete.encode())
        for line in complete.splitlines():
            try:
                p = json.loads(line)
            except json.JSONDecodeError:
                continue
            p.pop("member", None)
            self.bus.emit("training_progress", round=f.round_id, member=job.member, **p)

    def _collect(self, f: _Flight, job: _Job, code: int) -> None:
        self._emit_progress(f, job)
        result: dict[str, Any] = {}
        if job.result_path.exists():
            result = json.loads(job.result_path.read_text())
        if code != 0 or "error" in result or not (job.adapter_dir / "adapter_config.json").exists():
            detail = result.get("error") or f"worker exited with code {code}"
            self._member_failed(f, job.member, f"{detail}; see {job.log_path}")
            return
        metrics = {
            k: result.get(k)
            for k in (
                "losses",
                "steps",
                "tokens",
                "target_tokens",
                "padding_tokens",
                "tokens_per_s",
                "peak_memory_mb",
                "train_s",
                "cpu_s",
                "total_s",
                "skipped_ids",
                "buffer_ids",
                "estimated_peak_mb",
                "gradient_checkpointing",
                "loss_kind",
            )
        }
        metrics.update({k: result[k] for k in ("node", "task_attempt") if k in result})  # Ray tasks
        metrics["wall_s"] = round(time.monotonic() - job.started, 2)
        rs.mark_ready(self.store, f.round_id, job.member, metrics)
        losses = result.get("losses") or [None]
        self.bus.emit(
            "training_finished",
            round=f.round_id,
            member=job.member,
            version=job.version,
            loss_first=losses[0],
            loss_last=losses[-1],
            steps=result.get("steps"),
            tokens_per_s=result.get("tokens_per_s"),
            peak_memory_mb=result.get("peak_memory_mb"),
            train_s=result.get("train_s"),
            path=str(job.adapter_dir),
        )
        self._activate(f, job.member, job.adapter_dir, job.version)

    def _member_failed(self, f: _Flight, member: str, error: str, stage: str = "train") -> None:
        f.errors[member] = error
        if stage == "train":
            rs.mark_failed(self.store, f.round_id, member)
        self.bus.emit(
            "training_failed",
            round=f.round_id,
            member=member,
            stage=stage,
            error=error,
            attempt=f.attempt,
        )

    # ------------------------------------------------------------------ activation

    def _activate(self, f: _Flight, member: str, adapter_dir: Path, version: int) -> None:
        t0 = time.perf_counter()
        if self.serving is None:
            future: Future = Future()
            future.set_result(None)
        else:  # merging can take seconds: off the caller's event loop
            future = self._pool.submit(self.serving.activate, member, adapter_dir, version)
        f.activating[member] = (future, t0)

    def _finish_activation(self, f: _Flight, member: str, future: Future, t0: float) -> None:
        try:
            endpoint = future.result()
        except Exception as exc:  # noqa: BLE001 - the adapter stays ready; the round is retried
            self._member_failed(f, member, f"activation failed: {exc}", stage="activate")
            return
        latency = time.perf_counter() - t0
        model_name = getattr(endpoint, "model", None)
        version = rs.make_live(self.store, f.round_id, member, model_name)
        self.bus.emit(
            "adapter_live",
            round=f.round_id,
            member=member,
            version=version,
            model_name=model_name,
            latency_s=round(latency, 3),
        )

    def _finish_round(self, f: _Flight) -> None:
        self._flight = None
        if not f.errors:
            rs.finish_round(self.store, f.round_id, "live", None)
            return
        status = "failed" if f.attempt >= MAX_ATTEMPTS else "pending"
        error = "; ".join(f"{m}: {e}" for m, e in f.errors.items())
        rs.finish_round(self.store, f.round_id, status, error)
