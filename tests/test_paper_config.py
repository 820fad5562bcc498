"""configs/paper-mixed.yaml marks every value that is agora's choice, not the paper's, and the
docs do not credit the paper with a serving engine it never names."""

from __future__ import annotations

import re

import pytest

from agora_cli.paths import CONFIGS_DIR

pytestmark = pytest.mark.unit
REPO = CONFIGS_DIR.parent

# What the paper gives (arXiv 2507.21166): everything else is agora's choice.
PAPER = {
    "protocol.elite_k",
    "protocol.buffer_threshold",
    "protocol.anchor_every",
    "protocol.self_consistency_samples",
    "protocol.difficulty.d0",
    "protocol.difficulty.alpha",
    "training.r",
    "training.alpha",
    "training.dropout",
    "evaluation.benchmarks",
}
# Keys that name things rather than choose values.
NAMES = {"name", "extends", "kind", "protocol.mode"}
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_./-]+):(?P<value>[^#]*)(?P<comment>#.*)?$")


def unmarked(text: str) -> list[str]:
    """Dotted paths of the values in `text` that are neither the paper's nor marked "agora's
    choice" (on the line, on the comment line just above, or on a parent key). Members are
    checked by the comment over the list."""
    out: list[str] = []
    stack: list[tuple[str, bool]] = []  # (key, marked) from the top level down
    above = ""
    for line in text.splitlines():
        m = KEY.match(line)
        if not m or line.lstrip().startswith(("#", "-")):
            above = line if line.lstrip().startswith("#") else ""
            continue
        depth = len(m["indent"]) // 2
        marked = "agora's choice" in (m["comment"] or "") or "agora's choice" in above
        stack = [*stack[:depth], (m["key"], marked or any(k for _, k in stack[:depth]))]
        path = ".".join(k for k, _ in stack)
        named = m["key"] in NAMES or path in NAMES
        if m["value"].strip() and not (path in PAPER or named or path.startswith("members") or stack[-1][1]):
            out.append(path)
        above = ""
    return out


@pytest.mark.parametrize("name", ["paper-mixed.yaml", "homogeneous-1b.yaml", "homogeneous-4b.yaml"])
def test_every_value_not_in_the_paper_is_marked(name: str) -> None:
    text = (CONFIGS_DIR / name).read_text()
    assert unmarked(text) == []
    # The members list carries the note that its fields (but the models) are agora's choice.
    assert "agora's choice" in text.split("\nmembers:")[0].splitlines()[-1]


def test_the_checker_catches_an_unmarked_value() -> None:
    text = (CONFIGS_DIR / "paper-mixed.yaml").read_text()
    broken = text.replace("  seed_pool: gsm8k_train       # agora's choice", "  seed_pool: gsm8k_train")
    assert broken != text and unmarked(broken) == ["protocol.seed_pool"]
    broken = text.replace(
        "    generate: {temperature: 0.8, top_p: 0.95, max_tokens: 256}  # agora's choice",
        "    generate: {temperature: 0.8, top_p: 0.95, max_tokens: 256}",
    )
    assert broken != text and unmarked(broken) == ["protocol.sampling.generate"]


def test_docs_do_not_say_the_paper_used_sglang() -> None:
    for doc in ("docs/protocol.md", "docs/engines.md", "README.md"):
        text = " ".join((REPO / doc).read_text().split())
        assert not re.search(
            r"paper (used|uses|ran|runs|served)[^.|]{0,40}SGLang|SGLang is what the paper", text
        ), doc
