"""ClientPool retries against a fake OpenAI-compatible server that fails on purpose (real HTTP)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from agora_cli.client import ClientPool, MemberLimits
from agora_cli.config import ClientSettings, Sampling
from agora_cli.endpoint import Endpoint
from agora_cli.errors import EndpointError
from agora_cli.events import EventBus
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
        settings=ClientSettings(max_retries=max_retries, backoff_initial_s=0.01, backoff_max_s=0.02),
        bus=EventBus([events.append]) if events is not None else EventBus(),
    )


async def _chat(pool: ClientPool):  # noqa: ANN202
    try:
        return await pool.chat("a", MSGS, SAMPLING)
    finally:
        await pool.aclose()


@pytest.mark.integration
@pytest.mark.parametrize(
    "failure",
    [Reply(text="boom", status=500), Reply(text="busy", status=503), Reply(drop=True)],
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


@pytest.mark.integration
def test_client_error_is_not_retried() -> None:
    with FakeOpenAI(failing_first(10, Reply(text="bad request", status=400))) as fake:
        pool = make_pool(fake, max_retries=3)
        with pytest.raises(openai.BadRequestError):
            asyncio.run(_chat(pool))
        received = len(fake.requests)
    assert received == 1
    assert pool.usage["a"].retries == 0 and pool.usage["a"].failures == 1


@pytest.mark.integration
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


@pytest.mark.integration
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


# ----------------------------------------------------------------------------- openai backend


@pytest.mark.integration
def test_openai_backend_key_is_used_but_never_written(
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    import json

    from agora_cli.config import config_from_dict
    from agora_cli.events import read_events
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    secret = "sk-test-do-not-leak-1234"
    monkeypatch.setenv("AGORA_TEST_KEY", secret)
    with FakeOpenAI(lambda req: "4") as fake:
        cfg = config_from_dict(
            {
                "name": "remote",
                "backends": {
                    "remote": {"kind": "openai", "base_url": fake.url, "api_key_env": "AGORA_TEST_KEY"}
                },
                "members": [
                    {"name": "a", "model": "gpt-x", "backend": "remote"},
                    {"name": "b", "model": "gpt-y", "backend": "remote"},
                ],
                "ablations": {"lora": False},
                "evaluation": {"calibration": "gsm8k"},
                "protocol": {"generators_per_step": 2},
            }
        )
        paths = RunPaths(tmp_path / "run")
        from agora_cli.events import JsonlSink

        sink = JsonlSink(paths.events)
        with Serving(cfg, paths, EventBus([sink])) as serving:
            serving.write_servers_file()
            servers_file = paths.servers.read_text()
            pool = serving.client_pool()
            result = asyncio.run(_chat_member(pool, "b"))
            reprs = repr(serving.endpoint("a")) + repr(serving.backends["remote"])
            lines = serving.describe()
            in_memory = serving.endpoint("a").api_key
        sink.close()
    assert in_memory == secret  # used for requests, held only in memory
    assert result.text == "4" and fake.requests[0].model == "gpt-y"
    assert secret not in servers_file and secret not in reprs and secret not in "".join(lines)
    assert secret not in json.dumps(read_events(paths.events))


@pytest.mark.unit
def test_openai_backend_without_its_key_is_a_clear_error(
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    from agora_cli.config import config_from_dict
    from agora_cli.errors import ServerError
    from agora_cli.paths import RunPaths
    from agora_cli.serving import Serving

    monkeypatch.delenv("AGORA_MISSING_KEY", raising=False)
    cfg = config_from_dict(
        {
            "name": "remote",
            "backends": {
                "remote": {
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "AGORA_MISSING_KEY",
                }
            },
            "members": [
                {"name": "a", "model": "x", "backend": "remote"},
                {"name": "b", "model": "y", "backend": "remote"},
            ],
            "ablations": {"lora": False},
            "evaluation": {"calibration": "gsm8k"},
            "protocol": {"generators_per_step": 2},
        }
    )
    with pytest.raises(ServerError, match=r"\$AGORA_MISSING_KEY, which is not set"):
        Serving(cfg, RunPaths(tmp_path)).start()


async def _chat_member(pool: ClientPool, member: str):  # noqa: ANN202
    try:
        return await pool.chat(member, MSGS, SAMPLING)
    finally:
        await pool.aclose()


@pytest.mark.integration
def test_role_travels_in_a_header_never_in_the_prompt_and_usage_is_counted() -> None:
    """What the client sends: the role as X-Agora-Role, the prompt untouched, the member's model
    and max_tokens in the body; what it counts: tokens per member."""
    sys_user = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two words"}]
    with FakeOpenAI(lambda r: f"{r.role}: {r.user}") as fake:
        pool = make_pool(fake, max_retries=0)

        async def go():  # noqa: ANN202
            try:
                return (
                    await pool.chat("a", sys_user, SAMPLING, role="verify"),
                    await pool.chat("a", sys_user, SAMPLING),
                )
            finally:
                await pool.aclose()

        verify, plain = asyncio.run(go())
    assert verify.text == "verify: two words" and plain.text == "chat: two words"
    assert [r.role for r in fake.requests] == ["verify", "chat"]
    assert all(r.messages == sys_user for r in fake.requests)  # nothing added to the prompt
    assert fake.requests[0].model == "a" and fake.requests[0].body["max_tokens"] == 8
    assert verify.completion_tokens == 3 and verify.prompt_tokens > 0
    usage = pool.usage["a"]
    assert usage.requests == 2
    assert usage.completion_tokens == verify.completion_tokens + plain.completion_tokens


@pytest.mark.integration
def test_prefix_cache_hits_the_server_reports_are_recorded_per_request() -> None:
    """A server reporting usage.prompt_tokens_details.cached_tokens (vLLM with
    --enable-prompt-tokens-details) gets them into the request_done event; one that does not
    report them gets no such field (not a made-up 0)."""
    events: list = []
    replies = iter([Reply(text="4", cached_tokens=7), Reply(text="4")])
    with FakeOpenAI(lambda r: next(replies)) as fake:
        pool = make_pool(fake, max_retries=0, events=events)

        async def go():  # noqa: ANN202
            try:
                await pool.chat("a", MSGS, SAMPLING, role="verify")
                await pool.chat("a", MSGS, SAMPLING, role="vote")
            finally:
                await pool.aclose()

        asyncio.run(go())
    done = [e for e in events if e["kind"] == "request_done"]
    assert [(e["role"], e.get("cached_tokens")) for e in done] == [("verify", 7), ("vote", None)]
    assert "cached_tokens" not in done[1]
