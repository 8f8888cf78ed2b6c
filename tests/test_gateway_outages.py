"""Outages end to end: what clients, ``/readyz``, the log and the usage table see when something breaks.

A real ``modelwire serve`` process on loopback against the scripted fake upstream, with a Redis or a
PostgreSQL of the test's own (tests/services.py) that the test kills and restarts under it:

* Redis going away (limit counts fall back to memory, or limited keys are refused under
  ``limits.on_shared_error: deny``), coming back, or being down when the gateway starts;
* PostgreSQL going away under a steady load: serving continues from the in-memory key table, and no
  usage row is lost or written twice;
* a SIGTERM that outlives ``server.grace_seconds``: every request still gets its own error in its own
  dialect, and its usage row;
* a ``kill -9``: how much usage a crash can lose (at most the writer's flush interval).

Each test starts its own gateway because each needs its own config and kills something under it.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
from sqlalchemy import select

from modelwire.gateway.store import Store
from modelwire.gateway.tables import usage_table

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, sse_events, start_gateway
from .services import PrivatePostgres, PrivateRedis
from .spec import anthropic_errors, assert_anthropic, assert_openai, openai_errors

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
USER = [{"role": "user", "content": "Tell me something about the sea, briefly."}]
CLAUDE = "claude-sonnet-4-5"  # any claude-* name matches a rule of base_config
LIMITED_KEY = "sk-client-limited-000000000"
LIMITED = "limited"  # its name: Redis bucket keys are modelwire:rpm:<name>:<window start>
RECOVERY_SECONDS = 3.0  # how soon /readyz must say 200 again once the dependency is back

Answer = tuple[int, dict[str, str], bytes]
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def outage_config(upstream: FakeUpstream, tmp: Path, **overrides: Any) -> dict[str, Any]:
    """``base_config`` plus a key with a (never reached) rpm.

    The rpm is high so the limit is consulted on every request (which is what touches Redis) but
    never refuses: a refusal here would mean the outage handling is wrong, not the traffic.
    """
    config = base_config(upstream, tmp)
    config["keys"] = [
        *config["keys"],
        {"key": LIMITED_KEY, "name": LIMITED, "rpm": 100_000},
    ]
    config.update(overrides)
    return config


def post(
    gateway: RunningGateway,
    path: str,
    body: dict[str, Any],
    *,
    key: str = CLIENT_KEY,
    request_id: str | None = None,
    timeout: float = 15,
) -> Answer:
    """One request over a fresh connection, with the client's own credentials header.

    Anthropic clients send ``x-api-key`` and ``anthropic-version``; the others a bearer token.
    Raw HTTP rather than an SDK so a non-2xx answer is seen exactly as sent.
    """
    headers = {"Content-Type": "application/json"}
    if path == MESSAGES:
        headers.update({"x-api-key": key, "anthropic-version": "2023-06-01"})
    else:
        headers["Authorization"] = f"Bearer {key}"
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    conn = _connection(gateway, timeout)
    try:
        conn.request("POST", path, body=orjson.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _connection(gateway: RunningGateway, timeout: float) -> http.client.HTTPConnection:
    """A new connection per request: no client-side pooling to blur what each request saw."""
    host, port = gateway.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def chat(gateway: RunningGateway, key: str = CLIENT_KEY, request_id: str | None = None) -> Answer:
    """A plain Chat request (passed through to the Chat upstream): the load of these tests."""
    return post(gateway, CHAT, {"model": "chat-model", "messages": USER}, key=key, request_id=request_id)


def messages(gateway: RunningGateway, key: str = CLIENT_KEY) -> Answer:
    """An Anthropic Messages request (translated to Chat): a second dialect for every check."""
    return post(gateway, MESSAGES, {"model": CLAUDE, "max_tokens": 32, "messages": USER}, key=key)


def get(gateway: RunningGateway, path: str) -> tuple[int, dict[str, Any]]:
    """A plain route (``/readyz``, ``/healthz``) and its JSON body."""
    conn = _connection(gateway, 5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> tuple[T, float]:
    """Poll ``probe`` until ``done`` says yes or ``timeout`` passes: its last value and the seconds
    waited. Outages are noticed by background probes, so assertions must allow them a moment."""
    started = time.monotonic()
    value = probe()
    while not done(value) and time.monotonic() - started < timeout:
        time.sleep(0.05)
        value = probe()
    return value, time.monotonic() - started


def ready(gateway: RunningGateway) -> tuple[int, dict[str, Any]]:
    """``/readyz``: what a load balancer would read to route around this replica."""
    return get(gateway, "/readyz")


def wait_ready(
    gateway: RunningGateway, status: int, timeout: float
) -> tuple[tuple[int, dict[str, Any]], float]:
    """``/readyz`` once it answers ``status`` (or its last answer), and how long that took."""
    return wait_until(lambda: ready(gateway), lambda answer: answer[0] == status, timeout)


def assert_openai_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    """An OpenAI error envelope (checked against the official spec) with this status and code."""
    got, headers, body = answer
    assert got == status, body[:500]
    doc = orjson.loads(body)
    assert_openai("ErrorResponse", doc)
    assert doc["error"]["code"] == code, doc
    assert headers.get("x-request-id"), headers
    return dict(doc["error"])


def assert_anthropic_unavailable(answer: Answer) -> dict[str, Any]:
    """Anthropic's own "unavailable": the gateway's dialect table says a 503 as 529
    ``overloaded_error`` (the status Anthropic clients retry; see test_dialect_anthropic)."""
    got, _, body = answer
    doc = orjson.loads(body)
    assert got == 529, body[:500]
    assert_anthropic("ErrorResponse", doc)
    assert doc["type"] == "error" and doc["error"]["type"] == "overloaded_error", doc
    return dict(doc["error"])


def redis_warnings(gateway: RunningGateway) -> list[str]:
    """Log lines at WARNING or above that mention Redis: an outage must be said once, not per request."""
    return [
        line
        for line in gateway.log().splitlines()
        if " WARNING " in line or " ERROR " in line
        if "redis" in line.lower()
    ]


def rpm_buckets(server: PrivateRedis, key_name: str) -> list[bytes]:
    """The rpm bucket keys Redis holds for a client key (proof that counts went to Redis)."""
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        return sorted(client.keys(f"modelwire:rpm:{key_name}:*"))
    finally:
        client.close()


def usage_rows(store_url: str) -> list[dict[str, Any]]:
    """Every row of the usage table, read with the gateway's own table definition."""
    with Store(store_url) as store, store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(usage_table)).mappings()]


