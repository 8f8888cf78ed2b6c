"""Upstreams as the gateway sees them: backends, key rotation, failover.

Failover policy, per request: a 429 whose Retry-After is short waits and retries the same target
(after rotating to another key when the backend has one); a longer one moves on. 5xx, timeouts and
connection errors retry the same target a few times, then move on. 401/403 put that upstream key
in a cool-down and move on. Any other 4xx is the client's problem and goes back at once. The whole
search is bounded by a time budget and a hop limit; nothing is retried once a byte reached the
client, because this loop is only ever waiting for the first one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ..errors import (
    AuthenticationError,
    ModelwireError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
    TimeoutError,
    UpstreamUnavailableError,
)
from ..observe import Tap, redact
from ..providers.catalog import Catalog
from ..providers.codex import CodexCredentials
from ..providers.driver import WireDriver
from ..providers.hosts import Host
from ..providers.openai import OpenAI
from ..providers.retry import RetryPolicy
from ..providers.transport import Transport
from ..wires import WIRES
from .config import BackendConfig, FailoverConfig, missing_key
from .routing import Target

if TYPE_CHECKING:
    from .tracing import Tracer

T = TypeVar("T")
Driver = OpenAI | WireDriver
log = logging.getLogger("modelwire.gateway")


class KeyRing:
    """Round-robin over a backend's upstream keys, skipping keys in a cool-down."""

    __slots__ = ("_next", "_until", "keys")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys or [""]
        self._until = [0.0] * len(self.keys)
        self._next = 0

    def pick(self, now: float) -> int | None:
        n = len(self.keys)
        for step in range(n):
            i = (self._next + step) % n
            if self._until[i] <= now:
                self._next = (i + 1) % n
                return i
        return None

    def cool(self, index: int, seconds: float, now: float) -> None:
        self._until[index] = max(self._until[index], now + seconds)

    def wait(self, now: float) -> float:
        """Seconds until some key is usable again."""
        return max(0.0, min(self._until) - now)

    def available(self, now: float) -> int:
        return sum(1 for until in self._until if until <= now)

    def cooling(self, now: float) -> list[float]:
        """Seconds each key has left in a cool-down (0: usable now), for the admin view."""
        return [max(0.0, until - now) for until in self._until]


class Backend:
    """One configured upstream: where it is, how it authenticates, which wire it speaks."""

    def __init__(
        self, name: str, config: BackendConfig, catalog: Catalog, transport: Transport, tap: Tap | None = None
    ) -> None:
        self.name = name
        self.tap = tap
        self.config = config
        self.host = Host.create(config.type, config.base_url, config.api_version)
        self.profile = self.host.profile
        self.wire = WIRES[config.wire]
        self.options = self.profile.options  # what the wire's encoder needs to know of the host
        self.keys = KeyRing(config.keys())
        self.catalog = catalog
        self.transport = transport
        self.passthrough = self.profile.forwards_bodies
        self.missing_key = missing_key(config)  # set only for the zero-config default without a key
        # A signed-in route's tokens: one set per backend, shared by its drivers (and moved to the
        # store at start-up when replicas share it).
        self.credentials = (
            CodexCredentials(transport=transport) if self.profile.signs_in and not config.keys() else None
        )
        self.context_cap = config.context_cap if config.context_cap is not None else self.profile.context_cap
        self._headers = {"Content-Type": "application/json", **config.headers}
        self._drivers: dict[int, Driver] = {}
        self._key_headers: dict[int, dict[str, str]] = {}

    @property
    def chains(self) -> bool:
        """Whether the upstream itself resolves ``previous_response_id`` (and stores answers)."""
        return self.profile.stateful and self.wire.chains

    def headers(self, key_index: int, client: Mapping[bytes, bytes] | None = None) -> dict[str, str]:
        """A fresh copy of the request headers for one of the backend's keys, with the client's
        headers its wire forwards (Anthropic's version and beta flags)."""
        base = self._key_headers.get(key_index)
        if base is None:
            base = self._key_headers[key_index] = {
                **self._headers,
                **self.host.auth_headers(self.keys.keys[key_index]),
            }
        headers = dict(base)
        if client:
            for name in self.wire.client_headers:
                value = client.get(name)
                if value is not None:
                    headers[name.decode()] = value.decode("latin-1")
        return headers

    def url(self, model: str, stream: bool = False) -> str:
        """The URL of this backend's wire for ``model`` (deployment-scoped on Azure, in the path on
        Gemini)."""
        endpoint = self.wire.stream_endpoint if stream else self.wire.endpoint
        return self.host.url(endpoint, model.removeprefix("models/"))

    def driver(self, key_index: int) -> Driver:
        """A driver for translated requests: no retries or continuations of its own (failover
        decides those), no compaction (the client did not ask for it)."""
        driver = self._drivers.get(key_index)
        if driver is None:
            driver = self._drivers[key_index] = self._new_driver(self.keys.keys[key_index])
        return driver

    def context_window(self, model: str) -> int | None:
        """The context ``model`` may use through this backend (its window under any cap)."""
        return self.catalog.context_window(model, self.context_cap)

    async def list_models(self) -> list[str]:
        """The upstream's own model list, where its host has one (OpenAI's, or the Codex catalog)."""
        driver = self.driver(0)
        if not ((self.profile.lists_models or self.profile.codex_catalog) and isinstance(driver, OpenAI)):
            return []
        return await driver.list_models()

    def _new_driver(self, key: str) -> Driver:
        if self.wire.api is None:
            return WireDriver(
                host=self.host,
                wire=self.wire,
                api_key=key,
                transport=self.transport,
                catalog=self.catalog,
                timeout=self.config.timeout,
                headers=self.config.headers,
                tap=self.tap,
            )
        return OpenAI(
            api_key=key or ("" if self.profile.signs_in else "none"),
            base_url=self.config.base_url if self.host.deployment_paths else self.host.base_url,
            host=self.host.kind,
            api=self.wire.api,
            api_version=self.config.api_version,
            timeout=self.config.timeout,
            retry=RetryPolicy(max_retries=0),
            continuations=0,
            compaction=False,
            catalog=self.catalog,
            # Over SSE: the gateway's failover decides retries, which the socket's fallback would
            # duplicate, and its taps and captures read HTTP streams.
            transport="sse",
            http=self.transport,
            headers=self.config.headers,
            tap=self.tap,
            credentials=self.credentials,
            context_cap=self.context_cap,
        )


