"""Prometheus metrics for the gateway, for one process or summed over every worker.

**One process** (``PROMETHEUS_MULTIPROC_DIR`` unset when :class:`Metrics` is built): each instance
has a :class:`~prometheus_client.CollectorRegistry` of its own with in-memory values, so several app
instances (and tests) in one process never see each other's counts.

Requests are tallied in plain dicts and written to the values in batches (see :class:`_Tally`):
before each scrape, every :data:`FLUSH_SECONDS` and as the gateway stops.

**Several workers** (``modelwire serve --workers N``): a scrape reaches one worker, so per-worker
registries would each show a fraction of the traffic. The serve process calls
:func:`prepare_multiprocess` before it spawns the workers; the directory it names reaches them through
the environment, every worker writes its values to memory-mapped files there, and :meth:`Metrics.render`
in any worker merges all of them (prometheus-client's multiprocess mode). The supervisor calls
:func:`worker_exited` for a worker that is gone, so live gauges stop counting it. Counters and
histograms keep a dead worker's totals: a total that shrank when a worker restarted would read as a
counter reset.

How gauges merge across workers (none of this matters in one process):

- ``modelwire_in_flight`` and ``modelwire_usage_pending``: ``livesum``, the sum over live workers.
- ``modelwire_dependency_up``: ``livemostrecent``, the latest reading any live worker took. Whether
  Redis or the store is reachable is a fact about the replica (its host and network), which every
  worker observes; the freshest observation is the best estimate. ``max`` would let one worker's
  stale ``1`` (a dead worker's, without ``live``) hide an outage, ``min`` a single worker's old
  failure hide a recovery.

Families (``*_total`` is added to counters; no ``*_created`` series anywhere, nobody reads them):

- ``modelwire_requests_total{surface,model,backend,status}``, ``modelwire_errors_total{surface,kind}``
- ``modelwire_request_seconds{surface}``, ``modelwire_ttft_seconds{surface}`` (histograms)
- ``modelwire_tokens_total{model,backend,kind}``, ``modelwire_cost_usd_total{model,backend}``
- ``modelwire_retries_total{backend}``, ``modelwire_failovers_total{from_backend,to_backend}``,
  ``modelwire_upstream_key_cooldowns_total{backend}``, ``modelwire_in_flight{surface}``
- ``modelwire_dependency_up{dependency}``: 1 if the last call to a dependency (Redis, the usage
  store) worked, else 0.
- ``modelwire_shared_state_errors_total{dependency}``: Redis or store calls that failed on the
  request path.
- ``modelwire_usage_pending``: usage records waiting for the store; ``modelwire_usage_dropped_total``:
  records the writer gave up on.
- ``modelwire_websocket_connections_total{outcome}``: Responses WebSocket upgrades, ``accepted`` or
  ``refused``; ``modelwire_websocket_open``: sockets open now (``livesum``). Each response on a
  socket is counted as a request like any other.

Two rules keep the series safe and cheap to scrape:

- **No secrets in labels.** Keys are never labels; a label value that looks like a key or token
  (a client can put anything in ``model``) is replaced by ``other``.
- **Bounded cardinality.** Each label admits a fixed number of distinct values (model names: 200),
  then maps anything new to ``other``, so a client cycling through invented model names cannot
  grow the series without bound.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import logging
import os
import shutil
import stat
import tempfile
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..observe import redact

log = logging.getLogger("modelwire.gateway")

OTHER = "other"
MAX_LABEL_LENGTH = 120
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
"""From a cached or local answer (milliseconds) to a long reasoning run (minutes)."""
FLUSH_SECONDS = 0.1
"""How often a gateway writes what its requests tallied to the metric values (see :class:`_Tally`)."""
MAX_PENDING = 512
"""Label sets a tally holds before it is written at once: a client inventing model names cannot grow it."""
TOKEN_KINDS = ("input", "cached", "output", "reasoning")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable prometheus-client reads; set, it means "this process is one of several workers"."""

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

    __slots__ = ("_buckets", "_cache", "_metric", "_values")

    def __init__(self, metric: Metric) -> None:
        self._metric: Metric = metric
        self._cache: dict[tuple[str, ...], Metric] = {}
        self._values: dict[tuple[str, ...], Any] = {}
        self._buckets: dict[tuple[str, ...], tuple[Any, list[Any]]] = {}

    def __call__(self, *values: str) -> Metric:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = self._metric.labels(*values)
        return child

    # A flush's own: the child's value objects held, without the checks prometheus_client repeats on
    # every inc and observe.

    def add(self, amount: float, *values: str) -> None:
        """A counter's ``inc`` (never negative), or a gauge's ``inc``/``dec``."""
        value = self._values.get(values)
        if value is None:
            child: Any = self(*values)
            value = self._values[values] = child._value
        value.inc(amount)

    def record(self, row: list[float], *values: str) -> None:
        """A histogram's tally (see :class:`_Tally`) added in: its counts by bucket, then its sum."""
        found = self._buckets.get(values)
        if found is None:
            child: Any = self(*values)
            found = self._buckets[values] = (child._sum, child._buckets)
        total, buckets = found
        for bucket, count in zip(buckets, row[:-1], strict=True):
            if count:
                bucket.inc(count)
        total.inc(row[-1])


