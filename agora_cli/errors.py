"""Typed errors. Library code raises these; the CLI turns them into one red line and an exit code.

Every message should say what to do next, e.g. "server at 127.0.0.1:30000 did not become healthy in
120 s; see runs/x/logs/serve-smollm2.log".
"""

from __future__ import annotations


class AgoraError(Exception):
    """Base class for every error agora reports to a user."""

    exit_code: int = 1


class ConfigError(AgoraError):
    """A config file (or override) is invalid. Carries every problem found, each with its YAML path."""

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class ConfigFileMissing(ConfigError):
    """The config file itself does not exist: one plain line, not a list of problems."""

    def __init__(self, path: object):
        super().__init__(str(path), [("<file>", "no such file")])
        self.args = (
            f"config file {path} does not exist; `agora configs` lists the shipped configs "
            "(e.g. configs/tiny.yaml)",
        )


class ModelSourceError(AgoraError):
    """A model source (hub id, directory, GGUF file, pkg:// file) cannot be resolved or prepared."""


class ServerError(AgoraError):
    """A serving backend failed to start, became unhealthy, or rejected an operation."""


class EndpointError(AgoraError):
    """A member's endpoint stayed unreachable after retries."""

    def __init__(self, member: str, endpoint: str, detail: str):
        self.member = member
        self.endpoint = endpoint
        super().__init__(
            f"member {member!r} at {endpoint} is unreachable after retries ({detail}); "
            "check that its server is up (`agora serve CONFIG`), then re-run the same command "
            "to resume"
        )


class StoreError(AgoraError):
    """The run store is missing, locked, from a newer agora, or inconsistent."""


class UsageError(AgoraError):
    """A command's argument names something that does not exist (a member, an adapter version)."""

    exit_code = 2


class NoRunError(StoreError):
    """The run directory given holds no run (a usage error: the path is wrong)."""

    exit_code = 2


class RunLockedError(StoreError):
    """Another agora process holds the run directory (see `agora_cli.runlock`)."""

    exit_code = 2


class TrainingError(AgoraError):
    """A training round failed; the buffer rows stay unconsumed and the round is retried on resume."""


class PromptError(AgoraError):
    """A prompt template is missing, fails to parse, or uses a variable the role does not provide."""


class EvaluationError(AgoraError):
    """A benchmark is unknown or its data cannot be read."""


class EvaluationUsageError(EvaluationError):
    """An argument names a benchmark, member, seed list or limit that cannot be (a usage error)."""

    exit_code = 2


class ShippedConfigError(AgoraError):
    """`agora configs`: no shipped config has that name, or a copy would overwrite a file."""

    exit_code = 2
