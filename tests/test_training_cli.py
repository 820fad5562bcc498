"""`agora train`: a round now on the unconsumed buffer, through the real command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import config_from_dict, dump_config
from agora_cli.paths import RunPaths
from agora_cli.store import Store
from tests.test_rounds import SMOL, add_rows


def make_run(run_dir: Path, rows: int) -> RunPaths:
    cfg = config_from_dict(
        {
            "name": "cli-train",
            "members": [{"name": "smol-a", "model": SMOL}, {"name": "smol-b", "model": SMOL}],
            "protocol": {"buffer_threshold": 64},
            "training": {
                "r": 4,
                "alpha": 8,
                "epochs": 1,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "max_length": 96,
                "max_threads": 2,
            },
        }
    )
    paths = RunPaths(run_dir).ensure()
    paths.config.write_text(dump_config(cfg))
    with Store(paths.store) as store:
        add_rows(store, rows)
    return paths


@pytest.mark.e2e
def test_agora_train_runs_a_round_below_threshold(run_dir: Path) -> None:
    paths = make_run(run_dir, rows=3)  # far below the threshold of 64
    result = CliRunner().invoke(app, ["train", "--run-dir", str(run_dir), "--member", "smol-a"])
    assert result.exit_code == 0, result.output
    assert "round 1: 3 rows, live" in result.output
    assert "smol-a" in result.output and "v1" in result.output and "smol-b" not in result.output
    with Store(paths.store) as store:
        assert store.scalar("SELECT status FROM adapters WHERE member = 'smol-a'") == "live"
        assert store.scalar("SELECT COUNT(*) FROM buffer WHERE round_id IS NULL") == 0
    assert (paths.adapter_dir("smol-a", 1) / "adapter_model.safetensors").exists()
    assert "training_finished" in paths.events.read_text()

    again = CliRunner().invoke(app, ["train", "--run-dir", str(run_dir)])
    assert again.exit_code == 0 and "nothing to train" in again.output


@pytest.mark.unit
def test_agora_train_explains_a_missing_run_and_an_unknown_member(run_dir: Path) -> None:
    missing = CliRunner().invoke(app, ["train", "--run-dir", str(run_dir / "nope")])
    assert missing.exit_code == 2 and "agora run CONFIG" in missing.output
    make_run(run_dir, rows=1)
    unknown = CliRunner().invoke(app, ["train", "--run-dir", str(run_dir), "--member", "zed"])
    assert unknown.exit_code == 2 and "no member 'zed'" in unknown.output
