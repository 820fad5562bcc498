"""Build step that ships `prompts/` and `configs/` inside the package (everything else: pyproject.toml).

The two folders stay at the repository's top level, their one home in git, where a source checkout
(an editable install) reads them. A wheel has no repository beside it, so `build_py` copies both to
`agora_cli/_shipped/prompts` and `agora_cli/_shipped/configs`; agora_cli/paths.py reads that copy
when it exists. Listing the files as package data of `agora_cli` (rather than copying them by hand)
also puts them in an sdist, so a wheel built from the sdist carries them too.
`scripts/check-wheel.sh` builds a wheel and runs it away from the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("prompts", "configs")  # top-level folders -> agora_cli/_shipped/<name>


def shipped_files() -> list[str]:
    """Every file under the shipped folders, relative to the repository root (no caches, no
    hidden files)."""
    files = []
    for folder in SHIPPED:
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                files.append(rel.as_posix())
    return files


class BuildPyWithShipped(build_py):
    """`build_py` plus the shipped folders as package data under `agora_cli/_shipped/`.

    It extends the (package, src_dir, build_dir, files) list that setuptools builds package data
    from: `_get_data_files` feeds the wheel, `get_data_files_without_manifest` the sdist (both
    present from setuptools 68, the floor in pyproject.toml, to 84; scripts/check-wheel.sh fails
    if a later setuptools stops calling them)."""

    def _get_data_files(self):  # type: ignore[no-untyped-def]
        return super()._get_data_files() + self._shipped()

    def get_data_files_without_manifest(self):  # type: ignore[no-untyped-def]
        # What the sdist's file list is made from: the shipped folders go into the sdist too.
        return super().get_data_files_without_manifest() + self._shipped()

    def _shipped(self) -> list[tuple[str, str, str, list[str]]]:
        # An editable install reads the top-level folders directly; copying them would only make a
        # stale second home.
        if self.editable_mode:
            return []
        build_dir = os.path.join(self.build_lib, "agora_cli", "_shipped")
        return [("agora_cli", os.path.relpath(ROOT), build_dir, shipped_files())]


setup(cmdclass={"build_py": BuildPyWithShipped})
