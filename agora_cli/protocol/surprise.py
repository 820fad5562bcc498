"""External anchoring: internal surprise (Eq. 2), FEM and the dynamic strategy.

The paper names these mechanisms without pinning them down; this is the rule agora implements.
Inputs are the ensemble's anchors in time order, as counts with the members pooled (calibration
items right, items scored); a_1 ... a_t are their scores (items right / items scored, the members'
mean pass@1 when each scored the same items).

Surprise, Eq. 2.  F_t = ((mu*_t - mean_mu_t) / (mu*_t + eps))^2 with
  mu*_t     = max(a_{t-w+1} ... a_t), the recent peak over the last w = `surprise.window` anchors
              (the current one included), and
  mean_mu_t = a_t, the ensemble's current average score.
F_t is 0 while the ensemble is at its recent best and grows with the relative drop from the peak
(a fall from 0.40 to 0.30 gives F = 0.0625). It is undefined (None) before the second anchor.

FEM (`ablations.fem`).  When F_t > `surprise.threshold` AND the drop is beyond the anchor's
sampling noise (`clear_drop`), the difficulty chosen by Eq. 1 is lowered:
  d_{t+1} <- clip(d_{t+1} - `surprise.difficulty_gain` * F_t, d_min, d_max)
so a surprising drop in external performance pulls the curriculum back toward problems the group
can still validate. F_t alone is a squared relative drop: near a score of zero one calibration
item moves it from 0 to 1 (1/24 -> 0/24 gives F_t = 1). So FEM also requires that the current and
the peak anchor each counted at least `surprise.min_n` items (members pooled: k = sum of items
right, n = sum of items scored) and that the current anchor's upper 95% Wilson bound lies below
the peak's lower bound. FEM moves d, which the difficulty control owns: with
`difficulty_control` off (d stays d0) or fem off, d_{t+1} is left as Eq. 1 set it. F_t is stored
either way. Each move is reported (`fem_move`: from, to, the two anchor means and n).

Dynamic strategy (`ablations.dynamic_strategy`).  The strategy is 'elite' on a plateau and
'balanced' otherwise. A plateau is: at least `plateau_patience` + 1 anchors, and the best of the
last `plateau_patience` anchors beats the best anchor before them by less than `plateau_delta`.
Under 'elite', solvers get `plateau_elite_k` elite examples instead of `elite_k` (more elite-peer
learning); `elite_shots` returns that number. With the switch off the strategy is always
'balanced'. The loop stores F_t and the strategy per step (`steps.f_t`, `steps.strategy`) and
emits a `surprise` event, so both are visible in the run log.

Without external anchoring (`ablations.external_anchor` off) there are no anchor scores: F_t is
undefined (stored NULL), FEM never acts and the strategy stays 'balanced'. No substitute signal
is used, so the ablation removes exactly what the anchor feeds (`NO_ANCHOR_NOTE` says so in the
run's step info and `surprise` events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agora_cli.config import Config, Protocol, Surprise
from agora_cli.stats import wilson

Strategy = Literal["balanced", "elite"]

NO_ANCHOR_NOTE = "external_anchor off: F_t undefined, FEM and the dynamic strategy have no signal"

# One anchor of the ensemble (or of one member): calibration items right, items scored.
Counts = tuple[float, int]


@dataclass(frozen=True)
class Drop:
    """A drop from the recent peak anchor beyond sampling noise (`clear_drop`)."""

    peak: float  # the peak anchor's mean
    current: float  # the current anchor's mean
    n: int  # items the current anchor counted


def _mean(c: Counts) -> float:
    return c[0] / c[1] if c[1] else 0.0


def clear_drop(history: list[Counts], cfg: Surprise) -> Drop | None:
    """The current anchor's drop from the best of the last `window` anchors when it is beyond
    noise: both counted >= `min_n` items and the current upper 95% Wilson bound is below the
    peak's lower bound. None otherwise (also before the second anchor)."""
    if len(history) < 2:
        return None
    now, peak = history[-1], max(history[-cfg.window :], key=_mean)
    if min(now[1], peak[1]) < cfg.min_n:
        return None
    if wilson(now[0], now[1])[1] >= wilson(peak[0], peak[1])[0]:
        return None
    return Drop(_mean(peak), _mean(now), now[1])


def surprise(anchor_history: list[float], cfg: Surprise) -> float | None:
    """Eq. 2 on the ensemble's anchor scores; None before the second anchor."""
    if len(anchor_history) < 2:
        return None
    current = anchor_history[-1]
    peak = max(anchor_history[-cfg.window :])  # mu*_t: recent peak, current included
    return ((peak - current) / (peak + cfg.eps)) ** 2  # Eq. 2


def anchor_step(step: int, every: int) -> bool:
    """Whether step `step` is on the anchor schedule (after every `every`-th step)."""
    return (step + 1) % every == 0


def fem_move(
    cfg: Config, history: list[Counts], d_next: float
) -> tuple[float, float | None, dict[str, float | int] | None]:
    """Eq. 2's F_t on the anchor history (oldest first, the current anchor last), and d_{t+1}
    after FEM, with the move (None when d was not moved): from, to, peak, current, n."""
    f_t = surprise([_mean(c) for c in history], cfg.protocol.surprise)  # Eq. 2
    # FEM moves d, which the difficulty control owns: with it off, d stays d0 (one switch, one
    # mechanism).
    on = cfg.ablations.fem and cfg.ablations.difficulty_control
    drop = clear_drop(history, cfg.protocol.surprise) if on else None
    if drop is None:
        return d_next, f_t, None
    d = apply_fem(d_next, f_t, cfg.protocol, True)
    if d == d_next:
        return d_next, f_t, None
    move = {"d_from": d_next, "d_to": d, "peak": drop.peak, "current": drop.current, "n": drop.n}
    return d, f_t, move


def fem_text(move: dict, member: str | None = None) -> str:
    """`FEM: d lowered by 0.4: anchor mean 0.31 -> 0.18, n = 48` (the event's one line)."""
    who = f" ({member})" if member else ""
    return (
        f"FEM{who}: d lowered by {move['d_from'] - move['d_to']:.3g}: anchor mean "
        f"{move['peak']:.2f} -> {move['current']:.2f}, n = {move['n']}"
    )


def apply_fem(d_next: float, f_t: float | None, cfg: Surprise | Protocol, enabled: bool) -> float:
    """Lower d_{t+1} by difficulty_gain * F_t when F_t exceeds the threshold (see module doc;
    the caller checks `clear_drop` and the switches first).

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
