"""`agora configs list|copy`, and how a copy of a shipped config resolves what it names.

A copy is an editable config of the user's own: it must validate wherever it is written (the
working directory elsewhere, so no repository folder is found by accident), load to the same config
as the shipped one, and never overwrite a file unless asked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import load_config
from agora_cli.paths import CONFIGS_DIR, PROMPTS_DIR
from agora_cli.protocol.prompts import Prompts
from agora_cli.shipped import describe, shipped_configs

pytestmark = pytest.mark.unit

runner = CliRunner()
SHIPPED_NAMES = sorted(p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS_DIR.rglob("*.yaml"))


@pytest.fixture(autouse=True)
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test from an empty directory outside the repository, as an installed agora is."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_describe_takes_the_first_sentence_after_the_run_command():
    text = (
        "# agora run configs/x.yaml\n#\n# A small group (two models, e.g. 1.5x faster). It runs on CPU.\n"
        "# Second line of the paragraph.\n#\n# Another paragraph.\nname: x\n"
    )
    assert describe(text) == "A small group (two models, e.g. 1.5x faster)."
    assert describe("# agora run configs/x.yaml\nname: x\n") == ""
    assert describe("# One sentence over\n# two lines\nname: x\n") == "One sentence over two lines"


def test_list_names_every_shipped_config_with_its_description():
    result = runner.invoke(app, ["configs", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines[:-1]}
    assert sorted(listed) == SHIPPED_NAMES
    assert listed["tiny.yaml"].startswith("The CPU default: a heterogeneous trio")
    assert listed["ablations/no-fem.yaml"] == (
        "Table 2 ablation: the paper's mixed group with `fem` switched off (all else as paper-mixed.yaml)."
    )
    assert all(listed.values()), "every shipped config needs a description in its header comment"
    assert str(CONFIGS_DIR) in lines[-1]


def test_copy_writes_a_config_that_loads_like_the_shipped_one(tmp_path: Path):
    dest = tmp_path / "mine" / "tiny.yaml"
    result = runner.invoke(app, ["configs", "copy", "tiny.yaml", str(dest)])
    assert result.exit_code == 0, result.output
    shipped = (CONFIGS_DIR / "tiny.yaml").read_text().splitlines()
    copied = dest.read_text().splitlines()
    assert copied[0] == f"# agora run {dest}"  # its own run command
    assert copied[1:] == shipped[1:]  # comments and all, otherwise the same file
    # The Gemma member's chat template (configs/chat_templates/...) resolves to the shipped file.
    assert load_config(dest).model_dump() == load_config(CONFIGS_DIR / "tiny.yaml").model_dump()


@pytest.mark.parametrize("name", ["ablations/no-fem.yaml", "homogeneous-1b", "isolated.yaml"])
def test_copy_of_a_config_that_extends_another_still_validates(tmp_path: Path, name: str):
    result = runner.invoke(app, ["configs", "copy", name, str(tmp_path / "copies") + "/"])
    assert result.exit_code == 0, result.output
    shipped = CONFIGS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    copy = tmp_path / "copies" / shipped.name
    parent = yaml.safe_load(copy.read_text())["extends"]
    assert (CONFIGS_DIR / parent).resolve() == (
        shipped.parent / yaml.safe_load(shipped.read_text())["extends"]
    ).resolve()
    assert load_config(copy).model_dump() == load_config(shipped).model_dump()
    check = runner.invoke(app, ["validate", str(copy)])
    assert check.exit_code == 0, check.output


def test_a_parent_copied_beside_the_copy_wins(tmp_path: Path):
    for name in ("ablations/no-fem.yaml", "paper-mixed.yaml"):
        assert runner.invoke(app, ["configs", "copy", name, str(tmp_path)]).exit_code == 0
    parent = tmp_path / "paper-mixed.yaml"
    parent.write_text(parent.read_text().replace("seed: 0 ", "seed: 7 ", 1))
    cfg = load_config(tmp_path / "no-fem.yaml")
    assert cfg.seed == 7 and cfg.ablations.fem is False


def test_copy_refuses_to_overwrite_without_force(tmp_path: Path):
    dest = tmp_path / "tiny.yaml"
    dest.write_text("# my own edits\n")
    refused = runner.invoke(app, ["configs", "copy", "tiny.yaml", str(dest)])
    assert refused.exit_code == 2
    assert "exists" in refused.output and "--force" in refused.output
    assert dest.read_text() == "# my own edits\n"
    forced = runner.invoke(app, ["configs", "copy", "tiny.yaml", str(dest), "--force"])
    assert forced.exit_code == 0, forced.output
    assert load_config(dest).name == "tiny"


def test_copy_of_an_unknown_name_exits_2_listing_the_names(tmp_path: Path):
    result = runner.invoke(app, ["configs", "copy", "tiny-gpu.yaml", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no shipped config 'tiny-gpu.yaml'")
    assert all(name in lines[0] for name in SHIPPED_NAMES)
    assert not (tmp_path / "x.yaml").exists()


def test_shipped_configs_are_read_from_paths_configs_dir():
    assert [c.name for c in shipped_configs()] == sorted(SHIPPED_NAMES, key=lambda n: (n.count("/"), n))


def test_a_users_own_relative_paths_resolve_as_before(tmp_path: Path, elsewhere: Path):
    # A prompt set in the working directory wins over the shipped set of the same name ...
    own = elsewhere / "prompts" / "capable"
    own.mkdir(parents=True)
    (own / "verify.jinja").write_text((PROMPTS_DIR / "capable" / "verify.jinja").read_text())
    assert Prompts("prompts/capable").dir == Path("prompts/capable")
    assert Prompts("prompts/capable").path("vote") == PROMPTS_DIR / "vote.jinja"
    # ... and extends: is read relative to the config file, not as a shipped name, when it is there.
    (tmp_path / "paper-mixed.yaml").write_text(
        "name: base\nmembers: [{name: a, model: m}, {name: b, model: m}]\n"
    )
    (tmp_path / "child.yaml").write_text("extends: paper-mixed.yaml\nseed: 3\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.name, cfg.seed, len(cfg.members)) == ("base", 3, 2)
