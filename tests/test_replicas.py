"""Several replicas of one base model behind one sglang backend (`launch: false` with a URL list):
fake SGLang servers, real HTTP on 127.0.0.1.

Each request goes to the least busy replica holding its member's live adapter; an activation
loads the new adapter on every replica before any request names it; a replica that is down at
swap time takes no request until it has loaded the live adapters again. Adapter names are never
reused (vLLM would serve a reloaded name from stale prefix-cache blocks).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agora_cli.client import ClientPool
from agora_cli.config import Sampling, config_from_dict
from agora_cli.errors import EndpointError
from agora_cli.events import EventBus
from agora_cli.paths import RunPaths
from agora_cli.serving import Serving
from tests.fakes.sglang_server import FakeSGLang

pytestmark = pytest.mark.integration

BASE = "org/base-a"  # hub ids pass through `prepare` unchanged
HI = [{"role": "user", "content": "hi"}]
SHORT = Sampling(max_tokens=4)


def _adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / "adapters" / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    return d


def _serving(tmp_path: Path, fakes: list[FakeSGLang], events: list[dict]) -> Serving:
    cfg = config_from_dict(
        {
            "name": "replicas",
            "backends": {"gpu": {"kind": "sglang", "launch": False, "urls": {BASE: [f.url for f in fakes]}}},
            "members": [
                {"name": n, "model": BASE, "backend": "gpu", "max_concurrency": 12} for n in ("a", "b")
            ],
            "evaluation": {"calibration": "gsm8k"},
            "client": {"max_retries": 3, "backoff_initial_s": 0.05},
        }
    )
    return Serving(cfg, RunPaths(tmp_path / "run"), EventBus([events.append]))


def _chats(fake: FakeSGLang) -> list[str]:
    """The adapters the chat requests that reached `fake` named, in order."""
    return [name for kind, name in fake.calls if kind == "chat"]


async def _burst(pool: ClientPool, n: int) -> list[str]:
    return [r.text for r in await asyncio.gather(*(pool.chat("a", HI, SHORT) for _ in range(n)))]


def _answers(serving: Serving, n: int) -> list[str]:
    """`n` concurrent requests for member a through a fresh client pool: the texts."""
    pool = serving.client_pool()

    async def go() -> list[str]:
        texts = await _burst(pool, n)
        await pool.aclose()
        return texts

    return asyncio.run(go())


def _assert_synced_before_traffic(fake: FakeSGLang, name: str) -> None:
    """No request on `fake` named an adapter it had not loaded, and every request naming `name`
    came after its load there."""
    assert [c for c in fake.calls if c[0] == "chat-rejected"] == []
    calls = fake.calls
    if ("chat", name) in calls:
        assert ("load", name) in calls
        assert calls.index(("load", name)) < calls.index(("chat", name))


def test_requests_spread_over_replicas_by_requests_in_flight(tmp_path: Path) -> None:
    fakes = [FakeSGLang(BASE, latency_s=0.05).start() for _ in range(3)]
    try:
        with _serving(tmp_path, fakes, []) as serving:
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            pool = serving.client_pool()

            async def go() -> list[str]:
                texts = [t for _ in range(5) for t in await _burst(pool, 12)]
                await pool.aclose()
                return texts

            texts = asyncio.run(go())
    finally:
        for f in fakes:
            f.stop()
    assert texts == ["served by a-v1"] * 60
    counts = [len(_chats(f)) for f in fakes]
    assert sum(counts) == 60
    # 12 in flight at a time over 3 replicas: the least busy one takes each, so 4 + 4 + 4 per
    # burst when all are equally fast; a bound of half the fair share leaves room for jitter.
    assert min(counts) >= 10, counts
    for f in fakes:  # the adapter was loaded on every replica, each before its first request
        assert f.loads == ["a-v1"]
        _assert_synced_before_traffic(f, "a-v1")


def test_swap_under_steady_load_loads_everywhere_before_the_switch(tmp_path: Path) -> None:
    fakes = [FakeSGLang(BASE, latency_s=0.01).start() for _ in range(2)]
    events: list[dict] = []
    try:
        with _serving(tmp_path, fakes, events) as serving:
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            fakes[1].load_delay_s = 0.3  # the second replica loads slowly: a wide window
            pool = serving.client_pool()
            switched = threading.Event()
            results: list[tuple[bool, str]] = []  # (sent after the activation returned, reply)

            async def worker(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    after = switched.is_set()
                    results.append((after, (await pool.chat("a", HI, SHORT)).text))

            async def go() -> None:
                stop = asyncio.Event()
                workers = [asyncio.create_task(worker(stop)) for _ in range(6)]
                await asyncio.to_thread(serving.activate, "a", _adapter(tmp_path, "v2"), 2)
                switched.set()
                await _burst(pool, 12)  # at least one full round after the switch
                stop.set()
                await asyncio.gather(*workers)  # a failed request fails the test here
                await asyncio.to_thread(serving.backends["gpu"].lora.finish)
                results.extend((True, t) for t in await _burst(pool, 12))
                await pool.aclose()

            asyncio.run(go())
    finally:
        for f in fakes:
            f.stop()
    after = [text for was_after, text in results if was_after]
    assert after and set(after) == {"served by a-v2"}
    for f in fakes:
        assert f.loads == ["a-v1", "a-v2"]  # each version under its own name, once per replica
        assert "a-v2" in _chats(f)  # both replicas served the new adapter
        _assert_synced_before_traffic(f, "a-v2")
        assert list(f.adapters) == ["a-v2"]  # the old one unloaded on each replica...
        unload = f.calls.index(("unload", "a-v1"))
        assert ("chat", "a-v1") not in f.calls[unload:]  # ...after its last request there
    assert not [e for e in events if e["kind"] in ("replica_down", "replica_out", "adapter_unload_failed")]


def test_a_replica_down_at_swap_time_is_synced_before_it_takes_traffic(tmp_path: Path) -> None:
    first, second = FakeSGLang(BASE).start(), FakeSGLang(BASE).start()
    back: FakeSGLang | None = None
    events: list[dict] = []
    try:
        with _serving(tmp_path, [first, second], events) as serving:
            backend = serving.backends["gpu"]
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            second.stop()  # the replica dies; its adapters die with it
            serving.activate("a", _adapter(tmp_path, "v2"), 2)  # it cannot load: it leaves routing
            pool = serving.client_pool()

            async def go() -> tuple[list[str], list[str], list[str]]:
                nonlocal back
                while_down = await _burst(pool, 12)
                back = FakeSGLang(BASE, port=second.port).start()  # restarted, holding nothing
                back.load_delay_s = 0.3  # requests keep coming while it syncs
                sync = asyncio.create_task(asyncio.to_thread(backend.check_replicas))
                while ("load", "a-v2") not in back.calls:  # requests arrive while it loads
                    await asyncio.sleep(0.01)
                during = await _burst(pool, 12)
                await sync
                after = await _burst(pool, 12)
                await pool.aclose()
                return while_down, during, after

            while_down, during, after = asyncio.run(go())
    finally:
        first.stop()
        if back is not None:
            back.stop()
    assert while_down + during + after == ["served by a-v2"] * 36  # no request failed
    assert [e["url"] for e in events if e["kind"] == "replica_down"] == [second.url]
    assert [e["url"] for e in events if e["kind"] == "replica_synced"] == [second.url]
    assert back is not None
    assert back.loads == ["a-v2"]  # only the live version: a-v1 is never loaded again
    _assert_synced_before_traffic(back, "a-v2")
    assert "a-v2" in _chats(back)  # it takes traffic again once synced


def test_a_lone_server_that_restarts_takes_requests_again_without_a_check(tmp_path: Path) -> None:
    """With one server there is nowhere else to go: a refused connection does not take it out of
    routing (the client's retries wait for it), as before replicas existed."""
    server = FakeSGLang(BASE).start()
    back: FakeSGLang | None = None
    try:
        with _serving(tmp_path, [server], []) as serving:
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            pool = serving.client_pool()

            async def go() -> tuple[str, str]:
                nonlocal back
                server.stop()
                with pytest.raises(EndpointError):
                    await pool.chat("a", HI, SHORT)
                back = FakeSGLang(BASE, port=server.port).start()
                back.adapters["a-v1"] = str(_adapter(tmp_path, "v1-again"))  # as a restart that reloads it
                text = (await pool.chat("a", HI, SHORT)).text
                await pool.aclose()
                return serving.endpoint("a").base_url, text

            url, text = asyncio.run(go())
    finally:
        if back is not None:
            back.stop()
    assert (url, text) == (f"{server.url}/v1", "served by a-v1")


def test_a_replica_that_restarted_unnoticed_is_synced_before_it_takes_traffic(tmp_path: Path) -> None:
    """A server restarted at the same URL between two checks, before any request saw it down,
    answers its readiness check but has lost its adapters: its `GET /v1/models` no longer lists
    what agora loaded there, so the check takes it out and syncs it before it takes requests."""
    first, second = FakeSGLang(BASE).start(), FakeSGLang(BASE).start()
    back: FakeSGLang | None = None
    events: list[dict] = []
    try:
        with _serving(tmp_path, [first, second], events) as serving:
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            second.stop()
            back = FakeSGLang(BASE, port=second.port).start()  # back at once, holding nothing
            serving.backends["gpu"].check_replicas()  # type: ignore[attr-defined]
            texts = _answers(serving, 12)
    finally:
        first.stop()
        if back is not None:
            back.stop()
    assert texts == ["served by a-v1"] * 12  # no request named an adapter the server lacked
    assert back is not None and back.loads == ["a-v1"]
    _assert_synced_before_traffic(back, "a-v1")
    assert "a-v1" in _chats(back)  # and it takes requests again
    assert [e["url"] for e in events if e["kind"] == "replica_down"] == [second.url]
    assert [e["url"] for e in events if e["kind"] == "replica_synced"] == [second.url]


def test_a_replica_whose_listing_fails_is_not_taken_for_restarted(tmp_path: Path) -> None:
    """A busy server may fail `GET /v1/models` (an error status, a timeout) while it still holds
    every adapter: no listing says nothing was lost, so the check leaves the replica in routing
    and loads nothing again."""
    first, second = FakeSGLang(BASE).start(), FakeSGLang(BASE).start()
    events: list[dict] = []
    try:
        with _serving(tmp_path, [first, second], events) as serving:
            serving.activate("a", _adapter(tmp_path, "v1"), 1)
            second.models_status = 503
            serving.backends["gpu"].check_replicas()  # type: ignore[attr-defined]
            texts = _answers(serving, 12)
    finally:
        first.stop()
        second.stop()
    assert texts == ["served by a-v1"] * 12
    assert [e for e in events if e["kind"] in ("replica_down", "replica_synced")] == []
    assert second.loads == ["a-v1"] and "a-v1" in _chats(second)