class _Tally:
    """What the request path records, added up in plain dicts until :meth:`Metrics.flush` writes it
    to the metric values.

    prometheus_client takes a lock for each value it adds to: with their label lookups, a request's
    nine additions cost ~50,000 instructions. Here a request costs a few dict and list additions, and
    a flush writes each label set once, whatever the number of requests behind it. Label values are
    clamped when written, so a tally holds the request's own strings (bounded by :data:`MAX_PENDING`).
    """

    __slots__ = ("finished", "seconds", "started", "ttft", "usage")

    def __init__(self) -> None:
        self.started: dict[str, int] = {}
        self.finished: dict[tuple[str, str, str, int | str], int] = {}
        self.seconds: dict[str, list[float]] = {}  # per surface: a count per bucket, then the sum
        self.ttft: dict[str, list[float]] = {}
        self.usage: dict[tuple[str, str], list[float]] = {}  # TOKEN_KINDS, then the cost

    def __bool__(self) -> bool:
        return bool(self.started or self.finished or self.usage)


def _timing(rows: dict[str, list[float]], surface: str, seconds: float) -> None:
    row = rows.get(surface)
    if row is None:
        row = rows[surface] = [0.0] * (len(LATENCY_BUCKETS) + 2)  # the buckets, +Inf, the sum
    row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
    row[-1] += seconds


class _Families:
    """Every metric family, registered on ``registry``.

    ``None`` in multiprocess mode: the values are read back from every worker's files instead, and a
    registry holding these too would show this worker's values twice.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.requests = Counter(
            "modelwire_requests", "Requests answered", ["surface", "model", "backend", "status"], registry=r
        )
        self.errors = Counter("modelwire_errors", "Errors by kind", ["surface", "kind"], registry=r)
        self.seconds = Histogram(
            "modelwire_request_seconds", "Request duration", ["surface"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "modelwire_ttft_seconds", "Time to first token", ["surface"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter(
            "modelwire_tokens", "Tokens (input includes cached)", ["model", "backend", "kind"], registry=r
        )
        self.cost = Counter("modelwire_cost_usd", "Estimated cost", ["model", "backend"], registry=r)
        self.retries = Counter("modelwire_retries", "Upstream retries", ["backend"], registry=r)
        self.failovers = Counter(
            "modelwire_failovers",
            "Moves to the next route target",
            ["from_backend", "to_backend"],
            registry=r,
        )
        self.in_flight = Gauge(
            "modelwire_in_flight",
            "Requests in progress",
            ["surface"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cooldowns = Counter(
            "modelwire_upstream_key_cooldowns", "Upstream keys put on cool-down", ["backend"], registry=r
        )
        self._define_dependencies(r)
        self._define_sockets(r)

    def _define_sockets(self, r: CollectorRegistry | None) -> None:
        self.sockets = Counter(
            "modelwire_websocket_connections", "Responses WebSocket upgrades", ["outcome"], registry=r
        )
        self.sockets_open = Gauge(
            "modelwire_websocket_open", "Responses WebSockets open", registry=r, multiprocess_mode="livesum"
        )

    def _define_dependencies(self, r: CollectorRegistry | None) -> None:
        self.dependency_up = Gauge(
            "modelwire_dependency_up",
            "1 if the last call to the dependency worked",
            ["dependency"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.shared_state_errors = Counter(
            "modelwire_shared_state_errors",
            "Redis or store calls that failed on the request path",
            ["dependency"],
            registry=r,
        )
        self.usage_pending = Gauge(
            "modelwire_usage_pending",
            "Usage records waiting for the store",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.usage_dropped = Counter(
            "modelwire_usage_dropped", "Usage records the writer dropped", registry=r
        )


_shared: tuple[str, _Families] | None = None
"""This process's families in multiprocess mode, with the directory their files are in."""


