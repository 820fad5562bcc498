"""A server agora launches wants the key, and the key stays where only the user can read it: a
fake SGLang launched as a real process through agora's launch path (`tests/fakes/sglang_launch.py`
reads the `--config` file as SGLang does and logs its key at start as SGLang 0.5.23 does)."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

from agora_cli.config import Sampling, config_from_dict, dump_config
from agora_cli.events import EventBus, JsonlSink
from agora_cli.paths import REPO_DIR, RunPaths
from agora_cli.serving import Serving
from agora_cli.serving.keys import KEY_FILE
from agora_cli.serving.process import free_port, http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
BASE = "org/base-a"  # hub ids pass through `prepare` unchanged


def _fake_python(tmp_path: Path) -> str:
    """An interpreter stand-in: `<it> -m sglang.launch_server ARGS` runs the fake with ARGS."""
    script = tmp_path / "fake-python"
    script.write_text(
        f'#!/bin/sh\nshift 2\ncd "{REPO_DIR}"\nexec "{sys.executable}" -m tests.fakes.sglang_launch "$@"\n'
    )
    script.chmod(0o700)
    return str(script)


def _cmdlines() -> list[bytes]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((p / "cmdline").read_bytes())
            except OSError:
                pass
    return out


def test_launched_server_wants_the_run_key_which_no_other_user_can_read(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "name": "sg",
            "backends": {
                "gpu": {"kind": "sglang", "python": _fake_python(tmp_path), "base_port": free_port()}
            },
            "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
            "evaluation": {"calibration": "gsm8k"},
        }
    )
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir(parents=True)
    paths.config.write_text(dump_config(cfg))
    adapter = tmp_path / "adapters" / "a-v1"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    hi = [{"role": "user", "content": "hi"}]

    async def ask(serving: Serving) -> str:
        pool = serving.client_pool()
        try:
            return (await pool.chat("a", hi, Sampling(max_tokens=4))).text
        finally:
            await pool.aclose()

    with Serving(cfg, paths, EventBus([JsonlSink(paths.events)])) as serving:
        key = (paths.root / KEY_FILE).read_text().strip()
        url = serving.endpoint("a").base_url.removesuffix("/v1")
        # Without the key: refused, the admin endpoints too.
        assert http("GET", f"{url}/v1/models").status == 401
        refused = http("POST", f"{url}/load_lora_adapter", {"lora_name": "x", "lora_path": str(adapter)})
        assert refused.status == 401
        # agora itself sends it on every call: an adapter load and a chat.
        serving.activate("a", adapter, 1)
        assert asyncio.run(ask(serving)) == "served by a-v1"
        serving.write_servers_file()  # as `agora serve` does
        # No command line on this machine holds it (`ps` shows them to every user).
        assert not [c for c in _cmdlines() if key.encode() in c]
        # `agora run` attaching to these servers reads the key back from the run directory.
        attached = Serving(cfg, paths)
        attached.start()
        assert attached.attached
        assert asyncio.run(ask(attached)) == "served by a-v1"
        attached.stop()
    log = next(paths.logs.glob("sglang-gpu-*.log")).read_text()
    assert "server_args=ServerArgs(" in log and "api_key='<redacted>'" in log
    # Only the key file and SGLang's key config hold the key, both readable by the user alone.
    holders = sorted(p.name for p in paths.root.rglob("*") if p.is_file() and key in p.read_text())
    assert holders == [KEY_FILE, "sglang-gpu.yaml"]
    for name in holders:
        assert stat.S_IMODE((paths.root / name).stat().st_mode) == 0o600
    assert paths.events.exists() and key not in log
