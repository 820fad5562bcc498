"""`python tests/fakes/stub_agora.py ARGS...`: the real `agora` command line, except that a
training round's worker is tests/fakes/stub_worker.py (mode `ok`: one progress line, an adapter
directory, a result) instead of a LoRA trainer, so a real `agora run` process trains, swaps and
waits for rounds in seconds. Used by the integration tests of what a run shows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agora_cli.training import rounds  # noqa: E402

STUB = Path(__file__).with_name("stub_worker.py")


def stub_command(spec_path: Path, training: object, python: str = sys.executable) -> list[str]:
    return [python, str(STUB), str(spec_path), "ok"]


rounds.worker_command = stub_command  # type: ignore[assignment]

if __name__ == "__main__":
    from agora_cli.cli import main

    sys.argv[0] = "agora"
    main()