def _shared_families(directory: str) -> _Families:
    """One set of families per process: two sets would hold separate in-memory copies of the same
    file entries, each overwriting the other's writes."""
    global _shared
    if _shared is None:
        _write_values_to_files()
        _shared = (directory, _Families(None))
    elif _shared[0] != directory:
        raise RuntimeError(
            f"{MULTIPROCESS_ENV} changed from {_shared[0]} to {directory} after metrics were recorded"
        )
    return _shared[1]


def _write_values_to_files() -> None:
    """prometheus-client picks its value class once, when imported: in a spawned worker the variable
    is already set and values go to files. A process that set it later (the serve process running
    the app itself after :func:`prepare_multiprocess`) still holds in-memory values, which no other
    process could read; switch it, as the import would have."""
    if _values_in_memory():
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _values_in_memory() -> bool:
    return values.ValueClass is values.MutexValue


class _AllWorkers:
    """Every worker's value files, merged; what ``/metrics`` shows in multiprocess mode.

    prometheus-client's own collector fails the whole scrape on a file that exists but is still
    empty: a worker creating its file for a metric type (its first histogram observation, say) or
    killed at that moment (prometheus/client_python#1199). Such a file holds nothing yet, so it is
    skipped. A file only grows, so one seen non-empty here is complete enough to read.
    """

    def __init__(self, directory: str) -> None:
        self._pattern = os.path.join(glob.escape(directory), "*.db")

    def describe(self) -> Iterable[Family]:
        """Nothing: the names are only known by reading the files, which registration need not do."""
        return ()

    def collect(self) -> Iterable[Family]:
        ready = [path for path in glob.glob(self._pattern) if _started(path)]
        merged: Iterable[Family] = MultiProcessCollector.merge(ready, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def _started(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:  # a dead worker's live gauges, removed since the listing
        return False


def _check_private_values() -> None:
    """In-memory values are what keeps single-process instances apart; refuse to silently write files
    into a directory that is no longer named."""
    if not _values_in_memory():
        raise RuntimeError(
            f"{MULTIPROCESS_ENV} was unset after this process began writing metrics to files;"
            " one process cannot mix single-process and multiprocess metrics"
        )


class Metrics:
    """The gateway's metrics, recorded through small methods that clamp every label.

    Multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set at construction (see the module
    docstring), a private in-memory registry otherwise.
    """

    def __init__(self, *, max_models: int = 200, max_backends: int = 100) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        directory = os.environ.get(MULTIPROCESS_ENV)
        self.multiprocess = bool(directory)
        if directory:
            families = _shared_families(directory)
            self.registry.register(_AllWorkers(directory))
        else:
            _check_private_values()
            families = _Families(self.registry)
        self._surface = Clamp(32)
        self._model = Clamp(max_models)
        self._backend = Clamp(max_backends)
        self._status = Clamp(100)
        self._kind = Clamp(64)
        self._dependency = Clamp(32)
        self._dropped_seen = 0
        self._tally = _Tally()
        self._bind(families)

    def _bind(self, f: _Families) -> None:
        self._requests = _Children(f.requests)
        self._errors = _Children(f.errors)
        self._seconds = _Children(f.seconds)
        self._ttft = _Children(f.ttft)
        self._tokens = _Children(f.tokens)
        self._cost = _Children(f.cost)
        self._retries = _Children(f.retries)
        self._failovers = _Children(f.failovers)
        self._in_flight = _Children(f.in_flight)
        self._cooldowns = _Children(f.cooldowns)
        self._dependency_up = _Children(f.dependency_up)
        self._shared_state_errors = _Children(f.shared_state_errors)
        self._usage_pending = f.usage_pending
        self._usage_dropped = f.usage_dropped
        self._sockets = _Children(f.sockets)
        self._sockets_open = f.sockets_open

    def socket_refused(self) -> None:
        self._sockets("refused").inc()

    def socket_opened(self) -> None:
        self._sockets("accepted").inc()
        self._sockets_open.inc()

    def socket_closed(self) -> None:
        self._sockets_open.dec()

    def request_started(self, surface: str) -> None:
        started = self._tally.started
        started[surface] = started.get(surface, 0) + 1

    def request_finished(
        self, surface: str, model: str, backend: str, status: int | str, seconds: float, ttft: float | None
    ) -> None:
        """Close a request opened with :meth:`request_started`; ``ttft`` only when output streamed."""
        tally = self._tally
        finished = tally.finished
        key = (surface, model, backend, status)
        finished[key] = finished.get(key, 0) + 1
        _timing(tally.seconds, surface, seconds)
        if ttft is not None:
            _timing(tally.ttft, surface, ttft)
        if len(finished) > MAX_PENDING:
            self.flush()

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
        rows = self._tally.usage
        key = (model, backend)
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0, 0, 0, 0, 0.0]
        row[0] += input
        row[1] += cached
        row[2] += output
        row[3] += reasoning
        if cost is not None and cost > 0:
            row[4] += cost
        if len(rows) > MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        """Write what requests tallied since the last flush to the metric values, which a scrape
        reads (in multiprocess mode, from every worker's files). :meth:`render` flushes first; a
        gateway also flushes every :data:`FLUSH_SECONDS` and as it stops, for the other workers."""
        tally = self._tally
        if not tally:
            return
        self._tally = _Tally()
        for surface, count in tally.started.items():
            self._in_flight.add(count, self._surface(surface))
        for (surface, model, backend, status), count in tally.finished.items():
            label = self._surface(surface)
            self._in_flight.add(-count, label)
            self._requests.add(
                count, label, self._model(model), self._backend(backend), self._status(str(status))
            )
        for surface, row in tally.seconds.items():
            self._seconds.record(row, self._surface(surface))
        for surface, row in tally.ttft.items():
            self._ttft.record(row, self._surface(surface))
        for (model, backend), row in tally.usage.items():
            model, backend = self._model(model), self._backend(backend)
            for kind, tokens in zip(TOKEN_KINDS, row[:-1], strict=True):
                if tokens > 0:
                    self._tokens.add(tokens, model, backend, kind)
            if row[4] > 0:
                self._cost.add(row[4], model, backend)

    def retry(self, backend: str) -> None:
        self._retries(self._backend(backend)).inc()

    def failover(self, from_backend: str, to_backend: str) -> None:
        self._failovers(self._backend(from_backend), self._backend(to_backend)).inc()

    def cooldown(self, backend: str) -> None:
        self._cooldowns(self._backend(backend)).inc()

    def error(self, surface: str, kind: str) -> None:
        self._errors(self._surface(surface), self._kind(kind)).inc()

    def dependency(self, name: str, up: bool) -> None:
        """Whether the last call to ``name`` (``redis``, ``store``) worked."""
        self._dependency_up(self._dependency(name)).set(1 if up else 0)

    def shared_state_error(self, dependency: str) -> None:
        """A Redis or store call that failed while serving a request (the request went on without it)."""
        self._shared_state_errors(self._dependency(dependency)).inc()

    def usage_backlog(self, pending: int, dropped_total: int) -> None:
        """The usage writer's queue length and its running count of dropped records.

        A Prometheus counter only goes up by increments, so the writer's total becomes the increase
        since the last call; a total below the last one means a new writer counting from zero.
        """
        self._usage_pending.set(pending)
        grown = dropped_total - self._dropped_seen if dropped_total >= self._dropped_seen else dropped_total
        if grown > 0:
            self._usage_dropped.inc(grown)
        self._dropped_seen = dropped_total

    def render(self) -> tuple[bytes, str]:
        """The exposition payload and its content type, for a ``/metrics`` response.

        In multiprocess mode this reads every worker's files, so any worker answers for all of them.
        """
        self.flush()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def keep_flushing(metrics: Metrics) -> None:
    """A gateway's tallies written every :data:`FLUSH_SECONDS`, where other workers' scrapes read them.

    A write that fails (the disk under the multiprocess files full) is said in the log and the loop
    goes on: that tick's counts are lost rather than retried, as a retry could count some twice.
    """
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        try:
            metrics.flush()
        except OSError as err:
            log.warning(
                "metrics: could not write this worker's counts (%s); trying again in %ss", err, FLUSH_SECONDS
            )


def prepare_multiprocess(directory: str | None = None) -> str:
    """Make the workers about to be spawned share their metrics; returns the directory.

    Call in the serve process before starting any worker: they inherit the variable set here, so
    prometheus-client in each writes its values to files from the first import. ``directory=None``
    makes a fresh one (removed when this process exits). A given directory is created or reused
    only if it is ours and not a symlink, made private (0700: the files carry model and backend
    names), and emptied of value files, since a previous run's files would be added to this run's
    totals. Only ``*.db`` files go: nothing else is read, and a mistyped path must not lose data.
    """
    path = _fresh_directory() if directory is None else _reused_directory(directory)
    os.environ[MULTIPROCESS_ENV] = path
    return path


def _fresh_directory() -> str:
    path = tempfile.mkdtemp(prefix="modelwire-metrics-")
    atexit.register(_remove_if_creator, path, os.getpid())
    return path


def _remove_if_creator(path: str, creator: int) -> None:
    """A forked child inherits atexit handlers; only the process that made the directory removes it."""
    if os.getpid() == creator:
        shutil.rmtree(path, ignore_errors=True)


def _reused_directory(directory: str) -> str:
    path = os.path.abspath(directory)
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or not _ours(info):
        raise ValueError(f"{path} is not a directory owned by this user")
    os.chmod(path, 0o700)
    for stale in glob.glob(os.path.join(glob.escape(path), "*.db")):
        os.remove(stale)
    return path


def _ours(info: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or info.st_uid == getuid()


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (in-flight requests, pending usage, dependency readings).

    For the supervisor, whenever a worker exits (crash or restart): the worker can no longer zero
    them itself, so without this its last values would stay in the sums. Nothing in one process.
    """
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def forget_dead_workers() -> list[int]:
    """Call :func:`worker_exited` for every worker whose live gauges outlived it; the pids forgotten.

    uvicorn's supervisor offers no hook when it replaces a worker, so each worker does this as it
    starts: a replacement starts exactly when an old one died.
    """
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return []
    dead = sorted({pid for pid in _gauge_pids(directory) if not _alive(pid)})
    for pid in dead:
        worker_exited(pid)
    return dead


def _gauge_pids(directory: str) -> set[int]:
    pids = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        tail = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
