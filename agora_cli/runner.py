"""Running the loop on a run directory: resume checks, servers, training rounds, stage commands.

`run` is what `agora run` calls: it stores the resolved config in the run directory (a resume with
a different config is refused unless forced), starts or attaches the servers, then runs steps until
`steps` are committed in total, starting training rounds between steps when LoRA is on. `run_stage`
is what `agora generate|solve|verify|vote` call: one phase of the open step, nothing committed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agora_cli import runlock
from agora_cli import steps as step_store
from agora_cli.client import ClientPool
from agora_cli.commit import init_ratings, member_stats
from agora_cli.config import Config, dump_config, load_config
from agora_cli.errors import ConfigError, NoRunError, TrainingError
from agora_cli.evaluation.anchor import run_anchor
from agora_cli.evaluation.grading import Grader
from agora_cli.events import EventBus, JsonlSink
from agora_cli.loop import begin_step, run_step
from agora_cli.metric_logging import TensorBoardSink, check_tensorboard
from agora_cli.paths import RunPaths
from agora_cli.protocol.prompts import Prompts
from agora_cli.serving import serving_pool
from agora_cli.step import STAGES
from agora_cli.store import Store
from agora_cli.training.round_store import live_versions, retriable_round
from agora_cli.training.rounds import RoundManager

TRAINING_PACKAGES = ("torch", "peft")  # what a training worker imports (agora_cli.training.trainer)


@dataclass
class RunResult:
    run_dir: Path
    first_step: int  # the step this invocation started on
    committed: int  # steps committed in total
    last: dict[str, Any] | None  # the last committed steps row


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


# Settings added after runs were stored, with the value that does what those runs did: a stored
# config without the key resumes under that value as it is.
ADDED_SINCE = {"protocol.problem_source": "generated"}

# Settings that change how the trainer computes, not what: the same loss and gradients (to float
# rounding) and the same dropout distribution, in other threads, memory or kernels. A run resumes
# under new values as it is (a run stored before one existed too); each adapter's
# agora-adapter.json records the values its round used.
EXECUTION_ONLY = (
    "training.gradient_checkpointing",
    "training.loss_chunk_tokens",
    "training.lora_dropout_kernel",
    "training.max_threads",
    "training.memory_budget_gb",
)


def config_diff(old: dict, new: dict) -> list[tuple[str, str]]:
    """(key, 'stored -> given') for every setting that differs, `run_dir` and `logging.*` aside
    (where the step scalars are also written changes no result; a run stored before the
    `logging` section existed resumes as it is), `cluster` aside (where servers and trainers run
    changes no result: a run moves onto a Ray cluster, or back, and resumes), EXECUTION_ONLY
    settings aside, and keys of ADDED_SINCE a stored config lacks when the given value is the old
    behaviour."""
    a, b = _flatten(old), _flatten(new)
    for k, v in ADDED_SINCE.items():
        if k in b:
            a.setdefault(k, v)
    return [
        (k, f"run has {a.get(k)!r}, config gives {b.get(k)!r}")
        for k in sorted(set(a) | set(b))
        if k != "run_dir"
        and not k.startswith("logging.")
        and k.split(".")[0] != "cluster"
        and k not in EXECUTION_ONLY
        and a.get(k) != b.get(k)
    ]


def _yaml_value(v: Any) -> str:
    """One value as an override writes it (a bare scalar's YAML ends with a "..." marker)."""
    return yaml.safe_dump(v, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def matching_overrides(stored: dict, cfg: Config) -> str:
    """The `key=value` overrides that turn `cfg` back into the stored config (what a resume that
    forgot the original overrides needs), each quoted for a shell."""
    given = yaml.safe_load(dump_config(cfg))
    a = _flatten(stored)
    differ = [k for k, _ in config_diff(stored, given)]
    parts = [f"{k}={_yaml_value(a[k])}" for k in differ if k in a]
    text = " ".join(shlex.quote(p) for p in parts) or "(none)"
    extra = [k for k in differ if k not in a]
    return text + (f" (and remove {', '.join(extra)}: no override can)" if extra else "")


def prepare_run_dir(cfg: Config, run_dir: Path | str | None = None, force: bool = False) -> RunPaths:
    """Create (or check, when resuming) the run directory and store the resolved config in it.

    Raises ConfigError listing every changed setting when the directory holds a run made with a
    different config and `force` is off.
    """
    root = Path(run_dir) if run_dir else cfg.resolved_run_dir()
    cfg = cfg.model_copy(update={"run_dir": str(root)})
    paths = RunPaths(root).ensure()
    if paths.config.exists() and paths.store.exists() and not force:
        stored = yaml.safe_load(paths.config.read_text()) or {}
        problems = config_diff(stored, yaml.safe_load(dump_config(cfg)))
        if problems:
            problems.append(("to resume as stored", "add the overrides " + matching_overrides(stored, cfg)))
            problems.append(("--force", "pass --force to resume this run with the new config"))
            raise ConfigError(str(paths.config), problems)
    paths.config.write_text(dump_config(cfg))
    return paths


def _rounds(cfg: Config, store: Store, paths: RunPaths, srv: Any, bus: EventBus) -> Any:
    """The training-round manager when LoRA is on (None when `ablations.lora` is off)."""
    if not cfg.ablations.lora:
        return None
    rounds = RoundManager(store, cfg, paths, srv, bus)
    rounds.resume()
    return rounds


def check_training_packages(cfg: Config) -> None:
    """With LoRA on, the packages a training worker imports must be there: say what to install
    (before any server starts) instead of finding out at the first round."""
    if not cfg.ablations.lora:
        return
    missing = [m for m in TRAINING_PACKAGES if not _importable(m)]
    if missing:
        raise TrainingError(
            f"LoRA training needs {' and '.join(missing)}, which this Python cannot import; "
            f"install them (`./scripts/setup.sh`, or `pip install {' '.join(missing)}`) or run "
            "without training (ablations.lora=false)"
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked package
        return False


async def drive(
    cfg: Config,
    store: Store,
    pool: ClientPool,
    prompts: Prompts,
    bus: EventBus,
    *,
    steps: int | None,
    rounds: Any = None,
    poll_s: float = 1.0,
) -> None:
    """Run steps until `steps` are committed in total (forever when None).

    With LoRA on, training rounds are polled throughout (a finished adapter is hot-swapped even
    mid-step: requests in flight finish on the old model) and a round starts after any step that
    brings the unconsumed buffer to the threshold (protocol step 6).
    """
    versions = rounds.live_versions if rounds is not None else dict
    anchor = run_anchor
    # One grader for the run's consensus audit; its worker starts at the first probe graded.
    grader = Grader(1, cfg.evaluation.grade_timeout_s)

    async def poller() -> None:
        last = ""
        while True:
            try:
                rounds.poll()
            except Exception as e:  # noqa: BLE001 - training trouble must not stop the loop
                if str(e) != last:  # the round stays retriable; say so once, not every second
                    bus.emit("training_failed", error=f"{type(e).__name__}: {e}")
                last = str(e)
            await asyncio.sleep(poll_s)

    watcher = asyncio.create_task(poller()) if rounds is not None else None
    try:
        while steps is None or step_store.open_step_number(store) < steps:
            fx = await run_step(
                cfg, store, pool, prompts, bus, versions=versions, anchor=anchor, grade=grader.grade_many
            )
            if rounds is not None:
                rounds.poll()
                rounds.maybe_start(fx.step)
    finally:
        if watcher is not None:
            watcher.cancel()
        grader.close()
        await pool.aclose()


def run(
    cfg: Config,
    *,
    run_dir: Path | str | None = None,
    steps: int | None = None,
    force: bool = False,
    bus: EventBus | None = None,
) -> RunResult:
    """`agora run`: start or resume the run in `run_dir` and commit steps until `steps` total.

    Holds the run directory's lock throughout (RunLockedError, exit 2, when another agora
    process writes it). `bus` gets a JSONL sink on `events.jsonl` for the call only.
    """
    bus = bus or EventBus()
    with runlock.hold(Path(run_dir) if run_dir else cfg.resolved_run_dir()):
        paths = prepare_run_dir(cfg, run_dir, force)
        cfg = load_config(paths.config)
        check_training_packages(cfg)
        if cfg.logging.tensorboard:
            check_tensorboard(str(paths.config))
        prompts = Prompts(cfg.prompts_dir)
        prompts.validate()
        with _events_file(bus, paths), _tensorboard(bus, cfg, paths), Store(paths.store) as store:
            init_ratings(cfg, store)
            first = step_store.open_step_number(store)
            kind = "run_resumed" if first > 0 or step_store.has_steps(store) else "run_started"
            unfinished = cfg.ablations.lora and retriable_round(store) is not None
            if steps is not None and first >= steps and not unfinished:
                # Nothing to do (`--steps 0`, or a run that already has its steps and no training
                # round left unfinished): no server is started for it. A round a killed run left
                # unfinished is still retried here, like on any resume: its rows are reserved.
                bus.emit("run_finished", steps=first, nothing_to_do=True, steps_target=steps)
                return RunResult(paths.root, first, first, step_store.step_row(store, first - 1))
            # Said before the servers start (a minute or more): the views show the run's state
            # meanwhile, not an empty header.
            live = live_versions(store, [m.name for m in cfg.members]) if cfg.ablations.lora else {}
            bus.emit(
                kind,
                run_dir=str(paths.root),
                step=first,
                steps_target=steps,
                threshold=cfg.protocol.buffer_threshold,
                buffer=step_store.buffer_size(store),
                unconsumed=step_store.waiting_rows(store, cfg.protocol.mode == "isolated"),
                members=member_stats(store, cfg, live),
            )
            with serving_pool(cfg, paths, bus) as (srv, pool):
                rounds = _rounds(cfg, store, paths, srv, bus)
                try:
                    asyncio.run(drive(cfg, store, pool, prompts, bus, steps=steps, rounds=rounds))
                    if rounds is not None and rounds.in_flight() is not None:
                        # The last steps' samples are trained before a finished run exits;
                        # Ctrl-C skips this and the round is retried on resume.
                        bus.emit("training_wait", round=rounds.in_flight(), workers=rounds.workers())
                        rounds.wait()
                finally:
                    if rounds is not None:
                        rounds.shutdown()
            committed = step_store.open_step_number(store)
            last = step_store.step_row(store, committed - 1)
            bus.emit("run_finished", steps=committed)
            return RunResult(paths.root, first, committed, last)


@contextmanager
def _events_file(bus: EventBus, paths: RunPaths) -> Iterator[JsonlSink]:
    """`events.jsonl` on `bus` for the block; removed and closed after it, so a bus reused by
    the next run (`agora ablate`) never writes into a closed file."""
    sink = JsonlSink(paths.events)
    bus.add(sink)
    try:
        yield sink
    finally:
        bus.remove(sink)
        sink.close()


@contextmanager
def _tensorboard(bus: EventBus, cfg: Config, paths: RunPaths) -> Iterator[None]:
    """With `logging.tensorboard` on, step scalars go to RUN/tensorboard/ for the block."""
    if not cfg.logging.tensorboard:
        yield
        return
    sink = TensorBoardSink(paths.tensorboard)
    bus.add(sink)
    try:
        yield
    finally:
        bus.remove(sink)
        try:
            sink.close()
        except Exception as e:  # noqa: BLE001 - logging must never fail a finished run
            logging.getLogger("agora").warning("tensorboard log %s did not close cleanly (%s)", sink.name, e)


def resume_command(config: str, overrides: list[str], steps: int | None, run_dir: Path) -> str:
    """The exact `agora run` command that resumes a run: the same config, overrides and target,
    and its run directory spelled out (a default one included), quoted for a shell."""
    words = ["agora", "run", config, *overrides]
    if steps is not None:
        words += ["--steps", str(steps)]
    words += ["--run-dir", str(run_dir)]
    return " ".join(shlex.quote(w) for w in words)


def interrupt_summary(run_dir: Path) -> str:
    """What an interrupted run keeps and what a resume redoes, read from its store (read-only)."""
    paths = RunPaths(run_dir)
    if not paths.store.exists():
        return "nothing was stored yet; a resume starts the run from step 0"
    with Store(paths.store, readonly=True) as store:
        committed = step_store.open_step_number(store)
        work = step_store.work_counts(store, committed)
        unfinished = retriable_round(store)
    kept = (
        f"{committed} step(s) committed (steps 0-{committed - 1}) are kept"
        if committed
        else "no step was committed"
    )
    stored = ", ".join(f"{n} {table}" for table, n in work.items() if n)
    open_step = (
        f"step {committed}'s stored work ({stored}) is reused on resume and only its missing "
        "requests are asked again"
        if stored
        else f"step {committed} starts over (nothing of it was stored)"
    )
    training = (
        f"; training round {unfinished['id']} did not finish and is retried with the same rows"
        if unfinished is not None
        else ""
    )
    return f"{kept}; {open_step}{training}"


def load_run(run_dir: Path | str) -> tuple[Config, RunPaths]:
    """The config stored in an existing run directory."""
    paths = RunPaths(run_dir)
    if not paths.config.exists() or not paths.store.exists():
        raise NoRunError(f"{run_dir} holds no run; start one with `agora run CONFIG --run-dir {run_dir}`")
    return load_config(paths.config), paths


def run_stage(run_dir: Path | str, stage: str, bus: EventBus | None = None) -> tuple[int, dict]:
    """One phase of the open step (opening it if needed); returns (step, rows written per table).

    Only missing requests are issued, so running a stage twice writes nothing the second time.
    `agora run` later finishes and commits the step with this work.
    """
    if stage not in STAGES:
        raise ValueError(stage)
    cfg, paths = load_run(run_dir)
    bus = bus or EventBus()
    prompts = Prompts(cfg.prompts_dir)
    prompts.validate()
    with (
        runlock.hold(paths.root),
        _events_file(bus, paths),
        Store(paths.store) as store,
        serving_pool(cfg, paths, bus) as (srv, pool),
    ):
        init_ratings(cfg, store)

        async def go() -> tuple[int, dict[str, int]]:
            try:
                step_run = begin_step(cfg, store, pool, prompts, bus, lambda: live_versions(store))
                t = step_run.state.t
                before = step_store.work_counts(store, t)
                await step_run.stage(stage)
                after = step_store.work_counts(store, t)
                return t, {table: after[table] - before[table] for table in step_store.WORK_TABLES}
            finally:
                await pool.aclose()

        return asyncio.run(go())
