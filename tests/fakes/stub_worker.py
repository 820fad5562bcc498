"""A stand-in training worker for the fast tests of training rounds: no model, no torch.

    python tests/fakes/stub_worker.py SPEC.json MODE

reads the spec `RoundManager` wrote (the real worker's input) and, by MODE:

- `ok`: writes one progress line, an adapter directory (`adapter_config.json` and `stub.json`
  with the buffer ids it was given and the previous adapter's path and files) and the result
  file, exits 0;
- `exit:N`: exits with code N without writing anything (a crash);
- `error`: writes `{"error": ...}` to the result file and exits 1 (a failure the worker caught);
- `hang`: writes one progress line, then waits until it is terminated (a round in flight);
- `wait:PATH`: writes one progress line, waits until PATH exists (a round in flight for as long as
  the test wants), then as `ok`;
- `hold:DIR`: as `wait:DIR/release`, after writing `DIR/<member>.<pid>.json` with its pid, its
  parent's, its spec's path and the buffer ids it was given (for a test that must see or kill a
  worker that runs on another Ray node, in a temp dir of its own).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main(spec_path: str, mode: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    ids = [s["buffer_id"] for s in spec["samples"]]
    if mode.startswith("exit:"):
        return int(mode.split(":", 1)[1])
    if mode == "error":
        Path(spec["result_path"]).write_text(json.dumps({"error": "OSError: stub disk is full"}))
        return 1
    with open(spec["progress_path"], "a") as f:
        f.write(json.dumps({"step": 1, "total_steps": 2, "loss": 1.5, "tokens_per_s": 99.0}) + "\n")
    if mode == "hang":
        signal.pause()
        return 1
    if mode.startswith("hold:"):
        held = Path(mode.split(":", 1)[1])
        seen = {"pid": os.getpid(), "ppid": os.getppid(), "buffer_ids": ids, "spec": spec_path}
        tmp = held / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(seen))
        os.replace(tmp, held / f"{spec['member']}.{os.getpid()}.json")  # whole when the test sees it
        mode = f"wait:{held / 'release'}"
    if mode.startswith("wait:"):
        while not Path(mode.split(":", 1)[1]).exists():
            time.sleep(0.05)
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text("{}")
    prev = spec.get("previous_adapter_dir")
    previous = {"path": prev, "files": sorted(os.listdir(prev))} if prev else None
    (out / "stub.json").write_text(json.dumps({"buffer_ids": ids, "pid": os.getpid(), "previous": previous}))
    result = {"losses": [1.5, 1.0], "steps": 2, "tokens_per_s": 99.0, "buffer_ids": ids}
    Path(spec["result_path"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
