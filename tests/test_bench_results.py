"""bench/RESULTS.md is the only home of agora's dated measurements: a `python -m bench` run adds its
table as a new dated section and keeps every earlier section, by hand or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import RESULTS_HEADER, save
from bench.common import Row

pytestmark = pytest.mark.unit

EARLIER = (
    "# Benchmark results\n\nold header text\n\n"
    "## `python -m bench`, 2026-11-22 03:29 UTC\n\n| old | table |\n\n"
    "## Trainer (by hand, 2026-12-01 00:47 UTC)\n\nmeasured 1.42x\n"
)


def test_a_bench_run_adds_its_section_above_the_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(EARLIER)
    save([Row("engine", "tokens/s", "96.8")], "python -m bench engine", 12.0, path)
    text = path.read_text()
    assert text.startswith(RESULTS_HEADER)
    assert "old header text" not in text
    new = text.index("## `python -m bench engine`, ")
    old = text.index("## `python -m bench`, 2026-11-22 03:29 UTC")
    by_hand = text.index("## Trainer (by hand, 2026-12-01 00:47 UTC)\n\nmeasured 1.42x\n")
    assert new < old < by_hand
    assert "| engine | tokens/s | 96.8 |" in text[new:old]
    assert text.count("## ") == 3


def test_a_first_run_writes_the_header_and_its_section(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    save([Row("engine", "tokens/s", "96.8")], "python -m bench", 1.0, path)
    text = path.read_text()
    assert text.startswith(RESULTS_HEADER + "\n## `python -m bench`, ")
    assert text.count("## ") == 1
