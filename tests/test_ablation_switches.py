"""Each ablation switch turns off one mechanism, and only its own stored quantities change.

Compared here: the switches whose mechanisms are separable on this scripted ensemble. valid_vote
and random_qgen change which solutions count or which problems exist, which every later quantity
reads; lora needs a trainer (its effect on the anchor is covered: every run here has it off).

In-process runs against the scripted fake server (tests/fakes/ensemble.py), anchored at every
step on 12 calibration items per member (36 pooled, above FEM's `min_n`): every member answers
all of them at the first anchor and none after, a clear drop, so FEM acts from step 1 and the
plateau rule turns the strategy 'elite' at step 3. LoRA is off in every run here, so these runs
also show that FEM and the strategy act without any adapter change (every member is re-scored at
every anchor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agora_cli import runner
from agora_cli.config import config_from_dict
from agora_cli.datasets import load_dev_split
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.protocol.surprise import NO_ANCHOR_NOTE
from agora_cli.store import Store
from tests.fakes.ensemble import config_dict, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS, ITEMS = 4, 12
SWITCHES = [
    "difficulty_control",
    "fem",
    "dynamic_strategy",
    "external_anchor",
    "quality_vote",
    "elite_icl",
    "explanation",
]


def _reply():  # noqa: ANN202
    """The ensemble script, with calibration answers right at each member's first anchor only."""
    gold = {it.problem: it.answer for it in load_dev_split("gsm8k")}
    base, asked = responder(), {}

    def reply(req):  # noqa: ANN001, ANN202
        if req.role != "evaluate":
            return base(req)
        asked[req.model] = asked.get(req.model, 0) + 1
        answer = next(a for q, a in gold.items() if q in req.user)
        return f"The answer is \\boxed{{{answer if asked[req.model] <= ITEMS else answer + '1'}}}"

    return reply


def _stored(run_dir: Path, events: list[dict]) -> dict[str, Any]:
    """The quantities each mechanism writes, per committed step."""
    with Store(RunPaths(run_dir).store, readonly=True) as store:
        rows = [dict(r) for r in store.query("SELECT * FROM steps ORDER BY step")]
        anchors = [
            (r["step"], r["member"], r["score"], r["n"])
            for r in store.query("SELECT * FROM anchors ORDER BY step, member")
        ]
        elite = sorted(
            (r["member"], round(r["score"], 6))
            for r in store.query("SELECT member, score FROM elite WHERE active = 1")
        )
        buffered = store.scalar("SELECT COUNT(*) FROM buffer")
        # elite examples in each step's solve prompts, and self-explanations written
        shown = [
            store.scalar(
                "SELECT COALESCE(SUM(json_array_length(elite_ids)), 0) FROM solutions WHERE step = ?", (t,)
            )
            for t in range(len(rows))
        ]
        explained = store.scalar("SELECT COUNT(*) FROM explanations")
        ratings = store.query(
            "SELECT member, mu FROM ratings WHERE id IN (SELECT MAX(id) FROM ratings GROUP BY member)"
        )
    return {
        "d": [(round(r["difficulty"], 9), round(r["next_difficulty"], 9)) for r in rows],
        "v": [(r["v_t"], r["v_target"]) for r in rows],
        "f_t": [r["f_t"] for r in rows],
        "strategy": [r["strategy"] for r in rows],
        "anchors": anchors,
        "elite": elite,
        "buffer": buffered,
        "shown": shown,
        "explained": explained,
        "ratings": sorted((r["member"], round(r["mu"], 6)) for r in ratings),
        "fem_events": [{k: v for k, v in e.items() if k != "t"} for e in events if e["kind"] == "fem"],
        "info": [r["info"] for r in rows],
    }


RUNS: dict[str, dict[str, Any]] = {}


