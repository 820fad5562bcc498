"""A failed anchor is missing, never 0.0: a score over no items (n = 0, as stores written before
failed anchors were left unstored hold) is skipped by every reader of anchor history, so Eq. 2's
ensemble mean is over the members that were really scored."""

from __future__ import annotations

import pytest

from agora_cli import anchor_store, steps
from agora_cli.paths import RunPaths
from agora_cli.store import Store

pytestmark = pytest.mark.unit


def commit(store: Store, step: int) -> None:
    fx = steps.Effects(step, [], {}, [], [], 1.0, None, 0.5, None, "balanced", {}, 0.0, 0.0)
    steps.commit_effects(store, fx)


def test_an_anchor_over_no_items_is_not_a_score(run_dir):
    with Store(RunPaths(run_dir).store) as store:
        steps.open_step(store, 0, 1.0, "balanced", 0.5, {})
        anchor_store.insert_anchor(store, 0, "alpha", "gsm8k_dev", 0.5, 8, 0)
        anchor_store.insert_anchor(store, 0, "beta", "gsm8k_dev", 0.0, 0, 0)  # every request failed
        commit(store, 0)
        steps.open_step(store, 1, 1.0, "balanced", 0.5, {})
        anchor_store.insert_anchor(store, 1, "beta", "gsm8k_dev", 0.25, 8, 0)
        commit(store, 1)
        assert anchor_store.anchor_history(store) == [0.5, 0.25]
        assert anchor_store.member_anchor_history(store, "beta") == [0.25]
        assert anchor_store.anchor_counts(store) == [(4.0, 8), (2.0, 8)]
        assert anchor_store.member_anchor_counts(store, "beta") == [(2.0, 8)]
        assert anchor_store.fresh_anchor_scores(store, 0) == {"alpha": (0.5, 8)}
