"""Metrics: the families render with their labels, labels stay bounded and never carry secrets;
with several workers, any worker's ``/metrics`` shows the sum of all of them.

Multiprocess tests run their workers as real interpreters (``sys.executable -c``) that inherit the
directory through the environment, as uvicorn's spawned workers do; the test process itself stays
in single-process mode (``prepare_multiprocess`` only sets a variable, undone by ``monkeypatch``).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from modelwire.gateway import metrics as metrics_module
from modelwire.gateway.metrics import (
    MAX_PENDING,
    MULTIPROCESS_ENV,
    Clamp,
    Metrics,
    keep_flushing,
    prepare_multiprocess,
    worker_exited,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    payload, _ = metrics.render()
    return parse(payload)


def parse(payload: bytes) -> Samples:
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
        "modelwire_dependency_up",
        "modelwire_shared_state_errors_total",
        "modelwire_usage_pending",
        "modelwire_usage_dropped_total",
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


def test_requests_tallied_between_flushes_all_count(metrics: Metrics) -> None:
    """Requests are added up in a tally and written in batches: a scrape between two requests, and
    one after a flush with nothing new, count each exactly once, latency buckets and sums included."""
    for seconds in (0.003, 0.2, 7.0):
        metrics.request_started("chat")
        metrics.request_finished("chat", "gpt-5.5", "openai", 200, seconds=seconds, ttft=0.001)
        metrics.usage("gpt-5.5", "openai", input=10, cached=4, output=3, reasoning=1, cost=0.25)
        samples(metrics)
    metrics.request_started("chat")
    metrics.flush()
    metrics.flush()
    labels = {"surface": "chat", "model": "gpt-5.5", "backend": "openai", "status": "200"}
    assert value(metrics, "modelwire_requests_total", **labels) == 3
    assert value(metrics, "modelwire_in_flight", surface="chat") == 1
    assert value(metrics, "modelwire_request_seconds_bucket", surface="chat", le="0.005") == 1
    assert value(metrics, "modelwire_request_seconds_bucket", surface="chat", le="5.0") == 2
    assert value(metrics, "modelwire_request_seconds_bucket", surface="chat", le="+Inf") == 3
    assert value(metrics, "modelwire_request_seconds_sum", surface="chat") == pytest.approx(7.203)
    assert value(metrics, "modelwire_ttft_seconds_bucket", surface="chat", le="0.005") == 3
    tokens = {"model": "gpt-5.5", "backend": "openai"}
    counts = [
        value(metrics, "modelwire_tokens_total", kind=kind, **tokens)
        for kind in ("input", "cached", "output", "reasoning")
    ]
    assert counts == [30, 12, 9, 3]
    assert value(metrics, "modelwire_cost_usd_total", **tokens) == pytest.approx(0.75)


def test_a_tally_is_written_before_it_outgrows_its_bound(metrics: Metrics) -> None:
    """A client inventing a model name per request grows the tally by a label set each: past
    MAX_PENDING it is written at once (and the names clamped), so it never holds more."""
    for n in range(3 * MAX_PENDING):
        metrics.request_started("chat")
        metrics.request_finished("chat", f"invented-{n}", "openai", 404, seconds=0.01, ttft=None)
        metrics.usage(f"invented-{n}", "openai", input=1, cached=0, output=0, reasoning=0, cost=None)
        assert len(metrics._tally.finished) <= MAX_PENDING and len(metrics._tally.usage) <= MAX_PENDING
    found = samples(metrics)
    assert sum(v for (name, _), v in found.items() if name == "modelwire_requests_total") == 3 * MAX_PENDING
    assert sum(v for (name, _), v in found.items() if name == "modelwire_tokens_total") == 3 * MAX_PENDING
    assert value(metrics, "modelwire_in_flight", surface="chat") == 0


def test_flushing_goes_on_after_a_failed_write(
    metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk under the multiprocess files fails one write: a warning without a traceback, and
    the next tick writes again (the flushing task must not die with it)."""
    monkeypatch.setattr(metrics_module, "FLUSH_SECONDS", 0.01)
    real_flush = metrics.flush
    attempts: list[int] = []
    third = asyncio.Event()

    def flaky_flush() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        real_flush()
        if len(attempts) == 3:
            third.set()

    monkeypatch.setattr(metrics, "flush", flaky_flush)

    async def run() -> None:
        task = asyncio.ensure_future(keep_flushing(metrics))
        metrics.request_started("chat")
        await asyncio.wait_for(third.wait(), 10)
        task.cancel()

    asyncio.run(run())
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "No space left on device" in warnings[0].getMessage()
    monkeypatch.setattr(metrics, "flush", real_flush)
    assert value(metrics, "modelwire_in_flight", surface="chat") == 1


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


def test_no_created_series_in_one_process(metrics: Metrics) -> None:
    record_one_of_everything(metrics)
    payload, _ = metrics.render()
    assert b"modelwire_requests_total{" in payload
    assert b"_created" not in payload


