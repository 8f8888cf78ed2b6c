"""Prometheus metrics for the gateway, on a registry of its own.

A dedicated :class:`~prometheus_client.CollectorRegistry` per :class:`Metrics` keeps several app
instances (and tests) in one process from colliding on the global registry.

Two rules keep the series safe and cheap to scrape:

- **No secrets in labels.** Keys are never labels; a label value that looks like a key or token
  (a client can put anything in ``model``) is replaced by ``other``.
- **Bounded cardinality.** Each label admits a fixed number of distinct values (model names: 200),
  then maps anything new to ``other``, so a client cycling through invented model names cannot
  grow the series without bound.

Each process has its own registry: with several workers, each scrape sees one worker.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from ..observe import redact

OTHER = "other"
MAX_LABEL_LENGTH = 120
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
"""From a cached or local answer (milliseconds) to a long reasoning run (minutes)."""

Metric = TypeVar("Metric", Counter, Gauge, Histogram)


class Clamp:
    """Maps label values to themselves until ``limit`` distinct ones are seen, then to ``other``.

    Each new value is checked once (length, secret patterns) and the verdict remembered, so the
    per-request cost is one dict lookup; the memo itself is bounded by ``limit``.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        label = self._seen.get(value)
        if label is not None:
            return label
        if len(self._seen) >= self._limit:
            return OTHER
        label = value if _safe(value) else OTHER
        self._seen[value] = label
        return label


def _safe(value: str) -> bool:
    return 0 < len(value) <= MAX_LABEL_LENGTH and redact(value) == value


class _Children(Generic[Metric]):
    """Label children cached by label values: skips prometheus_client's validation and lock per call.

    Bounded because every label value passes through a :class:`Clamp` first.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Metric) -> None:
        self._metric: Metric = metric
        self._cache: dict[tuple[str, ...], Metric] = {}

    def __call__(self, *values: str) -> Metric:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The gateway's metrics, recorded through small methods that clamp every label."""

    def __init__(self, *, max_models: int = 200, max_backends: int = 100) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._surface = Clamp(32)
        self._model = Clamp(max_models)
        self._backend = Clamp(max_backends)
        self._status = Clamp(100)
        self._kind = Clamp(64)
        self._define()

    def _define(self) -> None:
        r = self.registry
        self._requests = _Children(
            Counter(
                "modelwire_requests",
                "Requests answered",
                ["surface", "model", "backend", "status"],
                registry=r,
            )
        )
        self._errors = _Children(
            Counter("modelwire_errors", "Errors by kind", ["surface", "kind"], registry=r)
        )
        self._seconds = _Children(
            Histogram(
                "modelwire_request_seconds",
                "Request duration",
                ["surface"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self._ttft = _Children(
            Histogram(
                "modelwire_ttft_seconds",
                "Time to first token",
                ["surface"],
                buckets=LATENCY_BUCKETS,
                registry=r,
            )
        )
        self._tokens = _Children(
            Counter(
                "modelwire_tokens", "Tokens (input includes cached)", ["model", "backend", "kind"], registry=r
            )
        )
        self._cost = _Children(
            Counter("modelwire_cost_usd", "Estimated cost", ["model", "backend"], registry=r)
        )
        self._retries = _Children(Counter("modelwire_retries", "Upstream retries", ["backend"], registry=r))
        self._failovers = _Children(
            Counter(
                "modelwire_failovers",
                "Moves to the next route target",
                ["from_backend", "to_backend"],
                registry=r,
            )
        )
        self._in_flight = _Children(
            Gauge("modelwire_in_flight", "Requests in progress", ["surface"], registry=r)
        )
        self._cooldowns = _Children(
            Counter(
                "modelwire_upstream_key_cooldowns", "Upstream keys put on cool-down", ["backend"], registry=r
            )
        )

    def request_started(self, surface: str) -> None:
        self._in_flight(self._surface(surface)).inc()

    def request_finished(
        self, surface: str, model: str, backend: str, status: int | str, seconds: float, ttft: float | None
    ) -> None:
        """Close a request opened with :meth:`request_started`; ``ttft`` only when output streamed."""
        label = self._surface(surface)
        self._in_flight(label).dec()
        self._requests(label, self._model(model), self._backend(backend), self._status(str(status))).inc()
        self._seconds(label).observe(seconds)
        if ttft is not None:
            self._ttft(label).observe(ttft)

    def usage(
        self,
        model: str,
        backend: str,
        input: int,
        cached: int,
        output: int,
        reasoning: int,
        cost: float | None,
    ) -> None:
        """Token counts by kind (``cached`` is part of ``input``, ``reasoning`` part of ``output``)."""
        model, backend = self._model(model), self._backend(backend)
        for kind, count in (
            ("input", input),
            ("cached", cached),
            ("output", output),
            ("reasoning", reasoning),
        ):
            if count > 0:
                self._tokens(model, backend, kind).inc(count)
        if cost is not None and cost > 0:
            self._cost(model, backend).inc(cost)

    def retry(self, backend: str) -> None:
        self._retries(self._backend(backend)).inc()

    def failover(self, from_backend: str, to_backend: str) -> None:
        self._failovers(self._backend(from_backend), self._backend(to_backend)).inc()

    def cooldown(self, backend: str) -> None:
        self._cooldowns(self._backend(backend)).inc()

    def error(self, surface: str, kind: str) -> None:
        self._errors(self._surface(surface), self._kind(kind)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition payload and its content type, for a ``/metrics`` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
