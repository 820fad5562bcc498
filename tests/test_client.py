"""ClientPool retries against a fake OpenAI-compatible server that fails on purpose (real HTTP)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from agora_cli.client import ClientPool, MemberLimits
from agora_cli.config import ClientSettings, Sampling
from agora_cli.errors import EndpointError
from agora_cli.events import EventBus
from agora_cli.serving.base import Endpoint
from tests.fakes.openai_server import FakeOpenAI, Reply

MSGS = [{"role": "user", "content": "2+2?"}]
SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=8)


def failing_first(n: int, failure: Reply):
    """A responder that answers `failure` to the first `n` requests, then '4'."""
    seen = {"n": 0}

    def respond(req):  # noqa: ANN001, ANN202
        seen["n"] += 1
        return failure if seen["n"] <= n else "4"

    return respond


def make_pool(fake: FakeOpenAI, max_retries: int, events: list | None = None) -> ClientPool:
    return ClientPool(
        resolve=lambda m: Endpoint(fake.url, model=m),
        limits={"a": MemberLimits(max_concurrency=4, timeout_s=10.0)},
        settings=ClientSettings(max_retries=max_retries, backoff_initial_s=0.01,
                                backoff_max_s=0.02),
        bus=EventBus([events.append]) if events is not None else EventBus(),
    )


async def _chat(pool: ClientPool):  # noqa: ANN202
    try:
        return await pool.chat("a", MSGS, SAMPLING)
    finally:
        await pool.aclose()


@pytest.mark.parametrize(
    "failure", [Reply(text="boom", status=500), Reply(text="busy", status=503),
                Reply(drop=True)],
    ids=["500", "503", "dropped-connection"],
)
def test_transient_failures_are_retried_until_success(failure: Reply) -> None:
    with FakeOpenAI(failing_first(2, failure)) as fake:
        pool = make_pool(fake, max_retries=3)
        result = asyncio.run(_chat(pool))
        received = len(fake.requests)
    assert result.text == "4"
    assert received == 3  # two failures, then the answer
    assert pool.usage["a"].retries == 2
    assert pool.usage["a"].requests == 1 and pool.usage["a"].failures == 0


def test_client_error_is_not_retried() -> None:
    with FakeOpenAI(failing_first(10, Reply(text="bad request", status=400))) as fake:
        pool = make_pool(fake, max_retries=3)
        with pytest.raises(openai.BadRequestError):
            asyncio.run(_chat(pool))
        received = len(fake.requests)
    assert received == 1
    assert pool.usage["a"].retries == 0 and pool.usage["a"].failures == 1


def test_persistent_failure_gives_up_with_endpoint_error() -> None:
    events: list[dict] = []
    with FakeOpenAI(failing_first(100, Reply(text="down", status=500))) as fake:
        pool = make_pool(fake, max_retries=2, events=events)
        with pytest.raises(EndpointError, match="unreachable after retries"):
            asyncio.run(_chat(pool))
        received = len(fake.requests)
    assert received == 3  # 1 + max_retries
    done = [e for e in events if e["kind"] == "request_done"]
    assert [e["ok"] for e in done] == [False]


def test_endpoint_is_resolved_again_on_each_attempt() -> None:
    """A hot-swap between attempts takes effect: the retry goes to the new model name."""
    with FakeOpenAI(failing_first(1, Reply(drop=True))) as fake:
        names = iter(["old", "new", "new", "new"])
        pool = ClientPool(
            resolve=lambda m: Endpoint(fake.url, model=next(names)),
            limits={"a": MemberLimits()},
            settings=ClientSettings(max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.02),
        )
        result = asyncio.run(_chat(pool))
        models = [r.model for r in fake.requests]
    assert models == ["old", "new"]
    assert result.model == "new"