@dataclass(slots=True)
class Outcome(Generic[T]):
    value: T
    target: Target
    backend: Backend
    hops: int


Attempt = Callable[[Target, Backend, int], Awaitable[T]]


class Failover:
    """Runs one request's attempts across its route, per the policy above."""

    def __init__(
        self,
        backends: dict[str, Backend],
        policy: FailoverConfig,
        *,
        on_retry: Callable[[str], None] | None = None,
        on_failover: Callable[[str, str], None] | None = None,
        on_cooldown: Callable[[str], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.backends = backends
        self.policy = policy
        self.on_retry = on_retry or (lambda backend: None)
        self.on_failover = on_failover or (lambda a, b: None)
        self.on_cooldown = on_cooldown or (lambda backend: None)
        self.tracer = tracer  # a span per attempt, when tracing is on

    async def run(self, targets: list[Target], attempt: Attempt[T]) -> Outcome[T]:
        deadline = time.monotonic() + self.policy.budget_seconds
        hops = 0
        last: ModelwireError | None = None
        previous: str | None = None
        for target in targets:
            backend = self.backends[target.backend]
            if previous is not None and last is not None:
                self.on_failover(previous, backend.name)
            previous = backend.name
            if backend.missing_key is not None:
                last = _no_key(backend)
                continue
            tries = 0
            while hops < self.policy.max_hops:
                now = time.monotonic()
                index = backend.keys.pick(now)
                if index is None:
                    wait = backend.keys.wait(now)
                    if wait <= self.policy.wait_retry_after_max and now + wait < deadline:
                        await asyncio.sleep(wait)
                        continue
                    last = RateLimitError(
                        f"every key of backend {backend.name!r} is cooling down", retry_after=wait
                    )
                    break
                hops += 1
                span = None if self.tracer is None else self.tracer.attempt(target, backend, hops, tries)
                try:
                    return Outcome(await attempt(target, backend, index), target, backend, hops)
                except ModelwireError as err:
                    if span is not None:
                        span.failed(err)
                    err.backend, err.upstream_model, err.hops = backend.name, target.model, hops
                    last = err
                    # A client's mistake goes straight back (raised here) and is in its request's
                    # log line; only a failure the gateway works around gets a line of its own.
                    delay = self._after_failure(err, backend, index, tries, deadline)
                    log.warning(
                        "upstream attempt failed, %s: %s/%s answered %s %s: %s",
                        "moving on" if delay is None else "retrying",
                        backend.name,
                        target.model,
                        err.status,
                        type(err).__name__,
                        redact(err.message),
                    )
                finally:
                    if span is not None:
                        span.close()
                if delay is None:
                    break
                tries += 1
                self.on_retry(backend.name)
                if delay > 0:
                    await asyncio.sleep(delay)
        final = _final(last, hops)
        final.hops = hops
        if previous is not None:
            final.backend = previous
            final.upstream_model = next((t.model for t in targets if t.backend == previous), None)
        raise final

    def _after_failure(
        self, err: ModelwireError, backend: Backend, index: int, tries: int, deadline: float
    ) -> float | None:
        """Seconds to wait before retrying the same target, or None to move on. Client errors raise."""
        now = time.monotonic()
        if isinstance(err, RateLimitError):
            wait = err.retry_after if err.retry_after is not None else 1.0
            backend.keys.cool(index, wait, now)
            if backend.keys.available(now):
                return 0.0  # another key is free: rotate without waiting
            fits = wait <= self.policy.wait_retry_after_max and now + wait < deadline
            return wait if fits and tries < max(1, backend.config.max_retries) else None
        if isinstance(err, AuthenticationError | PermissionDeniedError):
            backend.keys.cool(index, self.policy.key_cooldown_seconds, now)
            self.on_cooldown(backend.name)
            return 0.0 if backend.keys.available(now) else None
        if err.retryable:
            backoff = RetryPolicy(
                max_retries=backend.config.max_retries, initial_delay=0.25, max_delay=5.0
            ).delay(tries, err)
            return backoff if backoff is not None and now + backoff < deadline else None
        if isinstance(err, ProtocolError):
            return None  # a broken upstream: try the next one
        raise err


def _no_key(backend: Backend) -> ServiceUnavailableError:
    """Sent without calling the upstream: it would only refuse, and the operator must act."""
    return ServiceUnavailableError(
        f"the gateway has no upstream key for backend {backend.name!r}: its operator must set "
        f"{backend.missing_key} (or configure backends in modelwire.yaml) and restart it",
        code="upstream_key_missing",
    )


def _final(last: ModelwireError | None, hops: int) -> ModelwireError:
    """The error a client sees when every target failed."""
    if last is None:
        return TimeoutError("no upstream answered within the gateway's failover budget")
    if isinstance(last, AuthenticationError | PermissionDeniedError):
        return UpstreamUnavailableError(
            f"the upstream refused the gateway's credentials ({last.message})", code="upstream_auth_failed"
        )
    if isinstance(last, ProtocolError):
        return ProtocolError(f"the upstream answered garbage: {last.message}", status=502)
    return last
