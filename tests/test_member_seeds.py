"""Members that share a base model stay distinct: each trains with its own seed, derived from
the run's seed, `training.seed` and its name (SHA-256, so the same in every process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import Training
from agora_cli.training.data import make_batches, member_seed

pytestmark = pytest.mark.unit


def test_member_seeds_differ_by_name_and_run_and_are_stable() -> None:
    a, b = member_seed(0, 0, "smol-a"), member_seed(0, 0, "smol-b")
    assert a != b
    assert member_seed(1, 0, "smol-a") != a and member_seed(0, 1, "smol-a") != a
    # Fixed values: a rerun in any process trains each member as before (a salted hash() would
    # give other values in every process, failing this line).
    assert (a, b) == (724294711, 1957062504)


def test_two_members_on_one_base_draw_different_batches_and_dropout() -> None:
    """What the trainer seeds from the spec's `training.seed`: the batch order of each epoch
    (make_batches) and torch's generator (LoRA init and dropout masks)."""
    import torch

    seeds = [Training.model_validate({"seed": member_seed(0, 0, m)}).seed for m in ("smol-a", "smol-b")]
    lengths = [10 + (i * 7) % 50 for i in range(64)]
    orders = [make_batches(lengths, 4, group_by_length=True, seed=s) for s in seeds]
    assert orders[0] != orders[1]
    masks = []
    for s in seeds:
        torch.manual_seed(s)
        masks.append(torch.nn.functional.dropout(torch.ones(4096), p=0.05, training=True) == 0)
    assert not torch.equal(masks[0], masks[1])
    torch.manual_seed(seeds[0])  # and the same seed replays the same draws
    assert torch.equal(torch.nn.functional.dropout(torch.ones(4096), p=0.05, training=True) == 0, masks[0])


def _config(tmp_path: Path, **extra) -> Path:
    cfg = {
        "name": "twins",
        "members": [
            {"name": "smol-a", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            {"name": "smol-b", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            {"name": "gemma", "model": "google/gemma-3-270m"},
        ],
        **extra,
    }
    path = tmp_path / "twins.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_validate_warns_about_members_sharing_a_base_and_the_buffer(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(_config(tmp_path))])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert (
        "warning: members smol-a, smol-b share the base model 'HuggingFaceTB/SmolLM2-135M-Instruct' "
        "and train on the same buffer rows: each trains with its own seed"
    ) in out
    assert "gemma share" not in out
    # Isolated members train on their own solutions, and without LoRA nobody trains: no warning.
    for extra in ({"protocol": {"mode": "isolated"}}, {"ablations": {"lora": False}}):
        result = CliRunner().invoke(app, ["validate", str(_config(tmp_path, **extra))])
        assert result.exit_code == 0 and "share the base model" not in result.output
