"""Driver behaviour 7: transport and retries, against a real loopback server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import modelwire as mw
from modelwire.observe import RetryScheduled
from modelwire.providers.transport import AiohttpTransport

from .driver_fixtures import Recorder, collect, driver
from .fake_upstream import FakeUpstream, Reply


async def test_429_honours_retry_after_ms(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = driver(upstream, on_event=events)
    upstream.script(Reply.error(429, "slow down", headers={"retry-after-ms": "150"}), Reply.text("ok"))
    started = time.monotonic()
    assert (await client.complete(model="gpt-4.1", messages=[mw.user("q")])).text == "ok"
    assert time.monotonic() - started >= 0.15
    (retry,) = events.of(RetryScheduled)
    assert retry.delay >= 0.15 and isinstance(retry.error, mw.RateLimitError)
    await client.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        Reply.error(500),
        Reply.error(503),
        Reply.error(408),
        Reply.error(409),
        Reply.html(403),
        Reply.html(502),
    ],
)
async def test_transient_failures_are_retried(upstream: FakeUpstream, failure: Reply) -> None:
    client = driver(upstream)
    upstream.script(failure, Reply.text("recovered"))
    assert (await client.complete(model="gpt-4.1", messages=[mw.user("q")])).text == "recovered"
    assert len(upstream.requests) == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, mw.InvalidRequestError),
        (401, mw.AuthenticationError),
        (403, mw.PermissionDeniedError),
        (404, mw.NotFoundError),
        (422, mw.InvalidRequestError),
    ],
)
async def test_client_errors_fail_at_once(upstream: FakeUpstream, status: int, kind: type) -> None:
    client = driver(upstream)
    upstream.script(Reply.error(status, "nope", code="some_code"))
    with pytest.raises(kind) as info:
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert len(upstream.requests) == 1
    err = info.value
    assert err.status == status and err.code == "some_code" and "nope" in err.message
    await client.aclose()


async def test_error_carries_request_id_and_retry_after(upstream: FakeUpstream) -> None:
    client = driver(upstream, max_retries=0, retry=None)
    upstream.script(Reply.error(429, "quota", headers={"retry-after": "7", "x-request-id": "req_abc"}))
    with pytest.raises(mw.RateLimitError) as info:
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert info.value.retry_after == 7.0 and info.value.request_id == "req_abc" and info.value.status == 429
    await client.aclose()


async def test_context_length_and_content_filter_are_classified(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.error(400, "too long", code="context_length_exceeded"))
    with pytest.raises(mw.ContextLengthError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    upstream.script(Reply.error(400, "filtered", code="content_filter"))
    with pytest.raises(mw.ContentFilterError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    await client.aclose()


async def test_a_server_wait_beyond_the_cap_fails_at_once(upstream: FakeUpstream) -> None:
    client = driver(upstream, retry=mw.RetryPolicy(max_retries=5, initial_delay=0.01, max_delay=60))
    upstream.script(Reply.error(429, "come back in an hour", headers={"retry-after": "3600"}))
    started = time.monotonic()
    with pytest.raises(mw.RateLimitError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert time.monotonic() - started < 1 and len(upstream.requests) == 1
    await client.aclose()


async def test_x_should_retry_overrides_the_status(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.error(500, "do not retry", headers={"x-should-retry": "false"}))
    with pytest.raises(mw.UpstreamUnavailableError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert len(upstream.requests) == 1
    await client.aclose()


async def test_retries_give_up_after_the_limit(upstream: FakeUpstream) -> None:
    client = driver(upstream, retry=mw.RetryPolicy(max_retries=2, initial_delay=0.01))
    upstream.script(*[Reply.error(503)] * 5)
    with pytest.raises(mw.UpstreamUnavailableError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert len(upstream.requests) == 3
    await client.aclose()


async def test_per_attempt_timeout(upstream: FakeUpstream) -> None:
    client = driver(upstream, timeout=0.2, retry=mw.RetryPolicy(max_retries=1, initial_delay=0.01))
    upstream.script(Reply.delay(1.0), Reply.delay(1.0))
    with pytest.raises(mw.TimeoutError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert len(upstream.requests) == 2
    await client.aclose()


async def test_overall_deadline(upstream: FakeUpstream) -> None:
    client = driver(upstream, deadline=0.3, retry=mw.RetryPolicy(max_retries=5, initial_delay=0.2))
    upstream.script(*[Reply.error(503)] * 6)
    started = time.monotonic()
    with pytest.raises(mw.TimeoutError, match="deadline"):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert time.monotonic() - started < 0.6
    await client.aclose()


async def test_connection_refused_is_upstream_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = mw.OpenAI(
        api_key="k",
        base_url=f"http://127.0.0.1:{port}/v1",
        transport=AiohttpTransport(),
        retry=mw.RetryPolicy(max_retries=1, initial_delay=0.01),
    )
    with pytest.raises(mw.UpstreamUnavailableError, match="cannot connect"):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    await client.aclose()


async def test_stream_failure_before_any_byte_is_retried(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.error(503), Reply.text("streamed ok"))
    events = await collect(client.stream(model="gpt-4.1", messages=[mw.user("q")]))
    assert events and len(upstream.requests) == 2
    await client.aclose()


async def test_garbage_answer_is_a_protocol_error(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.garbage())
    with pytest.raises(mw.ProtocolError, match="not JSON"):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    upstream.script(Reply.truncated())
    with pytest.raises(mw.ProtocolError):
        await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    await client.aclose()


async def test_one_pooled_session_per_event_loop(upstream: FakeUpstream) -> None:
    transport = AiohttpTransport()
    client = driver(upstream, http=transport)
    await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    session = transport.session()
    await asyncio.gather(*[client.complete(model="gpt-4.1", messages=[mw.user("q")]) for _ in range(5)])
    assert transport.session() is session
    await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    # Keep-alive: seven requests, but the sequential ones reused a pooled connection.
    peers = [r.peer for r in upstream.requests]
    assert all(peers) and len(set(peers)) < len(peers) and peers[-1] in peers[:-1]
    await client.aclose()
    assert session.closed
