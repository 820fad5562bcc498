"""A router in front of a base model's replicas (`router_urls`): fake SGLang servers behind a fake
round-robin router, real HTTP on 127.0.0.1.

Chat requests go through the router, naming the member's live adapter, with the servers' key;
adapter loads, unloads and listings go to each replica directly and never to the router. Since
agora does not learn which replica the router picked, a routed request keeps its adapter loaded
on every replica until it ends.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agora_cli.config import Sampling, config_from_dict
from agora_cli.errors import ConfigError
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from tests.fakes.router import FakeRouter
from tests.fakes.sglang_server import FakeSGLang

pytestmark = pytest.mark.integration

BASE = "org/base-a"  # hub ids pass through `prepare` unchanged
HI = [{"role": "user", "content": "hi"}]
SHORT = Sampling(max_tokens=4)
KEY_ENV = "AGORA_TEST_ROUTER_KEY"


def _adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "adapters" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    return d


def _config(urls: list[str], router: str, **backend: object) -> dict:
    return {
        "name": "routed",
        "backends": {
            "gpu": {
                "kind": "sglang",
                "launch": False,
                "api_key_env": KEY_ENV,
                "urls": {BASE: urls} if urls else {},
                "router_urls": {BASE: router},
                **backend,
            }
        },
        "members": [{"name": n, "model": BASE, "backend": "gpu", "max_concurrency": 12} for n in ("a", "b")],
        "evaluation": {"calibration": "gsm8k"},
        "client": {"max_retries": 3, "backoff_initial_s": 0.05},
    }


def _serving(tmp_path: Path, fakes: list[FakeSGLang], router: FakeRouter, events: list[dict]) -> Serving:
    cfg = config_from_dict(_config([f.url for f in fakes], router.url))
    return Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append]))


def _wait_for(condition: object, what: str) -> None:
    """Poll `condition()` until true; a deadline only turns a hang into a failure."""
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_requests_go_through_the_router_and_control_calls_never_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "k-router-test")
    fakes = [FakeSGLang(BASE, api_key="k-router-test").start() for _ in range(2)]
    router = FakeRouter([f.url for f in fakes]).start()
    events: list[dict] = []
    try:
        with _serving(tmp_path, fakes, router, events) as serving:
            pool = serving.client_pool()

            async def burst() -> list[str]:
                return [r.text for r in await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(6)))]

            async def go() -> list[str]:
                await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v1"), 1)
                texts = await burst()
                await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v2"), 2)
                texts += await burst()
                await asyncio.to_thread(serving.backends["gpu"].lora.finish)  # type: ignore[attr-defined]
                assert serving.health()  # the replica check: each replica, directly
                await pool.aclose()
                return texts

            texts = asyncio.run(go())
            endpoint = serving.endpoint("a")
    finally:
        router.stop()
        for f in fakes:
            f.stop()
    assert texts == ["served by a-v1"] * 6 + ["served by a-v2"] * 6
    assert endpoint.base_url == f"{router.url}/v1"
    # The router saw the 12 chat requests and nothing else, and passed them on in turn.
    assert router.log == [("POST", "/v1/chat/completions", f.url) for _ in range(6) for f in fakes]
    for f in fakes:
        assert f.loads == ["a-v1", "a-v2"]  # each load went to each replica directly...
        assert ("unload", "a-v1") in f.calls  # ...and each unload too
        assert [c for c in f.calls if c[0] == "chat"] == [("chat", "a-v1")] * 3 + [("chat", "a-v2")] * 3
        assert [c for c in f.calls if c[0] in ("unauthorized", "chat-rejected")] == []  # key forwarded
    assert not [e for e in events if e["kind"] in ("replica_down", "replica_out", "adapter_unload_failed")]


def test_an_old_adapter_stays_on_every_replica_while_a_routed_request_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request with a-v1 is held open on the second replica (the router starts there; agora's
    own pick would be the first) across the switch to a-v2: no replica unloads a-v1 before it
    ends, and each does after."""
    monkeypatch.setenv(KEY_ENV, "k-router-test")
    fakes = [FakeSGLang(BASE, api_key="k-router-test").start() for _ in range(2)]
    router = FakeRouter([f.url for f in fakes], start=1).start()
    try:
        with _serving(tmp_path, fakes, router, []) as serving:
            lora = serving.backends["gpu"].lora  # type: ignore[attr-defined]
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            for f in fakes:
                f.hold("a-v1")
            pool = serving.client_pool()

            async def go() -> tuple[str, list[list[str]]]:
                request = asyncio.create_task(pool.chat("a", HI, SHORT))
                await asyncio.to_thread(_wait_for, lambda: ("chat", "a-v1") in fakes[1].calls, "the request")
                await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v2"), 2)
                await asyncio.to_thread(lora.finish)  # every unload started so far has answered
                during = [sorted(f.adapters) for f in fakes]
                for f in fakes:
                    f.release("a-v1")
                text = (await request).text
                await asyncio.to_thread(lora.finish)
                await pool.aclose()
                return text, during

            text, during = asyncio.run(go())
    finally:
        router.stop()
        for f in fakes:
            f.stop()
    assert router.chats == [fakes[1].url]
    assert text == "served by a-v1"  # the held request finished on the adapter it named
    assert during == [["a-v1", "a-v2"], ["a-v1", "a-v2"]]  # a-v1 kept on both while it ran
    for f in fakes:
        assert sorted(f.adapters) == ["a-v2"]  # then unloaded on each replica
    served = fakes[1].timeline
    assert served.index(("chat-done", "a-v1")) < served.index(("unload", "a-v1"))


def test_a_router_config_validates_and_a_bad_one_lists_its_problems() -> None:
    urls = ["http://127.0.0.1:30001", "http://127.0.0.1:30002"]
    cfg = config_from_dict(_config(urls, "https://router.example:30000/"))
    assert cfg.backends["gpu"].router_urls == {BASE: "https://router.example:30000/"}  # type: ignore[union-attr]

    with pytest.raises(ConfigError) as err:
        config_from_dict(_config(urls, "router.example:30000"))
    assert [p for p, _ in err.value.problems] == [f"backends.gpu.router_urls.{BASE}"]
    assert "not an http:// or https:// URL" in err.value.problems[0][1]

    with pytest.raises(ConfigError) as err:  # one replica: nothing for a router to choose from
        config_from_dict(_config(urls[:1], "http://router:30000"))
    assert err.value.problems == [
        (
            f"backends.gpu.router_urls.{BASE}",
            f"a router needs several replicas of {BASE!r}; list them under backends.gpu.urls",
        )
    ]

    with pytest.raises(ConfigError) as err:  # launched: one server per base model without a cluster
        config_from_dict(_config([], "http://router:30000", launch=True))
    assert [p for p, _ in err.value.problems] == [f"backends.gpu.router_urls.{BASE}"]
    assert "cluster.backends.gpu.replicas: 2 or more" in err.value.problems[0][1]
