"""One exit code per class of failure, for every command: a usage or config error (a file or run
directory that is not there, a name that does not exist, a malformed option) exits 2, whatever
the command; runtime failures exit 1. Each case fails before any server starts."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from agora_cli.cli import app

pytestmark = pytest.mark.unit
cli = CliRunner()

# (command words, a usage error for that command); "{missing}" is a path that does not exist.
CASES = {
    "validate": ["validate", "{missing}.yaml"],
    "models": ["models", "prepare", "{missing}.yaml"],
    "serve": ["serve", "{missing}.yaml"],
    "run": ["run", "{missing}.yaml", "--steps", "1"],
    "generate": ["generate", "--run-dir", "{missing}"],
    "solve": ["solve", "--run-dir", "{missing}"],
    "verify": ["verify", "--run-dir", "{missing}"],
    "vote": ["vote", "--run-dir", "{missing}"],
    "status": ["status", "{missing}"],
    "train": ["train", "--run-dir", "{missing}"],
    "eval": ["eval", "configs/tiny.yaml", "--benchmarks", "gsm8", "--run-dir", "{missing}"],
    "ablate": ["ablate", "configs/tiny.yaml", "--seeds", "one", "--out", "{missing}"],
    "report": ["report", "{missing}"],
    "grade": ["grade", "1"],
    "configs": ["configs", "copy", "no-such-config", "{missing}.yaml"],
}


def test_every_command_has_a_case():
    """A new command gets a case here (the parametrisation below covers every one)."""
    group = typer.main.get_command(app)
    assert set(group.commands) == set(CASES)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(CASES))
def test_usage_error_exits_2_with_one_line(command, tmp_path):
    args = [a.replace("{missing}", str(tmp_path / "absent")) for a in CASES[command]]
    res = cli.invoke(app, args)
    assert res.exit_code == 2, (command, res.exit_code, res.output)
    assert "Traceback" not in res.output
