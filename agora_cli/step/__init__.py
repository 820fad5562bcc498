"""One step of the loop, one unit per protocol variant behind one interface (`base.Step`).

  base.py      the open step's shared state and the interface the loop and stage commands call
  problems.py  generation slots and problem storage (protocol step 1), shared by the variants
  solving.py   solve and unanimous verification (protocol steps 2-3), shared by AGORA and probes
  agora.py     AGORA: generate -> solve -> verify -> vote -> elite selection
  isolated.py  the isolated control: own problems, self-consistency samples, strict majority
  probes.py    the consensus audit's probes inside an AGORA step: solved, verified, graded at
               commit, never voted on or buffered

`variant_for` is the one place `protocol.mode` picks the variant.
"""

from __future__ import annotations

from agora_cli.step.agora import AgoraStep
from agora_cli.step.base import STAGES, Step, StepState
from agora_cli.step.isolated import IsolatedStep

VARIANTS: dict[str, type[Step]] = {"agora": AgoraStep, "isolated": IsolatedStep}


def variant_for(mode: str) -> type[Step]:
    """The step variant of `protocol.mode`."""
    try:
        return VARIANTS[mode]
    except KeyError:
        raise ValueError(
            f"no step variant for protocol.mode {mode!r}; expected one of {sorted(VARIANTS)}"
        ) from None


__all__ = ["STAGES", "AgoraStep", "IsolatedStep", "Step", "StepState", "variant_for"]
