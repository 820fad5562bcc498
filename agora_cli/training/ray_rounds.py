"""Training rounds as Ray tasks (config `cluster.training`): each member's worker runs on the node
Ray places it on, and its files travel through Ray's object store, not a shared filesystem.

Imported only when the cluster has a `training` section (rounds.workers_for), so nothing else
imports ray. `RayWorkers` is the round manager's `Workers` for a cluster:

  start       the TrainSpec (the reserved rows' samples inside it) and the member's previous
              adapter packed as a tar are the task's arguments; a task asks for
              `cluster.training.num_gpus` (several GPUs of one node for `accelerate launch`: Ray
              places a task on one node) and `num_cpus`; Ray queues tasks the cluster cannot hold
  (the task)  `train_member` unpacks into a node-local temp dir, rewrites the spec's paths to it,
              runs the SAME worker command agora runs locally (under serving/guard.py, so the
              worker stops when the task's process dies); while it runs, the worker's progress
              lines go to the driver every PROGRESS_EVERY_S through a small actor on the
              driver's node (`ProgressSink`); it returns its exit code, result, the progress
              lines not sent yet, log and the adapter directory packed as a tar
  exit_code   appends the progress lines that arrived to the job's progress file (the round
              manager emits them as `training_progress` events, as for a local worker); once the
              task returned: the result and log are written where a local worker writes them,
              the adapter is unpacked into the round's adapter dir atomically (temp dir +
              rename), and the round manager collects and activates as always
  stop        `ray.cancel`: the task stops its worker's process group (SIGTERM, then SIGKILL);
              a task still running after STOP_GRACE_S is killed (`force=True`)

A task lost with its worker process or its node is re-run by Ray (`max_retries`) with the same
arguments, hence on the same rows; the run records the attempt that produced the adapter
(`task_attempt` in the adapter's metrics, a `training_retried` event). A worker that fails on its
own (exit code, error) is not a lost task: the round manager retries the round as on one machine.
The driver's run directory stays the durable record (spec, result, progress, log, adapter).

Stopping what a task started: a task process that dies unasked (SIGKILL, the OOM killer) leaves
the guard, which stops the worker's group. When Ray itself ends a task's process (a forced
cancel, the driver gone), it kills that process's direct children too, the guard among them; the
worker then exits on its own (worker.exit_with_parent), but under `accelerate launch` the
launcher's processes may finish their round first. The graceful cancel above avoids that case.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agora_cli.config import Config
from agora_cli.config.schema import Cluster, ClusterTraining
from agora_cli.events import EventBus
from agora_cli.packing import pack, unpack, unpack_atomic
from agora_cli.ray_cluster import connect
from agora_cli.serving.process import pid_alive, stop_group
from agora_cli.training.trainer import META_FILE, TrainSpec
from agora_cli.training.worker import worker_command, write_json_atomic

# The guard that stops a server when agora dies does the same for a worker when its task's
# process dies (a lost task must not leave a trainer running on the node). Run as a script.
GUARD = Path(__file__).resolve().parent.parent / "serving" / "guard.py"
TEMP_PREFIX = "agora-train-"  # then the task process's pid: agora-train-<pid>-<random>
# Ray kills a cancelled task's process with SIGKILL, and its direct children (the guard) with it,
# which leaves the worker below them orphaned: a cancel first asks the task to stop its worker.
STOP_GRACE_S = 15.0
LOG_TAIL_BYTES = 4 * 2**20  # what comes back of a worker's log: its end, where the error is
PROGRESS_EVERY_S = 2.0  # how often a task sends its worker's new progress lines, and the driver takes them
SEND_TIMEOUT_S = 10.0  # a send not confirmed in this long: the lines come back with the result instead

WorkerCommand = Callable[[Path], list[str]]  # spec path (on the node) -> the worker's argv


class Job(Protocol):
    """The parts of the round manager's job this module reads and fills (rounds._Job)."""

    member: str
    adapter_dir: Path
    spec_path: Path
    progress_path: Path
    result_path: Path
    log_path: Path
    handle: Any


