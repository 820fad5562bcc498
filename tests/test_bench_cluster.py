"""The cluster benchmark (`python -m bench cluster`) in its tiny mode: every part runs against real
fake-server processes and a simulated two-node Ray cluster, and what it reports is what happened
(no timing is checked: the figures are the benchmark's, not a test's)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.bench_cluster import TINY, measure, rows


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_tiny_run_measures_every_part_and_loses_no_request() -> None:
    m = measure(TINY)
    assert m["ray_nodes"] == 2  # SPREAD put one replica on each simulated node
    assert len(m["ray_place_s"]) == TINY.placements
    for key, replicas in (("burst_1", 1), ("burst_2", 2), ("burst_ray", 2)):
        answered = m[key]["per_replica"]
        assert m[key]["failed"] == []
        # every request answered once, and (least in flight) each replica took some of them
        assert sum(answered.values()) == TINY.requests and len(answered) == replicas, (key, answered)
        assert min(answered.values()) > 0
    for key in ("swap_1", "swap_2", "swap_ray"):
        swap = m[key]
        assert swap["failed"] == [] and len(swap["seconds"]) == TINY.swaps
        # requests were sent between switches, and each was answered by the adapter then live
        assert swap["after"] >= TINY.concurrency and swap["after_new"] == swap["after"], (key, swap)
    table = {r.metric: r for r in rows(m, TINY)}
    assert table["failed requests (all loads and swaps)"].measured == "0"
    assert table["requests sent after a switch answered by the new adapter"].met is True


def measured(**change: Any) -> dict[str, Any]:
    """A measurement as `measure` returns it, with `change` applied."""
    burst = {"rps": 100.0, "cpu_ms": 1.5, "per_replica": {"u1": 6, "u2": 6}, "failed": []}
    swap = {"seconds": [0.01, 0.02], "failed": [], "answered": 40, "after": 8, "after_new": 8}
    m: dict[str, Any] = {
        "plain_start_s": 2.0,
        "ray_up_s": 5.0,
        "ray_place_s": [4.0],
        "ray_nodes": 2,
        "transport": "adapter dir read by path on each replica's node",
        "lease_1": {"lease": 5.0, "fixed": 0.3},
        "lease_2": {"lease": 6.0, "fixed": 0.3},
        "burst_1": burst | {"per_replica": {"u1": 12}},
        "burst_2": burst,
        "burst_ray": burst | {"per_replica": {"u1": 9, "u2": 3}},
        "swap_1": swap,
        "swap_2": swap,
        "swap_ray": swap,
    }
    return m | change


@pytest.mark.unit
def test_the_table_says_what_was_measured() -> None:
    table = {r.metric: r for r in rows(measured(), TINY)}
    assert table["Ray start + placement / start without Ray"].measured == "4.5x"  # (5 + 4) / 2
    assert table["balance: max/min answers per replica (Ray pair)"].measured == "3.00x"
    assert table["failed requests (all loads and swaps)"].met is True
    assert table["adapter saved -> live on all replicas, 2 replicas"].measured == "15 ms"


@pytest.mark.unit
def test_a_failed_request_or_an_old_adapter_after_a_switch_is_not_met() -> None:
    swap = {"seconds": [0.01], "failed": ["APIStatusError: 400"], "answered": 4, "after": 8, "after_new": 7}
    table = {r.metric: r for r in rows(measured(swap_ray=swap), TINY)}
    assert table["failed requests (all loads and swaps)"].met is False
    assert table["failed requests (all loads and swaps)"].note == "APIStatusError: 400"
    assert table["requests sent after a switch answered by the new adapter"].measured == "23/24"  # 8 + 8 + 7
    assert table["requests sent after a switch answered by the new adapter"].met is False
    one_sided = {"rps": 100.0, "cpu_ms": 1.5, "per_replica": {"u1": 12}, "failed": []}
    table = {r.metric: r for r in rows(measured(burst_ray=one_sided), TINY)}
    assert table["balance: max/min answers per replica (Ray pair)"].measured == "inf"  # one took none
