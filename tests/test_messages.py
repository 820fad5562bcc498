"""Messages that point at the cause: a misspelt override is named with the closest valid key, a
missing config file is one plain line, and a resume whose config differs says which overrides
would match the stored run as well as --force."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agora_cli import runner
from agora_cli.cli import app
from agora_cli.config import load_config
from agora_cli.errors import ConfigError

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
cli = CliRunner()


def test_a_misspelt_override_is_named_with_the_key_it_meant():
    res = cli.invoke(app, ["validate", TINY, "protocol.buffer_treshold=8"])
    assert res.exit_code == 2
    assert "`protocol.buffer_treshold=8`" in res.stderr  # the override, as typed
    assert "did you mean `protocol.buffer_threshold`?" in res.stderr
    assert "Extra inputs" not in res.stderr
    assert "tiny.yaml overrides" in res.stderr  # the file itself is not blamed


def test_a_misspelt_nested_key_is_suggested_at_its_own_level():
    with pytest.raises(ConfigError) as err:
        load_config(TINY, ["members.0.sampling.temprature=0.3", "traning.lr=1"])
    text = str(err.value)
    assert "did you mean `members[0].sampling.temperature`?" in text
    assert "did you mean `training`?" in text and "`traning.lr=1`" in text


def test_a_missing_config_file_is_one_plain_line(tmp_path):
    res = cli.invoke(app, ["run", str(tmp_path / "tiny.yml"), "--steps", "1"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "tiny.yml does not exist" in lines[0], res.stderr
    assert "problem(s)" not in res.stderr


def test_a_resume_without_the_original_overrides_suggests_them(tmp_path):
    first = load_config(TINY, ["protocol.buffer_threshold=8", "protocol.difficulty.alpha=0.07"])
    paths = runner.prepare_run_dir(first, tmp_path / "run")
    paths.store.touch()  # a run exists
    with pytest.raises(ConfigError) as err:
        runner.prepare_run_dir(load_config(TINY), tmp_path / "run")
    text = str(err.value)
    assert "--force" in text
    suggested = text.split("add the overrides ", 1)[1].splitlines()[0]
    args = shlex.split(suggested)
    assert sorted(args) == ["protocol.buffer_threshold=8", "protocol.difficulty.alpha=0.07"]
    # ... and those overrides do resume it.
    runner.prepare_run_dir(load_config(TINY, args), tmp_path / "run")
