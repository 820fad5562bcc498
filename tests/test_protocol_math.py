"""The protocol's arithmetic: Eq. 1 and the outer loop, Eq. 2/FEM/strategy, TrueSkill, Eq. 4,
and the elite history. Expected values are computed by hand in each test."""

from __future__ import annotations

import pytest

from agora_cli.config import Difficulty, Protocol, Surprise
from agora_cli.protocol.difficulty import next_difficulty, next_target
from agora_cli.protocol.select import indicator, update_elite
from agora_cli.protocol.surprise import apply_fem, elite_shots, strategy, surprise
from agora_cli.protocol.types import EliteExample
from agora_cli.protocol.vote import apply_vote, make_env, new_rating

pytestmark = pytest.mark.unit

D = Difficulty()  # d0=1.0, alpha=0.05, [0, 10], target_init=0.5, window=5, margin=0.05


def test_eq1_inner_loop_moves_difficulty_with_the_pass_rate() -> None:
    # 1.0 + 0.05 * (0.8 - 0.5) = 1.015: too easy -> harder
    assert next_difficulty(1.0, 0.8, 0.5, D, True) == pytest.approx(1.015)
    # 1.0 + 0.05 * (0.1 - 0.6) = 0.975: too hard -> easier
    assert next_difficulty(1.0, 0.1, 0.6, D, True) == pytest.approx(0.975)
    # exactly on target: unchanged
    assert next_difficulty(2.5, 0.5, 0.5, D, True) == pytest.approx(2.5)


def test_eq1_is_clipped_and_switch_off_leaves_d_unchanged() -> None:
    big = Difficulty(alpha=10.0, d_min=0.5, d_max=3.0)
    assert next_difficulty(1.0, 1.0, 0.0, big, True) == 3.0  # 1 + 10 -> clipped to d_max
    assert next_difficulty(1.0, 0.0, 1.0, big, True) == 0.5  # 1 - 10 -> clipped to d_min
    assert next_difficulty(1.0, 1.0, 0.0, big, False) == 1.0  # difficulty_control off
    assert next_difficulty(7.3, 0.0, 0.9, D, False) == 7.3


def test_outer_loop_target_is_recent_mean_plus_margin() -> None:
    assert next_target([], D) == 0.5  # target_init
    # last 5 of [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] = 0.2..1.0, mean 0.6, + 0.05
    assert next_target([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], D) == pytest.approx(0.65)
    assert next_target([0.3], D) == pytest.approx(0.35)
    assert next_target([1.0, 1.0], D) == 1.0  # capped
    assert next_target([0.2, 0.4], Difficulty(target_window=1, target_margin=0.1)) == pytest.approx(0.5)


S = Surprise()  # eps=1e-6, window=3, threshold=0.01, gain=1.0, patience=2, delta=0.01, elite_k=5


def test_eq2_surprise_is_the_squared_relative_drop_from_the_recent_peak() -> None:
    assert surprise([], S) is None
    assert surprise([0.4], S) is None
    # peak 0.4, current 0.3: ((0.4 - 0.3) / 0.4)^2 = 0.0625
    assert surprise([0.2, 0.4, 0.3], S) == pytest.approx(0.0625, rel=1e-4)
    # at the recent peak: no surprise
    assert surprise([0.1, 0.2, 0.5], S) == pytest.approx(0.0)
    # the peak 0.9 is older than window=3 anchors: peak over [0.3, 0.4, 0.3] is 0.4
    assert surprise([0.9, 0.3, 0.4, 0.3], S) == pytest.approx(0.0625, rel=1e-4)


def test_fem_lowers_difficulty_only_above_threshold_and_when_on() -> None:
    assert apply_fem(2.0, 0.0625, S, True) == pytest.approx(1.9375)  # 2.0 - 1.0 * 0.0625
    assert apply_fem(2.0, 0.0625, S, False) == 2.0  # fem off
    assert apply_fem(2.0, 0.005, S, True) == 2.0  # below threshold 0.01
    assert apply_fem(2.0, None, S, True) == 2.0  # no surprise yet
    p = Protocol(difficulty=Difficulty(d_min=1.95), surprise=Surprise(difficulty_gain=2.0))
    assert apply_fem(2.0, 0.0625, p, True) == 1.95  # 2.0 - 0.125 clipped to d_min


def test_dynamic_strategy_goes_elite_on_a_plateau_only_when_on() -> None:
    rising = [0.1, 0.2, 0.3]
    flat = [0.1, 0.30, 0.305, 0.30]  # best of last 2 (0.305) - best before (0.30) < 0.01
    assert strategy(rising, S, True) == "balanced"
    assert strategy(flat, S, True) == "elite"
    assert strategy(flat, S, False) == "balanced"
    assert strategy([0.3, 0.3], S, True) == "balanced"  # not enough anchors for patience=2
    p = Protocol(elite_k=3)
    assert elite_shots("elite", p) == 5 and elite_shots("balanced", p) == 3


def test_trueskill_vote_moves_winner_up_and_loser_down() -> None:
    env = make_env()
    ratings = {"a": new_rating(env), "b": new_rating(env), "c": new_rating(env)}
    before = dict(ratings)
    apply_vote(env, ratings, "a", "b")
    assert ratings["a"].mu > before["a"].mu
    assert ratings["b"].mu < before["b"].mu
    assert ratings["a"].sigma < before["a"].sigma
    assert ratings["c"] == before["c"]
    same = dict(ratings)
    apply_vote(env, ratings, "c", "c")  # same-author pair: no change
    assert ratings == same


def test_eq4_indicator_admits_exactly_correct_rows_above_mean_rating() -> None:
    rows = [  # (correct, mu_author)
        (True, 27.0),
        (True, 25.0),
        (False, 30.0),
        (True, 24.0),
        (True, 25.1),
    ]
    mean_mu = 25.0
    admitted = [i for i, (c, mu) in enumerate(rows) if indicator(c, mu, mean_mu)]
    assert admitted == [0, 4]


def _e(sid: int, score: float) -> EliteExample:
    return EliteExample(
        problem=f"p{sid}", solution=f"s{sid}", explanation=None, member="m", solution_id=sid, score=score
    )


def test_elite_history_keeps_top_k_by_score_with_ties_to_the_newer() -> None:
    h = update_elite([], [_e(1, 0.5), _e(2, 0.9)], 3)
    assert [e.solution_id for e in h] == [2, 1]
    h = update_elite(h, [_e(3, 0.5), _e(4, 0.7), _e(5, 0.1)], 3)
    assert [e.solution_id for e in h] == [2, 4, 3]  # 1 and 3 tie at 0.5: the newer one enters
    h = update_elite(h, [_e(2, 0.9), _e(6, 1.0)], 3)  # 2 again: not duplicated
    assert [e.solution_id for e in h] == [6, 2, 4]
    assert update_elite(h, [_e(7, 2.0)], 0) == []