def test_dependencies_shared_state_errors_and_usage_backlog(metrics: Metrics) -> None:
    metrics.dependency("redis", True)
    metrics.dependency("store", True)
    metrics.dependency("store", False)
    metrics.shared_state_error("redis")
    metrics.shared_state_error("redis")
    assert value(metrics, "modelwire_dependency_up", dependency="redis") == 1
    assert value(metrics, "modelwire_dependency_up", dependency="store") == 0
    assert value(metrics, "modelwire_shared_state_errors_total", dependency="redis") == 2

    metrics.usage_backlog(pending=7, dropped_total=0)
    metrics.usage_backlog(pending=3, dropped_total=4)
    metrics.usage_backlog(pending=3, dropped_total=4)
    assert value(metrics, "modelwire_usage_pending") == 3
    assert value(metrics, "modelwire_usage_dropped_total") == 4, "the same total twice adds nothing"
    metrics.usage_backlog(pending=0, dropped_total=1)
    assert value(metrics, "modelwire_usage_dropped_total") == 5, "a lower total is a new writer's"


def test_dependency_labels_are_clamped(metrics: Metrics) -> None:
    secret = "sk-live-123456789abc"
    metrics.dependency(secret, False)
    metrics.shared_state_error(secret)
    payload, _ = metrics.render()
    assert secret.encode() not in payload
    assert value(metrics, "modelwire_dependency_up", dependency="other") == 0
    assert value(metrics, "modelwire_shared_state_errors_total", dependency="other") == 1


def test_single_process_instances_stay_private_and_in_memory() -> None:
    first, second = Metrics(), Metrics()
    first.request_started("chat")
    first.dependency("redis", True)
    first.usage_backlog(pending=2, dropped_total=1)
    assert not first.multiprocess
    assert values.ValueClass is values.MutexValue, "values live in memory, not in files"
    assert value(first, "modelwire_in_flight", surface="chat") == 1
    assert value(second, "modelwire_in_flight", surface="chat") is None
    assert value(second, "modelwire_dependency_up", dependency="redis") is None
    assert value(second, "modelwire_usage_pending") == 0
    assert value(second, "modelwire_usage_dropped_total") == 0


def record_one_of_everything(metrics: Metrics) -> None:
    metrics.request_started("chat")
    metrics.request_finished("chat", "gpt-5.5", "openai", 200, seconds=0.3, ttft=0.1)
    metrics.usage("gpt-5.5", "openai", input=10, cached=2, output=5, reasoning=1, cost=0.01)
    metrics.retry("openai")
    metrics.failover("openai", "local")
    metrics.cooldown("openai")
    metrics.error("chat", "upstream_timeout")
    metrics.dependency("redis", True)
    metrics.shared_state_error("redis")
    metrics.usage_backlog(pending=1, dropped_total=1)


# ----------------------------------------------------------------------------------------------
# Several workers: real processes sharing one directory
# ----------------------------------------------------------------------------------------------

