"""Shared test setup: caches and run directories point below the test session, never at ~/.cache.

De-quantised models are expensive to build (Gemma-3's GGUF takes about a minute), so the model
cache is shared by the whole session: `AGORA_HOME` from the environment when set (CI points it at
the clone), otherwise `<repo>/.agora-home`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `tests.fakes` importable from every test module

os.environ.setdefault("AGORA_HOME", str(REPO / ".agora-home"))
# Transformers and the hub must never reach the network from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell starts background jobs (`cmd &`, nohup) with SIGINT ignored, and an ignored signal stays
# ignored through exec: the agora processes the tests interrupt would never see their Ctrl-C.
# A handled signal is reset to the default in children, so the suite restores Python's own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run directory for one test."""
    d = tmp_path / "run"
    d.mkdir()
    return d
