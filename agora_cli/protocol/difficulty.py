"""Adaptive difficulty (docs/protocol.md, step 1): Eq. 1 inner loop and the outer V_target loop."""

from __future__ import annotations

from agora_cli.config import Difficulty


def next_difficulty(d: float, v: float, v_target: float, cfg: Difficulty, enabled: bool) -> float:
    """Eq. 1, inner loop: d_{t+1} = d_t + alpha * (V_t - V_target), clipped to [d_min, d_max].

    V_t above target (too easy) raises the difficulty. Unchanged when difficulty_control is off.
    """
    if not enabled:
        return d
    d_next = d + cfg.alpha * (v - v_target)  # Eq. 1
    return min(max(d_next, cfg.d_min), cfg.d_max)


def next_target(history: list[float], cfg: Difficulty, fixed: float | None = None) -> float:
    """Outer loop: V_target = mean of the last `target_window` V_t + `target_margin`, capped at 1.0
    ("kept slightly above the moving average of recent V_t"); `target_init` before any step.

    Read literally, the target sits `target_margin` above where V_t has been, so Eq. 1 lowers d
    by about alpha * margin per step unless V_t keeps rising that fast: an improving ensemble
    still sees d fall. `fixed` (`protocol.v_target`) replaces the rule with a constant target
    pass rate, under which d rises while V_t stays above it."""
    if fixed is not None:
        return fixed
    if not history:
        return cfg.target_init
    recent = history[-cfg.target_window :]
    return min(1.0, sum(recent) / len(recent) + cfg.target_margin)
