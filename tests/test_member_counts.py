"""Per-member numbers have one reader (`steps.member_counts`): the commit's events and
`agora status` show the same values, and probes and open steps never count."""

from __future__ import annotations

from pathlib import Path

import pytest

from agora_cli import steps
from agora_cli.commit import member_stats
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from agora_cli.ui.status import collect
from tests.fakes.ensemble import make_config, write_config

pytestmark = pytest.mark.unit


def solution(store: Store, step: int, pid: int, member: str, answer: str | None = "4") -> int:
    return steps.upsert_solution(store, step, pid, member, 0, "work", answer, 0, [], 1, 5, 0.1, None)


def commit(store: Store, step: int, correct: dict[int, bool], buffer: list[tuple[int, int, str]]) -> None:
    fx = steps.Effects(step, [], correct, buffer, [], 1.0, None, 0.5, None, "balanced", {}, 0.0, 0.0)
    steps.commit_effects(store, fx)


def write_run(run_dir: Path) -> None:
    """Step 0 committed: alpha wrote a kept and a dropped problem; alpha's solution validated and
    buffered, beta's not; a probe solved by both (never counted). Step 1 open: more solutions."""
    with Store(RunPaths(run_dir).store) as store:
        steps.open_step(store, 0, 1.0, "balanced", 0.5, {})
        pid = steps.insert_problem(store, 0, "alpha", "2+2?", 1.0, [], "raw", None, slot=0)
        steps.insert_problem(store, 0, "alpha", "", 1.0, [], "raw", "empty", slot=1)
        a, b = solution(store, 0, pid, "alpha"), solution(store, 0, pid, "beta", answer=None)
        probe = steps.insert_probe(store, 0, "3+3?", 1.0, "gsm8k-1", "6")
        pa, pb = solution(store, 0, probe, "alpha"), solution(store, 0, probe, "beta")
        commit(store, 0, {a: True, b: False, pa: True, pb: True}, [(a, pid, "alpha")])
        steps.open_step(store, 1, 1.0, "balanced", 0.5, {})
        later = steps.insert_problem(store, 1, "seed", "5+5?", 1.0, ["gsm8k-2"], None, None, slot=0)
        solution(store, 1, later, "alpha")


def test_member_counts_leave_out_probes_and_open_steps(run_dir):
    write_run(run_dir)
    with Store(RunPaths(run_dir).store) as store:
        counts = steps.member_counts(store)
    assert counts["alpha"] == steps.MemberCounts(solutions=1, validated=1, buffered=1, generated=2, dropped=1)
    assert counts["beta"] == steps.MemberCounts(solutions=1, validated=0, buffered=0)


def test_status_and_commit_events_show_the_same_member_numbers(run_dir):
    write_run(run_dir)
    cfg = make_config("http://127.0.0.1:1/v1", run_dir)
    write_config(RunPaths(run_dir).config, "http://127.0.0.1:1/v1", run_dir)
    with Store(RunPaths(run_dir).store) as store:
        events = member_stats(store, cfg, {})
    shown = collect(run_dir).members
    for name in ("alpha", "beta"):
        e, s = events[name], shown[name]
        assert (e["solutions"], e["validated"], e["buffered"]) == (s.solutions, s.validated, s.buffered)
        assert (e.get("generated", 0), e.get("dropped", 0)) == (s.generated, s.dropped)
    assert (shown["alpha"].solutions, shown["alpha"].validated, shown["alpha"].generated) == (1, 1, 2)
