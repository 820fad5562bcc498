"""The client pool: every model call goes through here.

One `openai.AsyncOpenAI` per member endpoint, a per-member concurrency limit, a per-request timeout,
`tenacity` retries with exponential backoff and jitter on connection errors, timeouts and 5xx (never
on 4xx), and token accounting per member. Endpoints are looked up on every attempt, so a hot-swapped
adapter takes effect between requests without losing any; each attempt holds a lease on the
endpoint it was sent to (`lease`), so the adapter it names stays loaded until it finishes.

Requests go through the client's documented low-level `post("/chat/completions", ...)` with a plain
JSON body rather than `chat.completions.create`: `create` first walks its arguments through the
SDK's type-driven transform, which leaves plain string messages unchanged but cost about 2.7 ms of
CPU per request in a profile, the largest single cost of a step's burst of 300 requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from agora_cli.config import ClientSettings, Sampling
from agora_cli.endpoint import Endpoint
from agora_cli.errors import EndpointError
from agora_cli.events import NULL_BUS, EventBus

Messages = list[dict[str, str]]


@dataclass
class ChatResult:
    member: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str
    finish_reason: str | None = None


@dataclass
class Usage:
    requests: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0  # summed request latency

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.busy_s if self.busy_s else 0.0


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts and 5xx are transient; 4xx are the caller's fault."""
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, (asyncio.TimeoutError, ConnectionError))


def _valid_utf8(text: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`) that SQLite and files refuse: a remote server's
    garbage must not crash the run, so they become '?'."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


@dataclass
class MemberLimits:
    max_concurrency: int = 8
    timeout_s: float = 600.0


@dataclass
class ClientPool:
    """Routes chat requests to members. `resolve(member)` returns the member's current endpoint;
    `lease(member)`, when given, does too, as a context manager that keeps what the endpoint names
    (an adapter) alive until the request it was resolved for has finished."""

    resolve: Callable[[str], Endpoint]
    limits: dict[str, MemberLimits]
    settings: ClientSettings = field(default_factory=ClientSettings)
    bus: EventBus = NULL_BUS
    usage: dict[str, Usage] = field(default_factory=dict)
    # member -> fields added to each of its requests (config `chat_template_kwargs`)
    extra_body: dict[str, dict] = field(default_factory=dict)
    lease: Callable[[str], AbstractContextManager[Endpoint]] | None = None

    def __post_init__(self) -> None:
        self._clients: dict[tuple[str, str, str], openai.AsyncOpenAI] = {}
        self._sems: dict[str, asyncio.Semaphore] = {}
        # member -> its last EndpointError, cleared by its next success: lets the loop refuse to
        # commit a step whose missing work is due to a member that stays down.
        self.unreachable: dict[str, EndpointError] = {}

    def _client(self, member: str, ep: Endpoint) -> openai.AsyncOpenAI:
        # One client (and connection pool) per member and endpoint: httpx scans every connection
        # of a pool each time it assigns a request, so one pool shared by a whole ensemble's
        # bursts (100+ requests in flight) costs quadratic CPU on the event loop.
        key = (member, ep.base_url, ep.api_key)
        if key not in self._clients:
            # Retries are ours (tenacity), so the SDK's own are off.
            self._clients[key] = openai.AsyncOpenAI(base_url=ep.base_url, api_key=ep.api_key, max_retries=0)
        return self._clients[key]

    def _lease(self, member: str) -> AbstractContextManager[Endpoint]:
        return self.lease(member) if self.lease is not None else nullcontext(self.resolve(member))

    def _sem(self, member: str) -> asyncio.Semaphore:
        if member not in self._sems:
            self._sems[member] = asyncio.Semaphore(self.limits[member].max_concurrency)
        return self._sems[member]

    async def chat(
        self, member: str, messages: Messages, sampling: Sampling, *, role: str = "chat"
    ) -> ChatResult:
        """One chat completion for `member`, retried on transient failures.

        Raises EndpointError when the member stays unreachable, and openai.APIStatusError (4xx)
        when the request itself is wrong.
        """
        usage = self.usage.setdefault(member, Usage())
        limit = self.limits[member]
        attempt_no = 0
        async with self._sem(member):
            start = time.perf_counter()
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_retryable),
                    stop=stop_after_attempt(self.settings.max_retries + 1),
                    # Exponential from backoff_initial_s, jitter of the same scale (tenacity's
                    # wait_exponential_jitter adds up to 1 s of jitter whatever the initial wait).
                    wait=wait_exponential(
                        multiplier=self.settings.backoff_initial_s, max=self.settings.backoff_max_s
                    )
                    + wait_random(0, self.settings.backoff_initial_s),
                    reraise=True,
                ):
                    with attempt:
                        attempt_no += 1
                        if attempt_no > 1:
                            usage.retries += 1
                        # Resolved per attempt (picks up hot-swaps) and sent with what it
                        # resolved to, which the lease keeps loaded until the attempt ends.
                        with self._lease(member) as ep:
                            t0 = time.perf_counter()
                            resp = await self._client(member, ep).post(
                                "/chat/completions",
                                cast_to=ChatCompletion,
                                body={
                                    "model": ep.model,
                                    "messages": messages,
                                    "temperature": sampling.temperature,
                                    "top_p": sampling.top_p,
                                    "max_tokens": sampling.max_tokens,
                                    **self.extra_body.get(member, {}),
                                    **ep.extra_body,  # e.g. SGLang's `lora_path`
                                },
                                # The role travels out of band (logs, test fakes); servers ignore it.
                                options={"timeout": limit.timeout_s, "headers": {"X-Agora-Role": role}},
                            )
                            latency = time.perf_counter() - t0
            except Exception as exc:
                usage.failures += 1
                self.bus.emit(
                    "request_done",
                    member=member,
                    role=role,
                    ok=False,
                    latency_s=round(time.perf_counter() - start, 3),
                    error=type(exc).__name__,
                )
                if is_retryable(exc):
                    ep = self.resolve(member)
                    err = EndpointError(member, ep.base_url, f"{type(exc).__name__}: {exc}")
                    self.unreachable[member] = err
                    raise err from exc
                raise
        self.unreachable.pop(member, None)
        choice = resp.choices[0] if resp.choices else None
        text = _valid_utf8((choice.message.content if choice and choice.message else None) or "")
        pt = resp.usage.prompt_tokens if resp.usage else 0
        ct = resp.usage.completion_tokens if resp.usage else 0
        cached = _cached_tokens(resp.usage)
        usage.requests += 1
        usage.prompt_tokens += pt or 0
        usage.completion_tokens += ct or 0
        usage.busy_s += latency
        self.bus.emit(
            "request_done",
            member=member,
            role=role,
            ok=True,
            latency_s=round(latency, 3),
            prompt_tokens=pt,
            completion_tokens=ct,
            **({"cached_tokens": cached} if cached is not None else {}),
        )
        return ChatResult(
            member=member,
            text=text,
            prompt_tokens=pt or 0,
            completion_tokens=ct or 0,
            latency_s=latency,
            model=ep.model,
            finish_reason=choice.finish_reason if choice else None,
        )

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()


def _cached_tokens(usage: Any) -> int | None:
    """Prompt tokens the server answered from its prefix cache, when it reports them
    (`usage.prompt_tokens_details.cached_tokens`: vLLM with --enable-prompt-tokens-details)."""
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    cached = getattr(details, "cached_tokens", None) if details else None
    return cached if isinstance(cached, int) else None
