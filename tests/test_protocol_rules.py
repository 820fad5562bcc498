"""Protocol rules in isolation: the elite score does not favour problems many members solved,
Eq. 1 under both V_target rules (the literal moving average drifts d down; a fixed target does
not), and FEM acts only on an anchor drop beyond noise, saying why."""

from __future__ import annotations

import io

import pytest

from agora_cli.config import config_from_dict
from agora_cli.config.schema import Difficulty
from agora_cli.errors import ConfigError
from agora_cli.protocol.difficulty import next_difficulty, next_target
from agora_cli.protocol.select import elite_score
from agora_cli.protocol.surprise import clear_drop, fem_move, fem_text
from agora_cli.ui.live import LiveState
from agora_cli.ui.plain import PlainPrinter
from tests.fakes.ensemble import config_dict

pytestmark = pytest.mark.unit


def test_equal_share_of_votes_scores_equal_whatever_the_number_of_solvers():
    # Four voters. Two members solved problem P: one comparison, 4 votes. Four solved Q: each
    # solution sits in 3 comparisons, 12 votes.
    two_solvers = elite_score(3, 4, comparisons=1)
    four_solvers = elite_score(9, 12, comparisons=3)
    assert two_solvers == pytest.approx(four_solvers)
    # Winning every vote on P beats winning 3/4 of them on Q (the audit's example).
    assert elite_score(4, 4, comparisons=1) > elite_score(9, 12, comparisons=3)
    # A larger share still scores higher, and no score reaches 1.
    assert elite_score(2, 4, 1) < elite_score(3, 4, 1) < elite_score(4, 4, 1) < 1.0
    assert elite_score(0, 0, 0) == 0.0


def _run(v_series: list[float], cfg: Difficulty, fixed: float | None) -> float:
    d, history = cfg.d0, []
    for v in v_series:
        d = next_difficulty(d, v, next_target(history, cfg, fixed), cfg, True)
        history.append(v)
    return d


def test_literal_moving_average_target_drifts_d_down_while_the_ensemble_improves():
    cfg = Difficulty()
    improving = [0.5 + 0.4 * i / 99 for i in range(100)]  # V from 0.5 to 0.9 over 100 steps
    assert _run(improving, cfg, None) == pytest.approx(0.81, abs=0.01)  # below d0 = 1.0


def test_fixed_target_raises_d_while_v_stays_above_it():
    cfg = Difficulty()
    improving = [0.5 + 0.4 * i / 99 for i in range(100)]
    d = _run(improving, cfg, 0.5)
    # sum of alpha * (V_t - 0.5) = 0.05 * 0.2 * 100 = 1.0 above d0
    assert d == pytest.approx(2.0, abs=0.01)
    assert next_target([0.9, 0.9], cfg, 0.5) == 0.5 and next_target([], cfg, 0.3) == 0.3


def test_v_target_is_validated_by_the_config_schema():
    def cfg(**protocol: object):  # noqa: ANN202
        return config_from_dict(config_dict("http://127.0.0.1:1/v1", "runs/x", **protocol))

    assert cfg().protocol.v_target is None
    assert cfg(v_target=0.5).protocol.v_target == 0.5
    for bad in (1.5, 0.0, "half"):
        with pytest.raises(ConfigError, match="v_target"):
            cfg(v_target=bad)


def _cfg(**surprise: object):  # noqa: ANN202
    data = config_dict("http://127.0.0.1:1/v1", "runs/x")
    data["protocol"]["surprise"] = surprise
    return config_from_dict(data)


def test_fem_ignores_a_drop_of_one_calibration_item_near_zero():
    # The tiny run: one member went from 1/8 to 0/8 items, the ensemble from 1/24 to 0/24.
    # Eq. 2 reads that as the largest possible surprise; FEM must not act on it.
    history = [(1.0, 24), (0.0, 24)]
    for cfg in (_cfg(), _cfg(min_n=1)):  # below min_n, and within the 95% intervals either way
        d, f_t, move = fem_move(cfg, history, 1.014)
        assert f_t == pytest.approx(1.0, abs=1e-4)
        assert d == 1.014 and move is None
    assert clear_drop([(1.0, 8), (0.0, 8)], _cfg(min_n=1).protocol.surprise) is None  # one member


def test_fem_acts_on_a_clear_drop_and_says_why():
    cfg = _cfg()
    d, f_t, move = fem_move(cfg, [(30.0, 60), (33.0, 60), (6.0, 60)], 2.0)  # 0.55 -> 0.10, n = 60
    assert f_t == pytest.approx(((0.55 - 0.10) / 0.55) ** 2, rel=1e-4)
    assert d == pytest.approx(2.0 - f_t) and move is not None
    assert move["peak"] == pytest.approx(0.55) and move["current"] == pytest.approx(0.1) and move["n"] == 60
    text = fem_text(move)
    assert text == f"FEM: d lowered by {f_t:.3g}: anchor mean 0.55 -> 0.10, n = 60"
    out = io.StringIO()
    PlainPrinter(out)({"kind": "fem", "step": 7, "text": text})
    assert out.getvalue() == f"step 7 | {text}\n"
    live = LiveState()
    live.apply({"kind": "fem", "step": 7, "text": text})
    assert list(live.recent) == [text]  # the live view's event log


def test_fem_does_not_move_d_when_difficulty_control_or_fem_is_off():
    history = [(30.0, 60), (6.0, 60)]
    for off in ("fem", "difficulty_control"):
        data = config_dict("http://127.0.0.1:1/v1", "runs/x")
        data["ablations"][off] = False
        d, f_t, move = fem_move(config_from_dict(data), history, 2.0)
        assert d == 2.0 and move is None and f_t is not None  # F_t is still computed and stored
