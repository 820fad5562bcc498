"""Strict, validated run configuration (moved into a package; split by job in the next commit)."""

from agora_cli.config.schema import *  # noqa: F403
from agora_cli.config.schema import _template_path  # noqa: F401
