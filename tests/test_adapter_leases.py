"""An unloaded adapter is never named again: leases on the sglang backend (fake SGLang server,
real HTTP on 127.0.0.1).

SGLang remembers every adapter name it ever loaded, and a request naming an unloaded one loads it
again, for good. So the old adapter of a hot-swap is unloaded only after the last request that
resolved to it has finished, and no request names it after that.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agora_cli.config import Sampling, config_from_dict
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from tests.fakes.sglang_server import FakeSGLang

pytestmark = pytest.mark.integration

BASE = "org/base-a"  # hub ids pass through `prepare` unchanged


def _adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "adapters" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    return d


def test_request_held_across_a_swap_finishes_on_the_old_adapter_before_its_unload(tmp_path: Path) -> None:
    with FakeSGLang(BASE) as fake:
        cfg = config_from_dict(
            {
                "name": "sg",
                "backends": {"gpu": {"kind": "sglang", "launch": False, "urls": {BASE: fake.url}}},
                "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
                "evaluation": {"calibration": "gsm8k"},
                "client": {"max_retries": 0},
            }
        )
        events: list[dict] = []
        with Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append])) as serving:
            lora = serving.backends["gpu"].lora
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            pool = serving.client_pool()
            hi = [{"role": "user", "content": "hi"}]

            async def go() -> tuple[str, str, str]:
                fake.hold("a-v1")
                held = asyncio.create_task(pool.chat("a", hi, Sampling(max_tokens=4)))
                while ("chat", "a-v1") not in fake.calls:  # the request reached the server
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v2"), 2)
                await asyncio.to_thread(lora.finish)  # any unload started by now has answered
                after_swap = (await pool.chat("a", hi, Sampling(max_tokens=4))).text
                fake.release("a-v1")
                old = (await held).text
                await asyncio.to_thread(lora.finish)  # the unload its end started
                last = (await pool.chat("a", hi, Sampling(max_tokens=4))).text
                await pool.aclose()
                return old, after_swap, last

            old, after_swap, last = asyncio.run(go())
    assert (old, after_swap, last) == ("served by a-v1", "served by a-v2", "served by a-v2")
    timeline = fake.timeline
    assert ("unload", "a-v1") in timeline
    unload = timeline.index(("unload", "a-v1"))
    # The unload came only after the held request had answered...
    assert timeline.index(("chat-done", "a-v1")) < unload
    # ...and no request named the old adapter after it (SGLang would have loaded it again).
    assert [c for c in timeline[unload + 1 :] if c[1] == "a-v1"] == []
    assert [b["model"] for b in fake.bodies].count(f"{BASE}:a-v1") == 1
    assert list(fake.adapters) == ["a-v2"]
    assert not [e for e in events if e["kind"] == "adapter_unload_failed"]


def test_a_lease_taken_before_the_swap_keeps_the_old_name_until_it_ends(tmp_path: Path) -> None:
    """A request formed before a swap is sent with the adapter it resolved to, and that adapter is
    not unloaded until the request ends, however late it is sent."""
    with FakeSGLang(BASE) as fake:
        cfg = config_from_dict(
            {
                "name": "sg",
                "backends": {"gpu": {"kind": "sglang", "launch": False, "urls": {BASE: fake.url}}},
                "members": [{"name": n, "model": BASE, "backend": "gpu"} for n in ("a", "b")],
                "evaluation": {"calibration": "gsm8k"},
            }
        )
        with Serving(cfg, RunPaths(tmp_path / "run")) as serving:
            lora = serving.backends["gpu"].lora
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            with serving.lease("a") as ep:
                serving.activate("a", _adapter(tmp_path, "v2"), 2)
                lora.finish()
                assert ep.model == f"{BASE}:a-v1" and ep.extra_body == {"lora_path": "a-v1"}
                assert "a-v1" in fake.adapters  # still loaded: this lease may still send on it
                assert serving.endpoint("a").model == f"{BASE}:a-v2"  # new requests: the new one
            lora.finish()
            assert list(fake.adapters) == ["a-v2"]  # unloaded when the lease ended
