"""API keys of the servers agora launches, in process: every launched server gets one, and it
reaches no command line, `servers.json`, event, config dump or dry-run output; the run's key file
and SGLang's key config are created 0600; `agora validate` warns on an SGLang with known holes and
on keyless servers off this machine."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agora_cli.cli import app
from agora_cli.config import config_from_dict, dump_config, load_config
from agora_cli.errors import ServerError
from agora_cli.events import EventBus, JsonlSink
from agora_cli.paths import CONFIGS_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.guard import copy_redacted
from agora_cli.serving.keys import KEY_FILE, run_key, security_warnings
from agora_cli.serving.lora_server import LoraServing
from agora_cli.serving.sglang import SGLangServing
from agora_cli.serving.transformers import TransformersServing
from agora_cli.serving.vllm import VLLMServing

pytestmark = pytest.mark.unit
SHIPPED = sorted(p for p in CONFIGS_DIR.rglob("*.yaml"))


@pytest.fixture
def umask0():
    """No umask: a file's mode is then exactly what it was created with."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_key_is_made_once_with_mode_0600_and_read_back(tmp_path: Path, umask0: None) -> None:
    key = run_key(tmp_path)
    assert len(key) >= 32
    assert _mode(tmp_path / KEY_FILE) == 0o600
    assert run_key(tmp_path) == key  # resume, or `agora run` attaching to `agora serve`
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left behind
    assert run_key(tmp_path / "other") != key


def test_a_run_key_never_starts_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLang's --config hands the key to argparse as `--api-key VALUE`: a leading '-' would read
    as an option and the server would exit (a url-safe token starts with one 1 time in 64)."""
    monkeypatch.setattr("agora_cli.serving.keys.secrets.token_urlsafe", lambda n: "-" + "x" * 42)
    assert not run_key(tmp_path).startswith("-")


def test_sglang_refuses_a_configured_key_starting_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGORA_TEST_KEY", "-looks-like-an-option")
    cfg = config_from_dict(
        {
            "name": "k",
            "backends": {"gpu": {"kind": "sglang", "api_key_env": "AGORA_TEST_KEY"}},
            "members": [{"name": n, "model": "org/m", "backend": "gpu"} for n in "ab"],
            "evaluation": {"calibration": "gsm8k"},
        }
    )
    backend = Serving(cfg, RunPaths(tmp_path / "run")).backends["gpu"]
    assert isinstance(backend, SGLangServing)
    with pytest.raises(ServerError, match="starting with '-'"):
        backend.write_key_config()
    assert not backend.key_config().exists()


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("leaked")
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(ServerError, match="readable by other users"):
        run_key(tmp_path)


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_shipped_launch_commands_carry_no_key(
    config: Path, tmp_path: Path, umask0: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands each shipped config launches (as at start, not only as --dry-run prints
    them) hold no key; a launched server has one, given by environment or a 0600 file."""
    paths = RunPaths(tmp_path / "run")
    key = run_key(paths.root)
    cfg = load_config(config)
    for b in cfg.backends.values():  # a config that names its key's variable (the cluster ones)
        if getattr(b, "api_key_env", None):
            monkeypatch.setenv(b.api_key_env, key)  # type: ignore[union-attr]
    serving = Serving(cfg, paths)
    for line in serving.describe():
        assert key not in line
    for backend in serving.backends.values():
        if isinstance(backend, TransformersServing):  # takes no key (module docstring)
            assert key not in " ".join(backend._command("/models/x", 8000))
            continue
        if not isinstance(backend, LoraServing) or not backend.cfg.launch:
            continue
        for m in backend.members.values():  # no download: the bases as configured
            backend._base[m.name] = m.model
        if isinstance(backend, VLLMServing):
            backend.cfg.python = sys.executable  # the start checks the interpreter exists
        if not backend.cfg.base_port:  # a fixed port: the command is built, never started, and a
            backend.cfg.base_port = 8100  # free port would mean binding a socket in a unit test
        for i, (base, members) in enumerate(backend._bases().items()):
            process = backend._server(i, base, members)
            assert key not in " ".join(process.cmd)
            assert key not in repr(process)
            assert process.secret == key  # what the guard keeps out of the server's log
            if isinstance(backend, SGLangServing):
                path = Path(process.cmd[process.cmd.index("--config") + 1])
                assert yaml.safe_load(path.read_text()) == {"api-key": key}
                assert _mode(path) == 0o600
            else:
                assert process.env["VLLM_API_KEY"] == key


