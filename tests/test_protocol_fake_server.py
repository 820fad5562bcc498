"""The scripted fake OpenAI server: real HTTP, roles, faults, concurrency."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import openai
import pytest

from agora_cli.config import Sampling
from agora_cli.errors import EndpointError
from tests.fakes.openai_server import FakeOpenAI, Reply, pool_for, scripted

SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=8)


def _msgs(text: str = "hi") -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def test_health_and_models_over_http() -> None:
    with FakeOpenAI(lambda r: "x", models=["m1", "m2"]) as fake:
        base = fake.url.removesuffix("/v1")
        with urllib.request.urlopen(base + "/health") as resp:
            assert resp.status == 200
        with urllib.request.urlopen(fake.url + "/models") as resp:
            ids = [m["id"] for m in json.load(resp)["data"]]
    assert ids == ["m1", "m2"]


async def test_roles_dispatch_and_usage() -> None:
    responder = scripted({"verify": lambda r: "VALID", "*": lambda r: f"echo {r.user}"})
    with FakeOpenAI(responder) as fake:
        pool = pool_for(fake, ["a"])
        v = await pool.chat("a", _msgs(), SAMPLING, role="verify")
        s = await pool.chat("a", _msgs("two words"), SAMPLING, role="solve")
        await pool.aclose()
    assert v.text == "VALID"
    assert s.text == "echo two words"
    assert s.prompt_tokens > 0 and s.completion_tokens == 3
    assert [r.role for r in fake.requests] == ["verify", "solve"]  # from X-Agora-Role
    assert all("agora" not in r.text for r in fake.requests)
    assert fake.requests[0].model == "a"
    assert fake.requests[0].body["max_tokens"] == 8


async def test_unknown_role_is_a_client_error() -> None:
    with FakeOpenAI(scripted({"solve": lambda r: "ok"})) as fake:
        pool = pool_for(fake, ["a"])
        with pytest.raises(openai.BadRequestError):
            await pool.chat("a", _msgs(), SAMPLING, role="vote")
        await pool.aclose()
    assert [r.role for r in fake.requests] == ["vote"]


async def test_dropped_connection_and_5xx_are_retried() -> None:
    calls = {"n": 0}

    def flaky(req):
        calls["n"] += 1
        if calls["n"] == 1:
            return Reply(drop=True)
        if calls["n"] == 2:
            return Reply(status=503, text="overloaded")
        return "finally"

    with FakeOpenAI(flaky) as fake:
        pool = pool_for(fake, ["a"], max_retries=3)
        r = await pool.chat("a", _msgs(), SAMPLING)
        await pool.aclose()
    assert r.text == "finally"
    assert len(fake.requests) == 3
    assert pool.usage["a"].retries == 2


async def test_persistent_failure_raises_endpoint_error() -> None:
    with FakeOpenAI(lambda r: Reply(status=500)) as fake:
        pool = pool_for(fake, ["a"], max_retries=1)
        with pytest.raises(EndpointError):
            await pool.chat("a", _msgs(), SAMPLING)
        await pool.aclose()
    assert len(fake.requests) == 2


async def test_hundreds_of_concurrent_requests_overlap_their_latency() -> None:
    """300 requests with 0.3 s latency each complete; the server held them all at once
    (a serial server would need 90 s and hit the pytest timeout below)."""
    with FakeOpenAI(lambda r: r.user, latency_s=0.3) as fake:
        pool = pool_for(fake, ["a"], max_concurrency=300)
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.chat("a", _msgs(f"q{i}"), SAMPLING)
                             for i in range(300))),
            timeout=60,
        )
        await pool.aclose()
    assert sorted(r.text for r in results) == sorted(f"q{i}" for i in range(300))
    assert len(fake.requests) == 300


def test_stop_is_idempotent_and_port_is_free_after() -> None:
    fake = FakeOpenAI(lambda r: "x").start()
    assert fake.port > 0
    fake.stop()
    fake.stop()
