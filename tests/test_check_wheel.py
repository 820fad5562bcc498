"""The built wheel works without the source tree: scripts/check-wheel.sh builds the sdist and the
wheel, installs the wheel alone, and runs `agora configs list|copy`, `agora validate` and a prompt
render from a directory outside the repository (see the script for each check)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check-wheel.sh"


def test_installed_wheel_finds_its_configs_and_prompts_away_from_the_tree():
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"^check-wheel: ok in \d+ s$", proc.stdout, re.M), proc.stdout[-2000:]
    assert "agora_cli/_shipped/prompts/capable; the rest from" in proc.stdout
