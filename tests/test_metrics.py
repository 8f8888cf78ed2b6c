"""Metrics: the families render with their labels, labels stay bounded and never carry secrets."""

from __future__ import annotations

from collections import Counter as Tally

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelwire.gateway.metrics import Clamp, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    payload, _ = metrics.render()
    found: Samples = {}
    for family in text_string_to_metric_families(payload.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_render_has_every_family_and_a_text_content_type(metrics: Metrics) -> None:
    payload, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    text = payload.decode()
    for family in (
        "modelwire_requests_total",
        "modelwire_errors_total",
        "modelwire_request_seconds",
        "modelwire_ttft_seconds",
        "modelwire_tokens_total",
        "modelwire_cost_usd_total",
        "modelwire_retries_total",
        "modelwire_failovers_total",
        "modelwire_in_flight",
        "modelwire_upstream_key_cooldowns_total",
    ):
        assert f"# TYPE {family.removesuffix('_total')} " in text or f"# TYPE {family} " in text


def test_a_request_counts_once_with_its_labels(metrics: Metrics) -> None:
    metrics.request_started("chat")
    metrics.request_started("chat")
    assert value(metrics, "modelwire_in_flight", surface="chat") == 2
    metrics.request_finished("chat", "gpt-5.5", "openai", 200, seconds=0.42, ttft=0.08)
    assert value(metrics, "modelwire_in_flight", surface="chat") == 1
    labels = {"surface": "chat", "model": "gpt-5.5", "backend": "openai", "status": "200"}
    assert value(metrics, "modelwire_requests_total", **labels) == 1
    assert value(metrics, "modelwire_request_seconds_count", surface="chat") == 1
    assert value(metrics, "modelwire_request_seconds_sum", surface="chat") == pytest.approx(0.42)
    assert value(metrics, "modelwire_request_seconds_bucket", surface="chat", le="0.5") == 1
    assert value(metrics, "modelwire_request_seconds_bucket", surface="chat", le="0.25") == 0
    assert value(metrics, "modelwire_ttft_seconds_count", surface="chat") == 1


def test_latency_buckets_span_milliseconds_to_minutes(metrics: Metrics) -> None:
    metrics.request_started("responses")
    metrics.request_finished("responses", "m", "b", "200", seconds=1.0, ttft=None)
    found = samples(metrics)
    bounds = {dict(labels)["le"] for name, labels in found if name == "modelwire_request_seconds_bucket"}
    assert {"0.005", "300.0", "+Inf"} <= bounds
    assert value(metrics, "modelwire_ttft_seconds_count", surface="responses") is None, (
        "no ttft: not observed"
    )


def test_usage_counts_tokens_by_kind_and_cost(metrics: Metrics) -> None:
    metrics.usage("gpt-5.5", "openai", input=1000, cached=400, output=250, reasoning=0, cost=0.0125)
    metrics.usage("gpt-5.5", "openai", input=10, cached=0, output=5, reasoning=3, cost=None)
    base = {"model": "gpt-5.5", "backend": "openai"}
    assert value(metrics, "modelwire_tokens_total", kind="input", **base) == 1010
    assert value(metrics, "modelwire_tokens_total", kind="cached", **base) == 400
    assert value(metrics, "modelwire_tokens_total", kind="output", **base) == 255
    assert value(metrics, "modelwire_tokens_total", kind="reasoning", **base) == 3
    assert value(metrics, "modelwire_cost_usd_total", **base) == pytest.approx(0.0125)


def test_retries_failovers_cooldowns_and_errors(metrics: Metrics) -> None:
    metrics.retry("openai")
    metrics.retry("openai")
    metrics.failover("openai", "local")
    metrics.cooldown("azure")
    metrics.error("messages", "upstream_timeout")
    assert value(metrics, "modelwire_retries_total", backend="openai") == 2
    assert value(metrics, "modelwire_failovers_total", from_backend="openai", to_backend="local") == 1
    assert value(metrics, "modelwire_upstream_key_cooldowns_total", backend="azure") == 1
    assert value(metrics, "modelwire_errors_total", surface="messages", kind="upstream_timeout") == 1


def test_model_labels_are_capped_at_two_hundred(metrics: Metrics) -> None:
    for n in range(250):
        metrics.usage(f"model-{n}", "openai", input=1, cached=0, output=0, reasoning=0, cost=None)
    models = Tally(
        dict(labels)["model"]
        for (name, labels), _ in samples(metrics).items()
        if name == "modelwire_tokens_total"
    )
    assert len(models) == 201
    assert value(metrics, "modelwire_tokens_total", model="other", backend="openai", kind="input") == 50
    assert value(metrics, "modelwire_tokens_total", model="model-0", backend="openai", kind="input") == 1


def test_labels_never_carry_secrets(metrics: Metrics) -> None:
    secret = "sk-live-123456789abc"
    metrics.request_started("chat")
    metrics.request_finished("chat", secret, "openai", 401, seconds=0.01, ttft=None)
    metrics.usage(f"Bearer {secret}", "openai", input=1, cached=0, output=0, reasoning=0, cost=None)
    payload, _ = metrics.render()
    assert secret.encode() not in payload
    labels = {"surface": "chat", "model": "other", "backend": "openai", "status": "401"}
    assert value(metrics, "modelwire_requests_total", **labels) == 1


def test_registries_are_per_instance() -> None:
    first, second = Metrics(), Metrics()
    first.retry("openai")
    assert value(first, "modelwire_retries_total", backend="openai") == 1
    assert value(second, "modelwire_retries_total", backend="openai") is None


def test_clamp_remembers_verdicts_and_rejects_long_values() -> None:
    clamp = Clamp(2)
    assert clamp("a") == "a"
    assert clamp("x" * 500) == "other"
    assert clamp("b") == "other", "the rejected value used the second slot"
    assert clamp("a") == "a"