def assert_clean_log(gateway: RunningGateway) -> None:
    """An outage is an expected event: handled, it leaves warnings in the log, never a traceback."""
    log = gateway.log()
    assert "Traceback" not in log, log[-4000:]


@dataclass
class SteadyLoad:
    """One client sending chat requests back to back from a thread, each with its own request id.

    It records every answer (status and the client-side time it completed) and every request that
    got none, so a test can compare what clients were told with what the usage table says.
    """

    gateway: RunningGateway
    prefix: str
    key: str = CLIENT_KEY
    answers: dict[str, tuple[int, float]] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    slowest: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, name=f"load-{self.prefix}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Finish the request in flight, then stop (a dead gateway answers it at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            request_id = f"{self.prefix}-{n:06d}"
            n += 1
            sent = time.monotonic()
            try:
                status, _, _ = chat(self.gateway, self.key, request_id)
            except (OSError, http.client.HTTPException):
                self.unanswered.append(request_id)
                time.sleep(0.01)  # a dead gateway refuses at once: do not spin
                continue
            done = time.monotonic()
            self.slowest = max(self.slowest, done - sent)
            self.answers[request_id] = (status, done)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        """Statuses of the answers that completed between ``since`` and ``until`` (monotonic)."""
        # A copy first: the load's thread adds answers meanwhile (list() copies under the GIL).
        answers = list(self.answers.values())
        return Counter(status for status, done in answers if since <= done <= until)