class ProgressSink:
    """Progress lines the tasks sent while they run, by the driver's progress file they belong
    to, kept until the driver takes them (an actor on the driver's node)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, key: str, text: str) -> None:
        self.lines.append((key, text))

    def take(self) -> list[tuple[str, str]]:
        lines, self.lines = self.lines, []
        return lines


class _Sender:
    """The task's side: sends the complete lines its worker appended to `path` since the last
    send, at most every PROGRESS_EVERY_S. What was not confirmed sent is `rest()` at the end (a
    send that timed out but arrived later shows its lines twice: display only, never lost)."""

    def __init__(self, path: Path, sink: Any, key: str):
        self.path, self.sink, self.key = path, sink, key
        self.sent = 0  # bytes of the file confirmed sent
        self.last = time.monotonic()
        self.broken = False

    def _unsent(self) -> str:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.sent)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def maybe_send(self) -> None:
        if self.broken or time.monotonic() - self.last < PROGRESS_EVERY_S:
            return
        self.last = time.monotonic()
        chunk = self._unsent()
        complete = chunk[: chunk.rfind("\n") + 1]  # a torn last line goes next time
        if not complete:
            return
        try:
            ray.get(self.sink.add.remote(self.key, complete), timeout=SEND_TIMEOUT_S)
        except (ray.exceptions.RayError, TimeoutError):
            self.broken = True  # the rest comes back with the result
            return
        self.sent += len(complete.encode())

    def rest(self) -> str:
        return self._unsent()


@dataclass
class _Task:
    ref: Any  # the task's ObjectRef
    round_id: int | None


def task_attempt() -> int | None:
    """Which run of the current Ray task this is: 1, then 2 after Ray re-ran it. None where this
    Ray has no such call (it is the core worker's, not public API)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    core = getattr(getattr(worker, "global_worker", None), "core_worker", None)
    attempt = getattr(core, "get_current_task_attempt_number", None)
    return None if attempt is None else int(attempt()) + 1


def remove_orphaned_dirs(temp: Path) -> None:
    """Remove the temp dirs of tasks whose process died (a killed task never cleans its own; its
    pid is in the name; a dir whose pid lives again under another program stays)."""
    for d in temp.glob(f"{TEMP_PREFIX}*-*"):
        pid = d.name.removeprefix(TEMP_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def train_member(
    spec_json: str,
    previous: bytes | None,
    command: WorkerCommand,
    env: dict[str, str],
    sink: Any,
    key: str,
) -> dict[str, Any]:
    """The Ray task: train one member on this node with the worker agora runs locally, sending
    its progress lines to `sink` (a `ProgressSink`), under `key`, as they come.

    Returns {code, result (the worker's result file or None), progress (the lines not sent),
    log, adapter (tar or None), node, task_attempt}.
    """
    attempt = task_attempt()
    node = ray.get_runtime_context().get_node_id()
    remove_orphaned_dirs(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as tmp:
        work = Path(tmp)
        out, progress_file, result_file = work / "adapter", work / "progress.jsonl", work / "result.json"
        spec = TrainSpec(**json.loads(spec_json))
        prev = spec.previous_adapter_dir  # its path on the driver
        sender = _Sender(progress_file, sink, key)
        previous_dir = None
        if previous is not None:
            previous_dir = work / "previous"
            unpack(previous, previous_dir)
        local = replace(
            spec,
            output_dir=str(out),
            previous_adapter_dir=None if previous_dir is None else str(previous_dir),
            progress_path=str(progress_file),
            result_path=str(result_file),
        )
        spec_path = work / "spec.json"
        spec_path.write_text(local.to_json())
        log_path = work / "worker.log"
        guarded = [sys.executable, "-P", str(GUARD), "--parent", str(os.getpid()), "--", *command(spec_path)]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                guarded,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True,  # the guard leads the group it stops when we die
            )
            try:  # polled: a cancel's KeyboardInterrupt lands between sleeps, not in a wait()
                while (code := proc.poll()) is None:
                    time.sleep(0.2)
                    sender.maybe_send()
            except BaseException:
                stop_group(proc)
                raise
        meta = out / META_FILE
        if meta.is_file():  # the lineage names the driver's copy of the previous adapter
            meta.write_text(json.dumps({**json.loads(meta.read_text()), "previous_adapter": prev}, indent=2))
        with log_path.open("rb") as fh:
            fh.seek(max(0, log_path.stat().st_size - LOG_TAIL_BYTES))
            log_tail = fh.read().decode(errors="replace")
        return {
            "code": code,
            "result": json.loads(result_file.read_text()) if result_file.is_file() else None,
            "progress": sender.rest(),
            "log": log_tail,
            "adapter": pack(out) if out.is_dir() else None,
            "node": node,
            "task_attempt": attempt,
        }


class RayWorkers:
    """The round manager's workers as Ray tasks (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        cluster: Cluster,
        spec: ClusterTraining,
        bus: EventBus,
        command: WorkerCommand | None = None,
    ):
        connect(cluster.address, cluster.runtime_env)
        num_gpus = cfg.training.num_gpus if spec.num_gpus is None else spec.num_gpus
        self.task = ray.remote(train_member).options(
            num_gpus=num_gpus, num_cpus=spec.num_cpus, max_retries=spec.max_retries
        )
        # Built on the node, where `sys.executable` is the node's Python (a runtime_env may differ).
        self.command = command or functools.partial(worker_command, training=cfg.training)
        self.env = {"OMP_NUM_THREADS": str(cfg.training.max_threads)} if cfg.training.max_threads else {}
        self.bus = bus
        # Beside the driver: it lives and dies with this process, never with a worker node.
        self.sink: Any = (
            ray.remote(ProgressSink)
            .options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=False
                ),
            )
            .remote()
        )
        self.progress_files: set[str] = set()  # the running jobs' progress files, by driver path
        self.taken = 0.0  # when the driver last took the sink's lines

    def start(self, job: Job, spec: TrainSpec) -> None:
        """Submit the member's task (the round manager keeps the spec in the run directory)."""
        prev = spec.previous_adapter_dir
        previous = pack(Path(prev)) if prev is not None else None
        key = str(job.progress_path)
        ref = self.task.remote(spec.to_json(), previous, self.command, self.env, self.sink, key)
        self.progress_files.add(key)
        job.handle = _Task(ref, spec.round_id)

    def exit_code(self, job: Job) -> int | None:
        """None while the task runs (or waits to be re-run); then its files are in place."""
        task: _Task = job.handle
        ready, _ = ray.wait([task.ref], timeout=0)
        # After the wait: a task done has sent all its lines; they go first (its last ones come
        # with its result), so a done task whose lines could not be taken yet waits a poll.
        if not self._take_progress(everything=bool(ready)) or not ready:
            return None
        self.progress_files.discard(str(job.progress_path))
        try:
            out = ray.get(task.ref)
        except ray.exceptions.RayError as e:  # lost past its retries, or cancelled
            with job.log_path.open("a") as log:
                log.write(f"--- the Ray task failed ---\n{e}\n")
            write_json_atomic(job.result_path, {"error": f"the Ray task failed: {e}"})
            return -1
        self._write_back(job, task, out)
        return int(out["code"])

    def can_start(self, member: str, running: Collection[str]) -> bool:
        """Always: Ray queues a task until the cluster has its resources."""
        return True

    def stop(self, job: Job) -> None:
        """Cancel the task (not retried by Ray): it stops its worker's process group; a task that
        has not ended after STOP_GRACE_S is killed with its process."""
        self.progress_files.discard(str(job.progress_path))
        ray.cancel(job.handle.ref)
        ready, _ = ray.wait([job.handle.ref], timeout=STOP_GRACE_S)
        if not ready:
            ray.cancel(job.handle.ref, force=True)

    def _take_progress(self, everything: bool) -> bool:
        """Append the progress lines the tasks sent to their jobs' progress files: every
        PROGRESS_EVERY_S, and at once when a task has ended (`everything`). False when the sink
        did not answer in time (the lines stay there for the next call); a sink that died took
        its lines with it, and nothing is worth waiting for."""
        if not everything and time.monotonic() - self.taken < PROGRESS_EVERY_S:
            return True
        self.taken = time.monotonic()
        try:
            lines = ray.get(self.sink.take.remote(), timeout=SEND_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            return False
        except ray.exceptions.RayError:
            return True
        for key, text in lines:
            if key in self.progress_files:  # a cancelled job's stragglers are dropped
                with Path(key).open("a") as fh:
                    fh.write(text)
        return True

    def _write_back(self, job: Job, task: _Task, out: dict[str, Any]) -> None:
        attempt, node = out["task_attempt"], out["node"]
        with job.log_path.open("a") as log:
            log.write(f"--- Ray task attempt {attempt} on node {node}, exit code {out['code']} ---\n")
            log.write(out["log"])
        with job.progress_path.open("a") as fh:
            fh.write(out["progress"])
        if out["adapter"] is not None:
            unpack_atomic(out["adapter"], job.adapter_dir, replace=True)
        if out["result"] is not None:
            write_json_atomic(job.result_path, {**out["result"], "node": node, "task_attempt": attempt})
        if attempt is not None and attempt > 1:
            self.bus.emit(
                "training_retried", round=task.round_id, member=job.member, task_attempt=attempt, node=node
            )
