"""Worker process: `python -m agora_cli.training.worker SPEC.json` trains one member for one round.

Also how a parent launches (`worker_command`) and stops (`terminate`) one.

Training runs in its own process so the loop keeps serving on the old adapters, a crash cannot
take the orchestrator down, and a killed run leaves nothing half-done (the round is retried).
Progress goes out as JSON lines, one per optimizer step, on stdout and to `progress_path`; the
outcome is `result_path` (written atomically): the TrainResult on success, `{"error": ...}` on
failure (exit code 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agora_cli.config import Training
from agora_cli.training.trainer import TrainSpec, train


def worker_command(spec_path: Path, training: Training, python: str = sys.executable) -> list[str]:
    """The command that trains one member: a plain subprocess, or `accelerate launch` on >1 GPU."""
    module = ["-m", "agora_cli.training.worker", str(spec_path)]
    if training.num_gpus <= 1:
        return [python, *module]
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(training.num_gpus),
        "--module",
        "agora_cli.training.worker",
        str(spec_path),
    ]


def terminate(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s` (a worker holds no state worth a long wait)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Exit when the process that launched us dies (e.g. a SIGKILLed `agora run`).

    An orphaned worker would keep a core busy and could still be saving into the same adapter
    directory while the resumed run retrains the round.
    """
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run(spec_path: str) -> int:
    """Train per SPEC.json; return the process exit code."""
    exit_with_parent()
    spec = TrainSpec.from_file(spec_path)
    threads = spec.training.get("max_threads")
    if threads:  # before torch spins up its pools
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    progress = open(spec.progress_path, "a", buffering=1) if spec.progress_path else None  # noqa: SIM115

    def on_progress(event: dict[str, Any]) -> None:
        line = json.dumps(event)
        print(line, flush=True)
        if progress is not None:
            progress.write(line + "\n")

    try:
        result = train(spec, on_progress)
    except Exception as exc:  # noqa: BLE001 - reported to the parent through the result file
        traceback.print_exc()
        if spec.result_path:
            write_json_atomic(spec.result_path, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    finally:
        if progress is not None:
            progress.close()
    if spec.result_path and int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(spec.result_path, asdict(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agora_cli.training.worker SPEC.json", file=sys.stderr)
        return 2
    return run(args[0])


if __name__ == "__main__":
    sys.exit(main())