# ----------------------------------------------------------------------------------------------
# Redis
# ----------------------------------------------------------------------------------------------


def test_redis_outage_counts_in_memory_and_readyz_follows_it(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """``on_shared_error: local``: Redis killed twice under a running gateway.

    Also the readiness basics: 200 with every dependency ``up`` while all is well, and ``/healthz``
    200 while Redis is down.
    """
    config = outage_config(upstream, tmp_path, redis=private_redis.url)
    gateway = start_gateway(config, tmp_path, name="redis-local")
    try:
        status, doc = ready(gateway)
        dependencies = {k: v for k, v in doc.items() if k not in ("status", "usage_pending")}
        assert (status, doc["status"]) == (200, "ready"), doc
        assert dependencies == {"store": "up", "redis": "up"}, doc  # every dependency, each up
        assert get(gateway, "/healthz")[0] == 200
        assert chat(gateway, LIMITED_KEY)[0] == 200
        assert rpm_buckets(private_redis, LIMITED), "the limited key was not counted in Redis"

        for outage in (1, 2):
            private_redis.stop("immediate")
            statuses, slowest = Counter[int](), 0.0
            for n in range(12):
                sent = time.monotonic()
                answer = chat(gateway, LIMITED_KEY) if n % 3 else messages(gateway, LIMITED_KEY)
                slowest = max(slowest, time.monotonic() - sent)
                statuses[answer[0]] += 1
            statuses[chat(gateway)[0]] += 1  # an unlimited key never touches the counters
            assert statuses == Counter({200: 13}), f"outage {outage}: {statuses}"
            assert slowest < 2.5, f"outage {outage}: a request waited {slowest:.1f} s on a dead Redis"

            (status, doc), _ = wait_ready(gateway, 503, timeout=3)
            assert status == 503, doc
            assert doc["redis"] == "down" and doc["store"] == "up", doc
            assert get(gateway, "/healthz") == (200, {"status": "ok"})  # alive, only degraded

            private_redis.start()
            (status, doc), waited = wait_ready(gateway, 200, timeout=RECOVERY_SECONDS + 2)
            assert status == 200 and doc["redis"] == "up", doc
            assert waited <= RECOVERY_SECONDS, f"outage {outage}: /readyz took {waited:.1f} s to recover"
            assert rpm_buckets(private_redis, LIMITED) == []  # the restart forgot every count...
            assert chat(gateway, LIMITED_KEY)[0] == 200
            assert rpm_buckets(private_redis, LIMITED), f"outage {outage}: counts did not go back to Redis"

        warnings = redis_warnings(gateway)
        assert len(warnings) == 2, "expected one warning per outage:\n" + "\n".join(warnings)
        assert_clean_log(gateway)
    finally:
        gateway.stop()


def test_redis_down_at_start_then_deny_refuses_limited_keys_in_their_dialect(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """``on_shared_error: deny``: a gateway started while Redis is down, Redis coming up, then
    killed mid-run. Limited keys are refused meanwhile in the client's dialect; others are served."""
    private_redis.stop("immediate")
    config = outage_config(upstream, tmp_path, redis=private_redis.url, limits={"on_shared_error": "deny"})
    gateway = start_gateway(config, tmp_path, name="redis-deny")
    try:
        for phase in ("down at start-up", "killed mid-run"):
            if phase == "killed mid-run":
                private_redis.stop("immediate")
            (status, doc), _ = wait_ready(gateway, 503, timeout=3)
            assert status == 503 and doc["redis"] == "down" and doc["store"] == "up", (phase, doc)
            assert get(gateway, "/healthz")[0] == 200

            refused = chat(gateway, LIMITED_KEY)
            error = assert_openai_error(refused, 503, "limits_unavailable")
            assert "redis" in error["message"].lower(), error
            assert refused[1].get("retry-after"), refused[1]
            assert_openai_error(
                post(gateway, RESPONSES, {"model": "resp-model", "input": "hi"}, key=LIMITED_KEY),
                503,
                "limits_unavailable",
            )
            assert_anthropic_unavailable(messages(gateway, LIMITED_KEY))
            assert chat(gateway)[0] == 200, phase  # no limits: nothing to check, served
            assert messages(gateway)[0] == 200, phase

            private_redis.start()
            (status, doc), waited = wait_ready(gateway, 200, timeout=RECOVERY_SECONDS + 2)
            assert status == 200 and doc["redis"] == "up", (phase, doc)
            assert waited <= RECOVERY_SECONDS, f"{phase}: /readyz took {waited:.1f} s to recover"
            assert chat(gateway, LIMITED_KEY)[0] == 200, phase
            assert messages(gateway, LIMITED_KEY)[0] == 200, phase
            assert rpm_buckets(private_redis, LIMITED), f"{phase}: counts did not go to Redis"

        warnings = redis_warnings(gateway)
        assert len(warnings) == 2, "expected one warning per outage:\n" + "\n".join(warnings)
        assert_clean_log(gateway)
    finally:
        gateway.stop()


# ----------------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------------


def test_postgres_outage_under_load_loses_no_usage_row(
    upstream: FakeUpstream, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """PostgreSQL stopped for ~2.5 s under a steady load, then started again.

    Requests are served throughout (keys come from memory: the load uses a key created in the
    store, not in the config), a stored key with a budget already used keeps working (one never
    used is refused with a 503 until the store can say what it spent), ``/readyz`` says
    ``store: down`` and then 200, and afterwards the usage table holds exactly one row per
    answered request: none lost while the store was away, none written twice.
    """
    with Store(private_postgres.url) as store:
        load_key, _ = store.create_key(name="stored-load")
        budget_key, _ = store.create_key(name="stored-budget", budget_usd=1000.0)
        unseeded_key, _ = store.create_key(name="stored-budget-unused", budget_usd=1000.0)
    config = outage_config(upstream, tmp_path, store=private_postgres.url, usage={"flush_seconds": 0.2})
    gateway = start_gateway(config, tmp_path, name="pg-outage")
    budget_ids: list[str] = []

    def budget_request() -> int:
        budget_ids.append(f"budget-{len(budget_ids):03d}")
        return chat(gateway, budget_key, budget_ids[-1])[0]

    try:
        status, doc = ready(gateway)
        assert status == 200 and doc["store"] == "up", doc
        assert budget_request() == 200  # its budget is now seeded from the store

        with SteadyLoad(gateway, "pg-load", key=load_key) as load:
            time.sleep(0.5)
            private_postgres.stop()
            down_at = time.monotonic()
            (status, doc), _ = wait_ready(gateway, 503, timeout=3)
            assert status == 503 and doc["store"] == "down", doc
            assert get(gateway, "/healthz")[0] == 200
            assert [budget_request() for _ in range(3)] == [200, 200, 200]
            # A budget never read from the store cannot be checked: refused, as documented.
            budget_ids.append("budget-unused-refused")  # refused, but answered: it has a row too
            assert_openai_error(chat(gateway, unseeded_key, budget_ids[-1]), 503, "store_unavailable")
            time.sleep(max(0.0, 2.5 - (time.monotonic() - down_at)))
            during = load.statuses(down_at, time.monotonic())
            private_postgres.start()
            (status, doc), waited = wait_ready(gateway, 200, timeout=10)
            assert status == 200 and doc["store"] == "up", doc
            assert waited <= RECOVERY_SECONDS, f"/readyz took {waited:.1f} s to recover"
            budget_ids.append("budget-unused-after")
            assert chat(gateway, unseeded_key, budget_ids[-1])[0] == 200  # the store can say now
            time.sleep(0.5)

        assert sum(during.values()) >= 5 and set(during) == {200}, during
        assert load.unanswered == [], load.unanswered[:10]
        assert set(load.statuses()) == {200}, load.statuses()

        answered = [*load.answers, *budget_ids]
        wait_until(lambda: usage_rows(private_postgres.url), lambda r: len(r) >= len(answered), timeout=10)
        time.sleep(0.5)  # anything written twice would land now
        rows = usage_rows(private_postgres.url)
        written = Counter(row["request_id"] for row in rows)
        missing = sorted(set(answered) - set(written))
        doubled = sorted(rid for rid, n in written.items() if n > 1)
        unknown = sorted(set(written) - set(answered))
        assert (missing, doubled, unknown) == ([], [], []), (
            f"{len(answered)} answers, {len(rows)} rows; missing {missing[:10]}, "
            f"written twice {doubled[:10]}, never answered {unknown[:10]}"
        )
        assert len(rows) == len(answered)
        assert get(gateway, "/readyz")[1]["usage_pending"] == 0
        assert_clean_log(gateway)
    finally:
        gateway.stop()


# ----------------------------------------------------------------------------------------------
# Shutdown past the grace period
# ----------------------------------------------------------------------------------------------

SURFACES: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", CHAT, {"model": "chat-model", "messages": USER}),
    ("responses", RESPONSES, {"model": "resp-model", "input": "Tell me something about the sea."}),
    ("anthropic", MESSAGES, {"model": CLAUDE, "max_tokens": 64, "messages": USER}),
]

FLOWING = {"chat": b'"content":"w', "responses": b"response.output_text.delta", "anthropic": b"text_delta"}
"""What shows that a client's stream carries the answer's text, not just keep-alives."""


@dataclass
class Waiting:
    """One client of the shutdown test: what it sent, and what it got back."""

    request_id: str
    surface: str
    path: str
    body: dict[str, Any]
    stream: bool
    started: threading.Event = field(default_factory=threading.Event)  # a stream's head arrived
    status: int | None = None
    payload: bytes = b""
    failure: str | None = None

    def run(self, gateway: RunningGateway) -> None:
        """Send, then read to the end; a stream is read as it comes, so its opening is noticed."""
        headers = {"Content-Type": "application/json", "X-Request-Id": self.request_id}
        if self.path == MESSAGES:
            headers.update({"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
        else:
            headers["Authorization"] = f"Bearer {CLIENT_KEY}"
        conn = _connection(gateway, 20)
        try:
            conn.request(
                "POST", self.path, body=orjson.dumps({**self.body, "stream": self.stream}), headers=headers
            )
            response = conn.getresponse()
            self.status = response.status
            while chunk := response.read1(65536):
                self.payload += chunk
                self.started.set()
        except (OSError, http.client.HTTPException) as exc:
            self.failure = repr(exc)
        finally:
            self.started.set()
            conn.close()


def cut_answer_problems(client: Waiting) -> list[str]:
    """What is wrong with the client's answer, which must be its own dialect's way of saying "the
    gateway is shutting down". A list rather than an assertion, so one run shows every client's
    problem (the dialects fail differently). Spec conformance of the final stream event is left
    to :func:`final_event_spec_problems`."""
    where = f"{client.surface} {'stream' if client.stream else 'request'} {client.request_id}"
    if client.failure is not None:
        return [f"{where}: no answer: {client.failure}"]
    if not client.stream:
        answer = (client.status or 0, {"x-request-id": client.request_id}, client.payload)
        try:
            if client.surface == "anthropic":
                assert_anthropic_unavailable(answer)
            else:
                assert_openai_error(answer, 503, "shutting_down")
        except AssertionError as failed:
            return [f"{where}: {failed}"]
        return []
    if client.status != 200:
        return [f"{where}: stream answered {client.status}: {client.payload[:300]!r}"]
    events = sse_events(client.payload)
    if not events:
        return [f"{where}: the stream ended without any event: {client.payload[:300]!r}"]
    if client.surface == "chat":
        last = json.loads([d for _, d in events if d != "[DONE]"][-1])
        error = last.get("error")
        if not (isinstance(error, dict) and error.get("message") and error.get("code") == "shutting_down"):
            return [f"{where}: last chunk is not the shutdown error: {last}"]
        return []
    name, data = events[-1]
    last = json.loads(data)
    if client.surface == "responses":
        if last["type"] not in ("response.failed", "error") or name not in (None, last["type"]):
            return [f"{where}: the stream ends with {name} {last}"]
        return []
    if name != "error" or last["type"] != "error" or last["error"]["type"] != "overloaded_error":
        return [f"{where}: the stream ends with {name} {last}"]
    return []


def final_event_spec_problems(client: Waiting) -> list[str]:
    """How a stream's final event departs from the vendor's spec (what typed SDKs parse against).

    Kept apart from :func:`cut_answer_problems` so the test checks everything else first.
    """
    events = sse_events(client.payload) if client.stream and client.status == 200 else []
    if not events or client.surface == "chat":  # the spec has no schema for Chat's error chunk
        return []
    last = json.loads(events[-1][1])
    where = f"{client.surface} stream {client.request_id}"
    if client.surface == "responses":
        return [f"{where}: {problem}" for problem in openai_errors("ResponseStreamEvent", last)]
    # Anthropic's stream error event is {"type": "error", "error": {...}}: no request_id, unlike
    # the error body (ErrorResponse); its spec has no schema for the event, only for the error.
    return [f"{where}: {problem}" for problem in anthropic_errors("OverloadedError", last["error"])]


def test_shutdown_past_grace_ends_every_request_in_its_dialect(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM with ~40 requests waiting on a 3 s upstream and a 1 s grace period.

    Each non-streaming client gets a 503 in its dialect, each open stream ends with its dialect's
    error event, the process exits 0 soon after the grace period, with no traceback, and each
    request has exactly one usage row: status 503, error ``shutdown``, its input tokens estimated.
    """
    config = outage_config(upstream, tmp_path, server={"keepalive_seconds": 0.25, "grace_seconds": 1})
    gateway = start_gateway(config, tmp_path, name="grace")
    clients = [
        Waiting(f"cut-{n:02d}", *SURFACES[n % 3], stream=bool(n % 2)) for n in range(42)
    ]  # n % 3 and n % 2 together cover every surface both ways, seven times each
    upstream.script(*[Reply.delay(3.0, Reply.text("too late")) for _ in clients])
    threads = [threading.Thread(target=c.run, args=(gateway,), daemon=True) for c in clients]
    first_arrival, last_arrival = float("inf"), time.monotonic()
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while len(upstream.requests) < len(clients) and time.monotonic() < deadline:
            if first_arrival == float("inf") and upstream.requests:
                first_arrival = time.monotonic()
            time.sleep(0.01)
        last_arrival = time.monotonic()
        arrived = len(upstream.requests)
        assert arrived == len(clients), f"only {arrived} of {len(clients)} requests reached the upstream"
        for client in clients:
            if client.stream:
                assert client.started.wait(5), f"{client.request_id}: the stream never opened"
        gateway.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for thread in threads:
            thread.join(timeout=15)
        answered_by = time.monotonic() - signalled
        code = gateway.proc.wait(timeout=15)
        exited_after = time.monotonic() - signalled
    finally:
        gateway.stop()
        # Let the fake's delayed handlers run out here, not during the next test, whose fixture
        # would then blame that test for anything they record.
        time.sleep(max(0.0, min(last_arrival + 3.2 - time.monotonic(), 4.0)))

    # The upstream answers 3 s after each request came in; the cut comes 1 s after SIGTERM.
    assert signalled - first_arrival < 1.7, "too slow to set up: the upstream could answer before the cut"
    problems = [problem for client in clients for problem in cut_answer_problems(client)]
    assert problems == [], f"{len(problems)} bad answers:\n" + "\n".join(problems)
    assert answered_by < 2.5, f"clients waited {answered_by:.1f} s after SIGTERM (grace is 1 s)"
    assert code == 0, f"exit status {code} after SIGTERM\n{gateway.log()[-3000:]}"
    assert exited_after < 4, f"the process took {exited_after:.1f} s to exit after SIGTERM"
    assert_clean_log(gateway)

    rows = [r for r in usage_rows(config["store"]) if r["request_id"].startswith("cut-")]
    by_id = Counter(r["request_id"] for r in rows)
    assert by_id == Counter({c.request_id: 1 for c in clients}), by_id
    wrong = [
        (r["request_id"], r["status"], r["error"], r["input_tokens"])
        for r in rows
        # The status each client saw: 503, which Anthropic's dialect says as 529 "overloaded".
        if r["status"] not in (503, 529) or r["error"] != "shutdown" or r["input_tokens"] <= 0
    ]
    assert wrong == [], wrong

    off_spec = [problem for client in clients for problem in final_event_spec_problems(client)]
    assert off_spec == [], f"{len(off_spec)} final events off the vendor's spec:\n" + "\n".join(off_spec)


def test_shutdown_past_grace_ends_a_flowing_stream_as_the_same_stream(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM while three streams are mid-answer (a 6 s upstream stream), grace 1 s.

    The cut must end each stream as that same stream: the dialect's error event after the text
    already sent, without starting a second answer inside it. Chat chunks keep the one id the
    spec promises ("Each chunk has the same ID"); a Responses stream keeps one response and its
    ``sequence_number`` keeps counting (the invariant test_gateway_robustness holds upstream
    failures to); an Anthropic stream has one ``message_start``. Usage rows count the output.
    """
    config = outage_config(upstream, tmp_path, server={"keepalive_seconds": 0.25, "grace_seconds": 1})
    config["models"] = [
        {"name": "flow-chat", "route": "compat/flow-model"},
        {"name": "flow-resp", "route": "oai/flow-model"},
        *config["models"],
    ]
    gateway = start_gateway(config, tmp_path, name="grace-flowing")
    words = " ".join(f"w{n}" for n in range(30))
    upstream.for_model("flow-model", *[Reply.text(words, chunk_delay=0.2) for _ in range(3)])
    clients = [
        Waiting("flow-chat", "chat", CHAT, {"model": "flow-chat", "messages": USER}, stream=True),
        Waiting("flow-resp", "responses", RESPONSES, {"model": "flow-resp", "input": "hi"}, stream=True),
        Waiting(
            "flow-anthropic",
            "anthropic",
            MESSAGES,
            {"model": "flow-chat", "max_tokens": 64, "messages": USER},
            stream=True,
        ),
    ]
    threads = [threading.Thread(target=c.run, args=(gateway,), daemon=True) for c in clients]
    try:
        for thread in threads:
            thread.start()
        flowing, _ = wait_until(
            lambda: [c.request_id for c in clients if FLOWING[c.surface] in c.payload],
            lambda ids: len(ids) == len(clients),
            timeout=10,
        )
        assert len(flowing) == len(clients), f"only {flowing} were streaming text"
        gateway.proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=15)
        code = gateway.proc.wait(timeout=15)
    finally:
        gateway.stop()

    assert code == 0, gateway.log()[-3000:]
    problems = [problem for client in clients for problem in cut_answer_problems(client)]
    chat_client, responses_client, anthropic_client = clients
    chunks = [json.loads(d) for _, d in sse_events(chat_client.payload) if d != "[DONE]"]
    ids = Counter(chunk["id"] for chunk in chunks if "id" in chunk)
    if len(ids) != 1:
        problems.append(f"chat: chunks of one stream carry {len(ids)} ids: {dict(ids)}")
    events = [json.loads(d) for _, d in sse_events(responses_client.payload)]
    created = [e["response"]["id"] for e in events if e["type"] == "response.created"]
    if len(created) != 1:
        problems.append(f"responses: {len(created)} response.created events in one stream: {created}")
    numbers = [e.get("sequence_number") for e in events]
    if numbers != list(range(len(events))):
        problems.append(f"responses: sequence_number runs {numbers}")
    ids_seen = {e["response"]["id"] for e in events if isinstance(e.get("response"), dict)}
    if len(ids_seen) != 1:
        problems.append(f"responses: one stream names {len(ids_seen)} responses: {sorted(ids_seen)}")
    starts = [n for n, _ in sse_events(anthropic_client.payload) if n == "message_start"]
    if len(starts) != 1:
        problems.append(f"anthropic: {len(starts)} message_start events")

    # Checked before the stream problems, so a failure of those does not hide these.
    rows = {r["request_id"]: r for r in usage_rows(config["store"])}
    got = {
        rid: (r["status"], r["error"], r["input_tokens"] > 0, r["output_tokens"] > 0)
        for rid, r in rows.items()
    }
    assert got == {c.request_id: (503, "shutdown", True, True) for c in clients}, got
    assert_clean_log(gateway)
    assert problems == [], "\n".join(problems)


# ----------------------------------------------------------------------------------------------
# Hard kill
# ----------------------------------------------------------------------------------------------

FLUSH_SECONDS = 0.5


def test_hard_kill_loses_at_most_the_last_flush_interval(
    upstream: FakeUpstream, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """``kill -9`` after ~3 s of steady load: every request that completed more than
    ``flush_seconds + 0.5 s`` before the kill has its usage row. How many of the last second's
    requests were lost is recorded (``lost_in_last_second``) and printed."""
    config = outage_config(upstream, tmp_path, usage={"flush_seconds": FLUSH_SECONDS})
    gateway = start_gateway(config, tmp_path, name="kill9")
    try:
        assert chat(gateway)[0] == 200  # the first request is slow (cold caches): not part of the load
        with SteadyLoad(gateway, "kill") as load:
            # The writer flushes every 0.5 s from start-up, so a whole number of seconds would kill
            # it just after a flush and measure the best case; a random phase measures a fair one.
            time.sleep(3.0 + random.uniform(0.0, FLUSH_SECONDS))
            killed_at = time.monotonic()
            os.kill(gateway.proc.pid, signal.SIGKILL)
            gateway.proc.wait(timeout=10)
    finally:
        gateway.stop()

    written = {row["request_id"] for row in usage_rows(config["store"])}
    bound = killed_at - (FLUSH_SECONDS + 0.5)
    settled = [rid for rid, (_, done) in load.answers.items() if done < bound]
    last_second = [rid for rid, (_, done) in load.answers.items() if done >= killed_at - 1.0]
    lost_last_second = [rid for rid in last_second if rid not in written]
    oldest_lost = max((killed_at - load.answers[rid][1] for rid in lost_last_second), default=0.0)
    record_property("answered", len(load.answers))
    record_property("lost_in_last_second", f"{len(lost_last_second)}/{len(last_second)}")
    record_property("oldest_lost_seconds_before_kill", round(oldest_lost, 3))
    print(
        f"\nhard kill: {len(load.answers)} answered, {len(written)} rows; of the {len(last_second)} "
        f"requests completed in the last second before the kill, {len(lost_last_second)} were lost "
        f"(the oldest completed {oldest_lost:.2f} s before the kill)"
    )
    assert len(settled) > 20, f"too little load to judge: {len(settled)} settled requests"
    lost = [rid for rid in settled if rid not in written]
    assert lost == [], f"{len(lost)} of {len(settled)} settled requests lost: {lost[:10]}"
