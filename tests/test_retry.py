"""Retry policy: backoff, server-requested waits and their limits (driver behaviour 7)."""

from __future__ import annotations

import email.utils
import time

import pytest

from modelwire.errors import InvalidRequestError, RateLimitError, UpstreamUnavailableError, from_response
from modelwire.providers.retry import RetryPolicy, retry_after


def test_retry_after_headers_in_order_of_precedence() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"x-ms-retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after": "3"}) == 3.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (retry_after({"retry-after": when}) or 0) <= 31
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_backoff_doubles_from_one_second_to_the_cap() -> None:
    policy = RetryPolicy()
    error = UpstreamUnavailableError("down")
    waits = [policy.delay(n, error) for n in range(5)]
    for n, wait in enumerate(waits):
        assert wait is not None and 0.75 * 2**n <= wait <= 2**n
    capped = RetryPolicy(max_retries=20).delay(10, error)
    assert capped is not None and 45 <= capped <= 60
    assert policy.delay(5, error) is None  # five retries by default


@pytest.mark.parametrize("wait", [0.02, 1.0, 30.0])
def test_jitter_never_shortens_a_server_wait(wait: float) -> None:
    error = RateLimitError("slow down", retry_after=wait)
    for _ in range(50):
        delay = RetryPolicy().delay(0, error)
        assert delay is not None and wait <= delay <= wait + min(1.0, wait * 0.1)


def test_a_server_wait_beyond_the_cap_fails_at_once() -> None:
    assert RetryPolicy().delay(0, RateLimitError("quota", retry_after=3600)) is None


def test_which_statuses_retry() -> None:
    retryable = {408, 409, 429, 500, 502, 503, 504, 529}
    for status in (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504, 529):
        assert from_response(status, b"{}").retryable == (status in retryable), status
    assert not InvalidRequestError("bad").retryable


def test_cloudflare_html_403_is_transient() -> None:
    page = b"<!DOCTYPE html><html><title>Attention Required! | Cloudflare</title></html>"
    err = from_response(403, page, content_type="text/html")
    assert isinstance(err, UpstreamUnavailableError) and err.retryable
    assert "HTML" in err.message


def test_google_retry_info_in_the_body_is_the_wait() -> None:
    """Gemini says when to retry inside the error body, not in a header."""
    body = (
        b'{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":['
        b'{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},'
        b'{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}'
    )
    err = from_response(429, body, content_type="application/json")
    assert isinstance(err, RateLimitError) and err.retry_after == 37.0
    assert from_response(429, body, retry_after=5.0).retry_after == 5.0  # a header wins
    assert (
        from_response(429, b'{"error":{"details":[{"@type":"x.RetryInfo","retryDelay":"soon"}]}}').retry_after
        is None
    )
