"""Each ablation switches one thing. With `external_anchor` off, F_t comes from
the ratings on the anchor schedule, so FEM still acts (see protocol/surprise.py)."""

from __future__ import annotations

import pytest

from agora_cli import runner
from agora_cli.config import config_from_dict
from agora_cli.paths import RunPaths
from agora_cli.protocol.surprise import rating_surprise
from agora_cli.steps import latest_ratings
from agora_cli.store import Store
from tests.fakes.ensemble import config_dict, responder
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.timeout(120)


@pytest.mark.unit
def test_rating_surprise_values():
    assert rating_surprise([25.0, 25.0, 25.0], 1e-6) == pytest.approx(0.0)
    assert rating_surprise([30.0, 25.0, 20.0], 1e-6) == pytest.approx((5 / 30) ** 2)
    assert rating_surprise([], 1e-6) is None


@pytest.mark.integration
def test_without_external_anchor_f_t_comes_from_the_ratings_and_fem_acts(run_dir):
    with FakeOpenAI(responder()) as fake:
        data = config_dict(fake.url, run_dir, anchor_every=2)  # external_anchor is off
        cfg = config_from_dict(data)
        runner.run(cfg, run_dir=run_dir, steps=1)
        with Store(RunPaths(run_dir).store, readonly=True) as store:
            first = dict(store.one("SELECT * FROM steps WHERE step = 0"))
        runner.run(cfg, run_dir=run_dir, steps=2)
        evaluated = len(fake.requests_for("evaluate"))
    assert evaluated == 0  # no ground truth was asked
    assert first["f_t"] is None  # step 0 is not on the anchor schedule (every 2nd step)
    with Store(RunPaths(run_dir).store, readonly=True) as store:
        assert store.scalar("SELECT COUNT(*) FROM anchors") == 0
        row = dict(store.one("SELECT * FROM steps WHERE step = 1"))
        mus = [mu for mu, _ in latest_ratings(store).values()]
    # alpha won every vote: its mu pulls away from the mean, F_t > threshold (0.01).
    f_t = rating_surprise(mus, cfg.protocol.surprise.eps)
    assert row["f_t"] == pytest.approx(f_t) and f_t > cfg.protocol.surprise.threshold
    eq1 = row["difficulty"] + cfg.protocol.difficulty.alpha * (row["v_t"] - row["v_target"])
    assert row["next_difficulty"] == pytest.approx(eq1 - f_t)  # FEM lowered Eq. 1's choice