def test_serve_dry_run_prints_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_SERVE_KEY", "sk-dry-run-7b1d9e0f3c2a4b5d")
    run_dir = tmp_path / "run"
    key = run_key(run_dir)
    for config, extra in (
        ("configs/paper-mixed.yaml", []),
        ("configs/paper-mixed.yaml", ["backends.sglang.api_key_env=AGORA_SERVE_KEY"]),
        ("configs/tiny.yaml", []),
        ("configs/tiny.yaml", ["backends.vllm.api_key_env=AGORA_SERVE_KEY"]),
    ):
        r = CliRunner().invoke(app, ["serve", config, *extra, "--dry-run", "--run-dir", str(run_dir)])
        assert r.exit_code == 0, r.output
        assert "launch_server" in r.output or "api_server" in r.output
        assert key not in r.output and "sk-dry-run" not in r.output


def test_servers_file_events_and_config_dump_hold_no_key(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS_DIR / "paper-mixed.yaml")
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir(parents=True)
    bus = EventBus([JsonlSink(paths.events)])
    serving = Serving(cfg, paths, bus)
    (backend,) = serving.backends.values()
    key = backend._api_key()  # what the servers would get
    assert key and key == run_key(paths.root)
    for m in backend.members.values():  # as after start: servers up, adapters live
        backend._base[m.name] = m.model
        backend._urls[m.model] = ["http://127.0.0.1:30000"]
        backend.lora.add_replica("http://127.0.0.1:30000", loaded=[f"{m.name}-v3"])
        backend.lora.adapters[m.name] = f"{m.name}-v3"
        bus.emit("server_started", backend=backend.name, url="http://127.0.0.1:30000", model=m.model)
        ep = serving.endpoint(m.name)
        assert ep.api_key == key and key not in repr(ep)
        bus.emit("endpoint", member=m.name, endpoint=repr(ep))
    serving.write_servers_file()
    paths.config.write_text(dump_config(cfg))
    for path in (paths.servers, paths.events, paths.config):
        assert key not in path.read_text(), path
    assert "http://127.0.0.1:30000" in paths.servers.read_text()


def test_guard_copies_server_output_with_the_key_redacted() -> None:
    import io

    out = io.BytesIO()
    source = io.BytesIO(b"server_args=ServerArgs(api_key='k3y-123', port=1)\nready\nk3y-123k3y-123\n")
    copy_redacted(source, b"k3y-123", out)
    assert out.getvalue() == (
        b"server_args=ServerArgs(api_key='<redacted>', port=1)\nready\n<redacted><redacted>\n"
    )


def _members(backend: str) -> list[dict]:
    return [{"name": n, "model": "org/base", "backend": backend} for n in ("a", "b")]


def _with(backend: dict) -> object:
    lora = backend["kind"] != "openai"  # an OpenAI-compatible endpoint cannot load adapters
    return config_from_dict(
        {
            "name": "k",
            "backends": {"x": backend},
            "members": _members("x"),
            "evaluation": {"calibration": "gsm8k"},
            "ablations": {"lora": lora},
        }
    )


def test_security_warnings() -> None:
    sglang = _with({"kind": "sglang"})
    old = security_warnings(sglang, sglang_version="0.5.10")
    assert len(old) == 1 and "0.5.23" in old[0]
    assert security_warnings(sglang, sglang_version="0.5.23") == []
    assert security_warnings(_with({"kind": "vllm"}), sglang_version="0.5.10") == []  # SGLang unused
    # Launched servers always get a key, wherever they listen.
    assert security_warnings(_with({"kind": "vllm", "host": "0.0.0.0"}), sglang_version="0.5.23") == []
    exposed = [
        {"kind": "transformers", "host": "0.0.0.0"},
        {"kind": "sglang", "launch": False, "urls": {"org/base": "http://10.0.0.7:30000"}},
        {"kind": "openai", "base_url": "http://gpu-box:8000/v1"},
    ]
    for b in exposed:
        (line,) = security_warnings(_with(b), sglang_version="0.5.23")
        assert "backends.x" in line and "without an API key" in line
    quiet = [
        {"kind": "transformers"},
        {"kind": "sglang", "launch": False, "urls": {"org/base": "http://localhost:30000"}},
        {
            "kind": "sglang",
            "launch": False,
            "urls": {"org/base": "http://10.0.0.7:30000"},
            "api_key_env": "K",
        },
        {"kind": "openai", "base_url": "http://[::1]:8000/v1"},
    ]
    for b in quiet:
        assert security_warnings(_with(b), sglang_version="0.5.23") == [], b


def test_validate_warns_on_an_old_sglang_and_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agora_cli.serving.keys.installed_sglang", lambda: "0.5.10")
    r = CliRunner().invoke(app, ["validate", "configs/paper-mixed.yaml"])
    assert r.exit_code == 0, r.output
    assert any(line.startswith("warning: SGLang 0.5.10") for line in r.output.splitlines()), r.output
    monkeypatch.setattr("agora_cli.serving.keys.installed_sglang", lambda: "0.5.23")
    r = CliRunner().invoke(app, ["validate", "configs/paper-mixed.yaml"])
    assert r.exit_code == 0 and "SGLang" not in r.output.replace("SGLang server", ""), r.output