WORKER = """
import os, sys
from modelwire.gateway.metrics import Metrics
finished, open_, redis, render = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "render"
m = Metrics()
for _ in range(finished):
    m.request_started("chat")
    m.request_finished("chat", "gpt-5.5", "openai", 200, 0.2, 0.05)
    m.usage("gpt-5.5", "openai", 10, 0, 5, 0, 0.5)
for _ in range(open_):
    m.request_started("chat")
if redis:
    m.dependency("redis", redis == "up")
m.usage_backlog(open_, finished)
m.flush()  # as a worker does every FLUSH_SECONDS and as it stops
print(os.getpid())
if render:
    sys.stdout.write(m.render()[0].decode())
"""


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def output(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def worker(finished: int, open_: int, *, redis: str = "", render: bool = False) -> subprocess.Popen[str]:
    """A worker inheriting this process's environment, as a spawned uvicorn worker does.

    It finishes ``finished`` requests, leaves ``open_`` in flight, reports Redis ``up`` or ``down``
    if asked, and prints its pid, then with ``render`` what its ``/metrics`` would answer.
    """
    return python(WORKER, str(finished), str(open_), redis, "render" if render else "")


def pid_and_samples(out: str) -> tuple[int, Samples]:
    pid, _, payload = out.partition("\n")
    return int(pid), parse(payload.encode())


def get(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    yield prepare_multiprocess(str(tmp_path / "metrics"))


REQUEST = {"surface": "chat", "model": "gpt-5.5", "backend": "openai", "status": "200"}
TOKENS = {"model": "gpt-5.5", "backend": "openai"}


def test_a_scrape_of_any_worker_shows_every_worker(shared_dir: str) -> None:
    output(worker(3, 1, redis="up"))
    output(worker(2, 2, redis="down"))
    _, found = pid_and_samples(output(worker(0, 0, render=True)))
    assert get(found, "modelwire_requests_total", **REQUEST) == 5
    assert get(found, "modelwire_tokens_total", kind="output", **TOKENS) == 25
    assert get(found, "modelwire_cost_usd_total", **TOKENS) == pytest.approx(2.5)
    assert get(found, "modelwire_request_seconds_count", surface="chat") == 5
    assert get(found, "modelwire_request_seconds_bucket", surface="chat", le="0.25") == 5
    assert get(found, "modelwire_ttft_seconds_bucket", surface="chat", le="0.01") == 0
    assert get(found, "modelwire_in_flight", surface="chat") == 3, "live sum: 1 + 2 + 0"
    assert get(found, "modelwire_usage_pending") == 3
    assert get(found, "modelwire_usage_dropped_total") == 5
    assert get(found, "modelwire_dependency_up", dependency="redis") == 0, "the latest reading"
    assert not [name for name, labels in found if name.endswith("_created") or "pid" in dict(labels)]


def test_live_sum_drops_a_worker_that_exited(shared_dir: str) -> None:
    first, second = worker(1, 2), worker(1, 1)
    dead, _ = pid_and_samples(output(first))
    output(second)
    worker_exited(dead)
    _, found = pid_and_samples(output(worker(0, 0, render=True)))
    assert get(found, "modelwire_in_flight", surface="chat") == 1, "only the live worker's request"
    assert get(found, "modelwire_usage_pending") == 1
    assert get(found, "modelwire_requests_total", **REQUEST) == 2, "a dead worker's totals stay"
    assert not [path for path in os.listdir(shared_dir) if path.endswith(f"_{dead}.db") and "live" in path]


def test_a_file_still_being_created_does_not_break_a_scrape(shared_dir: str) -> None:
    """A worker's file exists empty until sized; one killed then leaves it so for good."""
    Path(shared_dir, "histogram_999999.db").touch()
    _, found = pid_and_samples(output(worker(1, 0, render=True)))
    assert get(found, "modelwire_requests_total", **REQUEST) == 1


def test_prepare_multiprocess_drops_a_previous_runs_values(shared_dir: str) -> None:
    output(worker(4, 4))
    keep = Path(shared_dir, "notes.txt")
    keep.write_text("not a value file")
    assert prepare_multiprocess(shared_dir) == shared_dir
    assert not [path for path in os.listdir(shared_dir) if path.endswith(".db")]
    assert keep.exists(), "only value files are removed"
    _, found = pid_and_samples(output(worker(1, 0, render=True)))
    assert get(found, "modelwire_requests_total", **REQUEST) == 1
    assert get(found, "modelwire_in_flight", surface="chat") == 0


FRESH = """
import os, stat
from modelwire.gateway.metrics import prepare_multiprocess
path = prepare_multiprocess()
print(path, oct(stat.S_IMODE(os.stat(path).st_mode)), os.environ["PROMETHEUS_MULTIPROC_DIR"] == path)
"""


def test_prepare_multiprocess_makes_a_private_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    given = tmp_path / "given"
    given.mkdir(mode=0o755)
    assert prepare_multiprocess(str(given)) == str(given)
    assert stat.S_IMODE(given.stat().st_mode) == 0o700
    assert os.environ[MULTIPROCESS_ENV] == str(given)
    link = tmp_path / "link"
    link.symlink_to(given)
    with pytest.raises(ValueError, match="not a directory"):
        prepare_multiprocess(str(link))


def test_prepare_multiprocess_without_a_directory_makes_one_for_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    path, mode, exported = output(python(FRESH)).split()
    assert (mode, exported) == ("0o700", "True")
    assert not os.path.exists(path), "removed when the process that made it exits"


LATE = """
import json, os, sys
from modelwire.gateway.metrics import Metrics, prepare_multiprocess
prepare_multiprocess(sys.argv[1])
first, second = Metrics(), Metrics()
first.retry("openai")
second.retry("openai")
first.retry("openai")
names = sorted(os.listdir(sys.argv[1]))
del os.environ["PROMETHEUS_MULTIPROC_DIR"]
try:
    Metrics()
    refused = False
except RuntimeError:
    refused = True
print(json.dumps({"files": names, "refused": refused}))
"""


def test_the_variable_set_after_import_still_shares_and_instances_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serve process imported prometheus-client before prepare_multiprocess, so the value class
    chosen at import was in-memory; Metrics must still write files, and two instances in one process
    must add up rather than overwrite each other."""
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    directory = str(tmp_path / "late")
    report = json.loads(output(python(LATE, directory)))
    assert any(name.startswith("counter_") for name in report["files"])
    assert report["refused"], "a process cannot fall back to in-memory values after writing files"
    monkeypatch.setenv(MULTIPROCESS_ENV, directory)
    _, found = pid_and_samples(output(worker(0, 0, render=True)))
    assert get(found, "modelwire_retries_total", backend="openai") == 3


def test_worker_exited_without_multiprocess_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    stray = tmp_path / "gauge_livesum_4242.db"
    stray.write_bytes(b"")
    worker_exited(4242)
    assert stray.exists()