def _run(tmp_path_factory: pytest.TempPathFactory, off: str | None) -> dict[str, Any]:
    """Run STEPS steps with switch `off` turned off (None: all on), once per test session."""
    key = off or "full"
    if key not in RUNS:
        run_dir = tmp_path_factory.mktemp(key) / "run"
        events: list[dict] = []
        with FakeOpenAI(_reply(), latency_s=0.0) as fake:
            data = config_dict(fake.url, run_dir, anchor_every=1)
            data["ablations"]["external_anchor"] = True
            if off:
                data["ablations"][off] = False
            data["evaluation"] = {"calibration_size": ITEMS, "benchmarks": ["gsm8k"]}
            runner.run(config_from_dict(data), run_dir=run_dir, steps=STEPS, bus=EventBus([events.append]))
        RUNS[key] = _stored(run_dir, events)
    return RUNS[key]


# What turning each switch off may change; everything else must be stored identically.
OWN = {
    "difficulty_control": {"d", "fem_events"},  # d stays d0: neither Eq. 1 nor FEM moves it
    "fem": {"d", "fem_events"},  # F_t is still computed and stored; d is Eq. 1's alone
    "dynamic_strategy": {"strategy", "elite"},  # 'elite' keeps plateau_elite_k entries in H_t
    # no anchors: F_t undefined, so FEM and the strategy have no signal (and the note says so)
    "external_anchor": {"anchors", "f_t", "d", "strategy", "elite", "fem_events", "info"},
    # no votes: no ratings, every correct solution buffered, H_t scored on verdicts
    "quality_vote": {"ratings", "buffer", "elite"},
    # solve prompts carry no examples, so no self-explanation is written for them either
    "elite_icl": {"shown", "explained"},
    "explanation": {"explained"},  # H_t entries write no self-explanation
}
QUANTITIES = {
    "d",
    "v",
    "f_t",
    "strategy",
    "anchors",
    "elite",
    "buffer",
    "ratings",
    "fem_events",
    "shown",
    "explained",
}


def test_the_full_run_has_fem_and_the_strategy_acting_without_lora(tmp_path_factory):
    full = _run(tmp_path_factory, None)
    assert full["f_t"][0] is None and full["f_t"][1] == pytest.approx(1.0, abs=1e-4)
    assert full["strategy"] == ["balanced", "balanced", "balanced", "elite"]
    # FEM lowered d at step 1, and said so: the event names the anchor means and n.
    (first, *_) = full["fem_events"]
    assert first["step"] == 1 and first["member"] is None and first["n"] == 3 * ITEMS
    assert (
        first["text"].startswith("FEM: d lowered by ") and "anchor mean 1.00 -> 0.00, n = 36" in first["text"]
    )
    d, d_next = full["d"][1]
    assert d_next == pytest.approx(first["d_to"]) and d_next < first["d_from"]


@pytest.mark.parametrize("switch", SWITCHES)
def test_turning_a_switch_off_changes_only_its_mechanism(tmp_path_factory, switch):
    full, off = _run(tmp_path_factory, None), _run(tmp_path_factory, switch)
    differ = {q for q in QUANTITIES if full[q] != off[q]}
    assert differ == OWN[switch] - {"info"}, {q: (full[q], off[q]) for q in differ}


def test_without_difficulty_control_d_stays_d0(tmp_path_factory):
    off = _run(tmp_path_factory, "difficulty_control")
    assert all(d == (1.0, 1.0) for d in off["d"])  # FEM does not move it either
    assert off["fem_events"] == []


def test_without_external_anchor_f_t_is_null_and_the_run_says_why(tmp_path_factory):
    off, no_fem = _run(tmp_path_factory, "external_anchor"), _run(tmp_path_factory, "fem")
    assert off["anchors"] == [] and off["f_t"] == [None] * STEPS
    assert off["strategy"] == ["balanced"] * STEPS
    assert off["d"] == no_fem["d"]  # Eq. 1 alone: no substitute F_t moved d
    assert all(NO_ANCHOR_NOTE in info for info in off["info"])
