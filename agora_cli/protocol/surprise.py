"""External anchoring: internal surprise (Eq. 2), FEM and the dynamic strategy.

The paper names these mechanisms without pinning them down; this is the rule agora implements.
Inputs are the ensemble's anchor scores in time order (one value per anchor, e.g. the mean pass@1
of the members on the calibration set), written a_1 ... a_t.

Surprise, Eq. 2.  F_t = ((mu*_t - mean_mu_t) / (mu*_t + eps))^2 with
  mu*_t     = max(a_{t-w+1} ... a_t), the recent peak over the last w = `surprise.window` anchors
              (the current one included), and
  mean_mu_t = a_t, the ensemble's current average score.
F_t is 0 while the ensemble is at its recent best and grows with the relative drop from the peak
(a fall from 0.40 to 0.30 gives F = 0.0625). It is undefined (None) before the second anchor.

FEM (`ablations.fem`).  When F_t > `surprise.threshold`, the difficulty chosen by Eq. 1 is lowered:
  d_{t+1} <- clip(d_{t+1} - `surprise.difficulty_gain` * F_t, d_min, d_max)
so a surprising drop in external performance pulls the curriculum back toward problems the group
can still validate. Below the threshold (or with fem off) d_{t+1} is left as Eq. 1 set it.

Dynamic strategy (`ablations.dynamic_strategy`).  The strategy is 'elite' on a plateau and
'balanced' otherwise. A plateau is: at least `plateau_patience` + 1 anchors, and the best of the
last `plateau_patience` anchors beats the best anchor before them by less than `plateau_delta`.
Under 'elite', solvers get `plateau_elite_k` elite examples instead of `elite_k` (more elite-peer
learning); `elite_shots` returns that number. With the switch off the strategy is always
'balanced'. The loop stores F_t and the strategy per step (`steps.f_t`, `steps.strategy`) and
emits a `surprise` event, so both are visible in the run log.

Without external anchoring (`ablations.external_anchor` off), F_t comes from the ratings, on the
steps an anchor would have been taken (every `anchor_every` steps), so FEM still acts and the
ablation removes only the ground-truth signal:
  F_t = ((mu*_t - mean_mu_t) / (mu*_t + eps))^2 with mu*_t the best member's TrueSkill mean and
  mean_mu_t the ensemble's mean, after the step's votes (Eq. 2 read on the ratings themselves).
F_t is 0 while the members are rated alike and grows as one member pulls away from the group, so
FEM eases the curriculum when the group's peer-judged quality splits. The dynamic strategy needs a
performance history and has none without anchors: it stays 'balanced' (not matched by the
ablation; docs/protocol.md says so).
"""

from __future__ import annotations

from typing import Literal

from agora_cli.config import Config, Protocol, Surprise

Strategy = Literal["balanced", "elite"]


def surprise(anchor_history: list[float], cfg: Surprise) -> float | None:
    """Eq. 2 on the ensemble's anchor scores; None before the second anchor."""
    if len(anchor_history) < 2:
        return None
    current = anchor_history[-1]
    peak = max(anchor_history[-cfg.window :])  # mu*_t: recent peak, current included
    return ((peak - current) / (peak + cfg.eps)) ** 2  # Eq. 2


def rating_surprise(mus: list[float], eps: float) -> float | None:
    """Eq. 2 on the ratings (external anchoring off; see module doc): best mu against mean mu."""
    if not mus:
        return None
    best, mean = max(mus), sum(mus) / len(mus)
    return ((best - mean) / (best + eps)) ** 2


def anchor_step(step: int, every: int) -> bool:
    """Whether step `step` is on the anchor schedule (after every `every`-th step)."""
    return (step + 1) % every == 0


def apply_fem(d_next: float, f_t: float | None, cfg: Surprise | Protocol, enabled: bool) -> float:
    """Lower d_{t+1} by difficulty_gain * F_t when F_t exceeds the threshold (see module doc).

    `cfg` is `protocol.surprise`, or the whole `protocol` section (then the result is also
    clipped to `protocol.difficulty`'s [d_min, d_max]; otherwise it is kept >= 0).
    """
    s = cfg.surprise if isinstance(cfg, Protocol) else cfg
    if not enabled or f_t is None or f_t <= s.threshold:
        return d_next
    lo, hi = (
        (cfg.difficulty.d_min, cfg.difficulty.d_max) if isinstance(cfg, Protocol) else (0.0, float("inf"))
    )
    return min(max(d_next - s.difficulty_gain * f_t, lo), hi)


def is_plateau(anchor_history: list[float], cfg: Surprise) -> bool:
    p = cfg.plateau_patience
    if len(anchor_history) < p + 1:
        return False
    return max(anchor_history[-p:]) - max(anchor_history[:-p]) < cfg.plateau_delta


def strategy(anchor_history: list[float], cfg: Surprise, enabled: bool) -> Strategy:
    """'elite' on a plateau (see module doc) when dynamic_strategy is on, else 'balanced'."""
    if enabled and is_plateau(anchor_history, cfg):
        return "elite"
    return "balanced"


def step_strategy(cfg: Config, anchor_history: list[float]) -> Strategy:
    """The strategy in force for the next step, from the run's config and anchor history."""
    return strategy(anchor_history, cfg.protocol.surprise, cfg.ablations.dynamic_strategy)


def elite_shots(strategy_: Strategy, cfg: Protocol) -> int:
    """How many elite examples solvers see under the strategy in force."""
    return cfg.surprise.plateau_elite_k if strategy_ == "elite" else cfg.elite_k
