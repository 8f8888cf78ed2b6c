"""Several gateways at once: replicas (separate ``modelwire serve`` processes) sharing one PostgreSQL
store and one Redis, and one gateway running several workers.

What a load balancer in front of them relies on, each checked end to end on real processes:

- a response stored on one replica may be named as ``previous_response_id`` on another the instant
  the client has it, whether the upstream is a stateless Responses server or a Chat server;
- a key created or revoked with the CLI takes effect on every replica within a second;
- rate limits are exact across workers and across replicas when Redis shares the counts; a gateway
  that cannot share them refuses to start (config keys) or refuses the key with a 503 (store keys);
- ``/metrics`` on any worker adds up the traffic of all of them.

Isolation: PostgreSQL tables live in a schema of this module's own (``?options=-csearch_path=…``),
dropped afterwards; every Redis test runs its own redis-server (``private_redis``), since the gateway's
Redis key prefix is fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
import redis
import websockets.sync.client as ws_client
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from modelwire.gateway.store import Store

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import (
    CLIENT_KEY,
    MODELWIRE,
    RunningGateway,
    base_config,
    free_port,
    open_socket,
    request,
    start_gateway,
)
from .services import PrivateRedis, postgres_schema

T = TypeVar("T")

RPM = 5
ATTEMPTS = 20
CHAINS = 20
KEY_DEADLINE = 1.0  # seconds within which a key change must reach every replica
POLL_LIMIT = 3.0  # keep polling past the deadline, to report how late a change was, not just "late"
SEQUENTIAL_KEY = "sk-client-rpm-sequential-0001"
CONCURRENT_KEY = "sk-client-rpm-concurrent-0002"
USER = [{"role": "user", "content": "q"}]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def gateway_config(upstream: FakeUpstream, tmp: Path, *, workers: int | str = 1) -> dict[str, Any]:
    """``base_config`` with one unlimited key, the given workers, and an embeddings model.

    The lockout is relaxed because the key tests poll with a key a replica does not know yet: those
    401s would otherwise lock 127.0.0.1 out (five failures) and hide the very change being timed.
    """
    config = base_config(upstream, tmp)
    config["server"] = {**config["server"], "workers": workers}
    config["keys"] = [{"key": CLIENT_KEY, "name": "all"}]
    config["lockout"] = {"failures": 1_000_000}
    config["models"] = [{"name": "embed", "route": "compat/text-embedding-3-small"}, *config["models"]]
    return config


def start_replicas(config: dict[str, Any], tmp: Path, *, prefix: str, count: int = 2) -> list[RunningGateway]:
    """``count`` gateways on one config, started at the same moment as an orchestrator would start
    them (their first opening of the shared store races too); all stopped again if any fails."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(start_gateway, config, tmp, name=f"{prefix}-{n}") for n in range(count)]
        wait(futures)
    started = [f.result() for f in futures if f.exception() is None]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        for gateway in started:
            gateway.stop()
        raise failures[0]  # type: ignore[misc]
    return started


def sdk(gateway: RunningGateway, key: str = CLIENT_KEY) -> openai.OpenAI:
    """The official client, without retries: a retry would hide the first answer (a 404, a 429)."""
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def post(
    gateway: RunningGateway, path: str, body: dict[str, Any], key: str = CLIENT_KEY
) -> tuple[int, dict[str, str], Any]:
    """A raw JSON POST with ``key``; the status, headers and decoded body (headers carry what the SDK
    hides: Retry-After, and x-request-id, which names the worker that answered)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, reply_headers, payload = request(gateway, "POST", path, json.dumps(body).encode(), headers)
    return status, reply_headers, json.loads(payload) if payload else None


def chat(
    gateway: RunningGateway, key: str = CLIENT_KEY, model: str = "chat-model"
) -> tuple[int, dict[str, str], Any]:
    return post(gateway, "/v1/chat/completions", {"model": model, "messages": USER}, key)


def models_status(gateway: RunningGateway, key: str) -> int:
    """GET /v1/models with ``key``: authenticated, never reaches the upstream, never counts a limit,
    so it tells "the replica knows this key" (200) from "it does not" (401) and nothing else."""
    status, _, _ = request(gateway, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
    return status


def worker_of(headers: dict[str, str]) -> str:
    """The worker that answered: request ids start with a prefix random per process (``req_`` and 12
    hex digits), then a counter."""
    return headers["x-request-id"][:16]


def wait_for_workers(gateway: RunningGateway, count: int = 2, timeout: float = 30.0) -> int:
    """Return once ``count`` different workers have answered; how many requests that took.

    ``start_gateway`` returns when the first worker answers, while the others may still be importing:
    requests sent then all land on one worker and prove nothing about sharing. Each probe is a new
    connection, which the kernel hands to whichever worker accepts first; the probes are requests the
    gateway counts, hence the return value.
    """
    seen: set[str] = set()
    sent = 0
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {len(seen)} of {count} workers answered in {timeout} s"
        probes = in_parallel([lambda: request(gateway, "GET", "/v1/models")] * 4)
        sent += len(probes)
        seen |= {worker_of(headers) for _, headers, _ in probes}
        time.sleep(0.05)
    return sent


def in_parallel(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls at once, one thread each, released together by a barrier; results in order.
    Simultaneous requests are what spread over workers and race for a limit's last slot."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def seconds_until(condition: Callable[[], bool], since: float) -> float | None:
    """Seconds from ``since`` until ``condition()`` first holds, checked every ~10 ms; None if it had
    not within POLL_LIMIT (so a slow change is measured and reported, not just called late)."""
    while time.monotonic() - since < POLL_LIMIT:
        if condition():
            return time.monotonic() - since
        time.sleep(0.01)
    return None


def delays_until(gateways: list[RunningGateway], key: str, status: int, since: float) -> list[float | None]:
    """For each gateway, polled in turn: seconds from ``since`` until it answers ``status`` for ``key``."""
    delays: list[float | None] = [None] * len(gateways)
    while time.monotonic() - since < POLL_LIMIT and None in delays:
        for index, gateway in enumerate(gateways):
            if delays[index] is None and models_status(gateway, key) == status:
                delays[index] = time.monotonic() - since
        time.sleep(0.01)
    return delays


def assert_exactly_admitted(replies: list[tuple[int, dict[str, str], Any]], what: str) -> None:
    """RPM admitted, every other one a 429 saying rpm with a usable Retry-After (1 s to a window)."""
    statuses = Counter(status for status, _, _ in replies)
    assert statuses == {200: RPM, 429: len(replies) - RPM}, f"{what}: {dict(statuses)}"
    for status, headers, body in replies:
        if status == 429:
            assert 1 <= int(headers["retry-after"]) <= 60, (what, headers)
            assert body["error"]["code"] == "rpm_exceeded", (what, body)


def redis_count(url: str, key_name: str) -> float:
    """What Redis holds for a key's rpm buckets (all of them: a burst may straddle a bucket edge)."""
    client = redis.Redis.from_url(url)
    try:
        return sum(float(client.get(k) or 0) for k in client.scan_iter(f"modelwire:rpm:{key_name}:*"))
    finally:
        client.close()


def status_of(call: Callable[[], object]) -> int:
    """The HTTP status an SDK call ended with (200 when it returned), so that one test can report
    every way a replica answered rather than stop at the first."""
    try:
        call()
    except openai.APIStatusError as err:
        return err.status_code
    return 200


def content_text(content: Any) -> str:
    """A Chat message's text, whether sent as a string or as parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [])


def limited_config(
    upstream: FakeUpstream, tmp: Path, *, workers: int, redis_url: str | None
) -> dict[str, Any]:
    """Two keys of RPM requests a minute, one per phase (sequential, concurrent), so that one phase's
    count never eats into the other's."""
    config = gateway_config(upstream, tmp, workers=workers)
    config["keys"] = [
        *config["keys"],
        {"key": SEQUENTIAL_KEY, "name": "rpm-sequential", "rpm": RPM},
        {"key": CONCURRENT_KEY, "name": "rpm-concurrent", "rpm": RPM},
    ]
    if redis_url is not None:
        config["redis"] = redis_url
    return config


def worker_pids(pid: int) -> list[int]:
    """The uvicorn worker processes ``pid`` spawned (children running multiprocessing's spawn_main)."""
    pids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return pids


# ----------------------------------------------------------------------------------------------
# Two replicas on one PostgreSQL store
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_store() -> Iterator[str]:
    """A store URL on the shared PostgreSQL, in a schema of this module's own, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def replicas(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, pg_store: str
) -> Iterator[list[RunningGateway]]:
    """Two replicas (one worker each) on one PostgreSQL store, with one config key."""
    tmp = tmp_path_factory.mktemp("replicas")
    config = gateway_config(upstream_server, tmp)
    config["store"] = pg_store
    running = start_replicas(config, tmp, prefix="replica")
    try:
        yield running
    finally:
        for gateway in running:
            gateway.stop()


def first_then_follow_up(
    on_a: openai.OpenAI, on_b: openai.OpenAI, model: str, tag: str, stream: bool
) -> tuple[Any, Any]:
    """A response created on replica A, then one naming it on replica B the instant the client has it.

    Streaming, that instant is the ``response.completed`` event: the follow-up is sent from inside
    the loop, before the client has even read the end of the stream, since a client may act on the
    final event. Returns (first, follow-up); the follow-up's error if it failed.
    """
    first: Any = None
    follow: Any = None
    try:
        if stream:
            with on_a.responses.create(model=model, input=f"first {tag}", stream=True) as events:
                for event in events:
                    if event.type == "response.completed":
                        first = event.response
                        follow = on_b.responses.create(
                            model=model, input=f"second {tag}", previous_response_id=first.id
                        )
        else:
            first = on_a.responses.create(model=model, input=f"first {tag}")
            follow = on_b.responses.create(model=model, input=f"second {tag}", previous_response_id=first.id)
    except openai.APIStatusError as err:
        follow = err
    return first, follow


@pytest.mark.parametrize("model", ["stateless-resp", "chat-model"])
def test_previous_response_id_resolves_on_another_replica_at_once(
    upstream: FakeUpstream, replicas: list[RunningGateway], model: str
) -> None:
    """CHAINS times, alternating streaming and not: a response created on replica A is named on
    replica B at 0 ms, and B expands the history the stateless upstream needs.

    ``stateless-resp`` passes the Responses body through (the history becomes its ``input``);
    ``chat-model`` is a Chat upstream behind the Responses surface (the history becomes messages).
    """
    a, b = replicas
    failures: list[str] = []
    with sdk(a) as on_a, sdk(b) as on_b:
        for n in range(CHAINS):
            tag = f"{model} {n}"
            upstream.script(Reply.text(f"first answer {tag}"), Reply.text(f"second answer {tag}"))
            first, follow = first_then_follow_up(on_a, on_b, model, tag, stream=n % 2 == 0)
            if not hasattr(follow, "output_text"):
                failures.append(f"#{n} ({'stream' if n % 2 == 0 else 'plain'}): {follow!r}")
                continue
            assert first.output_text == f"first answer {tag}"
            assert follow.output_text == f"second answer {tag}"
            sent = upstream.last.body
            if model == "stateless-resp":
                assert "previous_response_id" not in sent, sent
                expected = [
                    {"type": "message", "role": "user", "content": f"first {tag}"},
                    *(item.to_dict() for item in first.output),
                    {"type": "message", "role": "user", "content": f"second {tag}"},
                ]
                assert sent["input"] == expected
            else:
                messages = [(m["role"], content_text(m.get("content"))) for m in sent["messages"]]
                assert messages == [
                    ("user", f"first {tag}"),
                    ("assistant", f"first answer {tag}"),
                    ("user", f"second {tag}"),
                ]
    assert failures == [], f"{len(failures)}/{CHAINS} follow-ups on replica B failed:\n" + "\n".join(failures)


def test_previous_response_id_resolves_on_the_other_worker_of_a_sqlite_gateway_at_once(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """``server.workers: 2`` on one SQLite file: a follow-up sent the moment its first answer is
    back, on a new connection that the other worker may accept, finds the first response there (a
    single worker answers from memory and writes later; with two, each answer is committed before its
    last bytes go). Pairs are sent until several have crossed workers; every follow-up carries the
    whole history to the Chat upstream."""
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="sqlite-workers")
    crossed = 0
    try:
        wait_for_workers(gateway)
        for n in range(60):
            upstream.script(Reply.text(f"first answer {n}"), Reply.text(f"second answer {n}"))
            status, head, first = post(
                gateway, "/v1/responses", {"model": "chat-model", "input": f"first {n}"}
            )
            assert status == 200, first
            body = {"model": "chat-model", "input": f"second {n}", "previous_response_id": first["id"]}
            status, follow_head, follow = post(gateway, "/v1/responses", body)
            where = "the other worker" if worker_of(head) != worker_of(follow_head) else "the same worker"
            assert status == 200, f"pair {n}, the follow-up on {where}: {follow}"
            messages = [(m["role"], content_text(m.get("content"))) for m in upstream.last.body["messages"]]
            assert messages == [
                ("user", f"first {n}"),
                ("assistant", f"first answer {n}"),
                ("user", f"second {n}"),
            ]
            crossed += where == "the other worker"
            if crossed == 8:
                break
    finally:
        gateway.stop()
    assert crossed == 8, f"only {crossed} of 60 follow-ups reached the other worker"


def test_an_item_reference_resolves_on_another_replica_at_once(
    upstream: FakeUpstream, replicas: list[RunningGateway]
) -> None:
    """An answer made on replica A, resent by its item id to replica B the moment the client has
    it (as the Vercel AI SDK does): B finds it in the shared store and sends the Chat upstream the
    assistant's text."""
    a, b = replicas
    with sdk(a) as on_a, sdk(b) as on_b:
        for n in range(5):
            upstream.script(Reply.text(f"first answer {n}"), Reply.text(f"second answer {n}"))
            first = on_a.responses.create(model="chat-model", input=f"first {n}")
            on_b.responses.create(
                model="chat-model",
                input=[
                    {"role": "user", "content": f"first {n}"},
                    {"type": "item_reference", "id": first.output[0].id},  # type: ignore[list-item, typeddict-item]
                    {"role": "user", "content": f"second {n}"},
                ],
            )
            messages = [(m["role"], content_text(m.get("content"))) for m in upstream.last.body["messages"]]
            assert messages == [
                ("user", f"first {n}"),
                ("assistant", f"first answer {n}"),
                ("user", f"second {n}"),
            ]


@pytest.mark.parametrize("model", ["stateless-resp", "chat-model"])
def test_a_response_deleted_on_one_replica_is_gone_on_the_other(
    upstream: FakeUpstream, replicas: list[RunningGateway], model: str
) -> None:
    """Created on replica A, deleted through replica B: within KEY_DEADLINE (the propagation a key
    revocation gets), A no longer serves it, and then will not chain onto it either.

    A holds the response in its memory cache (it served it), so only the store knows of the delete.
    The fake upstream's own copies are dropped first: it also plays the native Responses upstream
    that ``GET /v1/responses/{id}`` falls back to, and must not answer for the gateway here.
    """
    a, b = replicas
    with sdk(a) as on_a, sdk(b) as on_b:
        upstream.script(Reply.text("forget me"))
        created = on_a.responses.create(model=model, input="something private")
        upstream.stored.clear()
        on_b.responses.delete(created.id)
        deleted = time.monotonic()
        assert status_of(lambda: on_b.responses.retrieve(created.id)) == 404  # B agrees it is gone
        gone_after = seconds_until(
            lambda: status_of(lambda: on_a.responses.retrieve(created.id)) == 404, deleted
        )
        calls_before = len(upstream.requests)
        chain = status_of(
            lambda: on_a.responses.create(model=model, input="and then?", previous_response_id=created.id)
        )
    sent = [r.body for r in upstream.requests[calls_before:] if r.method == "POST"]
    problems = []
    if gone_after is None or gone_after > KEY_DEADLINE:
        late = f"{POLL_LIMIT} s and more" if gone_after is None else f"{gone_after:.2f} s"
        problems.append(f"replica A still served the deleted response by GET after {late}")
    if chain != 404:
        problems.append(f"replica A chained onto the deleted response ({chain}); sent upstream: {sent}")
    assert problems == [], "\n".join(problems)


def test_a_stored_response_is_only_for_the_key_that_made_it(
    upstream: FakeUpstream, replicas: list[RunningGateway], pg_store: str
) -> None:
    """The store records which key made each response: another client key must not read it, list its
    input, or chain onto it (and so read its history through the model), on either replica, as
    OpenAI keeps one project's responses from another's. Its owner still can, from either replica."""
    a, b = replicas
    with Store(pg_store) as store:
        stranger, record = store.create_key(name=f"stranger-{uuid.uuid4().hex[:8]}")
    try:
        assert None not in delays_until(replicas, stranger, 200, time.monotonic())
        with sdk(a) as owner_a, sdk(b) as owner_b:
            upstream.script(Reply.text("the code is 4711"))
            created = owner_a.responses.create(model="chat-model", input="remember my code")
            upstream.stored.clear()  # the fake also plays the native upstream GET falls back to
            assert owner_b.responses.retrieve(created.id).output_text == "the code is 4711"
            answers = {}
            for where, gateway in (("A", a), ("B", b)):
                with sdk(gateway, stranger) as client:
                    answers[f"GET on {where}"] = status_of(lambda c=client: c.responses.retrieve(created.id))
                    answers[f"input_items on {where}"] = status_of(
                        lambda c=client: c.responses.input_items.list(created.id)
                    )
                    answers[f"chain on {where}"] = status_of(
                        lambda c=client: c.responses.create(
                            model="chat-model", input="what was my code?", previous_response_id=created.id
                        )
                    )
    finally:
        with Store(pg_store) as store:
            store.revoke_key(record.id)
    assert answers == dict.fromkeys(answers, 404), answers


def test_key_changes_reach_every_replica_within_a_second(
    upstream: FakeUpstream, replicas: list[RunningGateway]
) -> None:
    """A key created through replica A's config works on both replicas within KEY_DEADLINE of the CLI
    returning; revoked through replica B's config, both refuse it within KEY_DEADLINE too."""
    a, b = replicas
    name = f"replica-key-{uuid.uuid4().hex[:8]}"
    launched = time.monotonic()
    created = a.cli("keys", "create", "--name", name)
    returned = time.monotonic()
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    create_delays = delays_until(replicas, secret, 200, returned)
    create_cli = returned - launched
    assert [chat(g, secret)[0] for g in replicas] == [200, 200]  # it works for generation too

    launched = time.monotonic()
    revoked = b.cli("keys", "revoke", name)
    returned = time.monotonic()
    assert revoked.returncode == 0, revoked.stderr
    revoke_delays = delays_until(replicas, secret, 401, returned)
    revoke_cli = returned - launched

    report = (
        f"after the CLI returned (replica A, replica B): create {create_delays} s, revoke {revoke_delays} s;"
        f" the CLI itself ran {create_cli:.2f} s and {revoke_cli:.2f} s"
    )
    print(report)
    for delay in [*create_delays, *revoke_delays]:
        assert delay is not None and delay <= KEY_DEADLINE, report
    assert [chat(g, secret)[0] for g in replicas] == [401, 401]  # revoked for generation too
    assert models_status(a, CLIENT_KEY) == models_status(b, CLIENT_KEY) == 200  # the config key is untouched


# ----------------------------------------------------------------------------------------------
# Limits with several workers, and across replicas
# ----------------------------------------------------------------------------------------------


def test_several_workers_with_limited_keys_and_no_redis_refuse_to_start(
    upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    """Each worker would count the key's limits alone (twice its rpm across two): refused, exit 2,
    naming the key and Redis, and nothing is listening."""
    config = gateway_config(upstream_server, tmp_path, workers=2)
    config["keys"] = [*config["keys"], {"key": SEQUENTIAL_KEY, "name": "metered-key", "rpm": RPM}]
    port = free_port()
    config["server"] = {**config["server"], "host": "127.0.0.1", "port": port}
    path = tmp_path / "refused.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, (result.returncode, said, result.stdout)
    assert "metered-key" in said and "redis" in said, said
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # it never bound


def test_limits_are_exact_across_two_workers_sharing_redis(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """``server.workers: 2`` with Redis: ATTEMPTS requests, sequential then concurrent, each admit
    exactly RPM whichever worker takes them; refused ones never reach the upstream."""
    config = limited_config(upstream, tmp_path, workers=2, redis_url=private_redis.url)
    gateway = start_gateway(config, tmp_path, name="two-workers-redis")
    try:
        wait_for_workers(gateway)
        sequential = [chat(gateway, SEQUENTIAL_KEY) for _ in range(ATTEMPTS)]
        concurrent = in_parallel([lambda: chat(gateway, CONCURRENT_KEY)] * ATTEMPTS)
    finally:
        gateway.stop()
    assert_exactly_admitted(sequential, "sequential")
    assert_exactly_admitted(concurrent, "concurrent")
    assert len({worker_of(h) for _, h, _ in sequential + concurrent}) == 2  # both workers took requests
    assert len(upstream.requests) == 2 * RPM
    assert (
        redis_count(private_redis.url, "rpm-sequential")
        == redis_count(private_redis.url, "rpm-concurrent")
        == RPM
    )


def test_tokens_and_spend_add_up_exactly_across_two_workers_sharing_redis(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Each served request's tokens and cost reach Redis once, whichever worker served it and
    however many requests a worker tallied together in one turn of its event loop."""
    config = gateway_config(upstream, tmp_path, workers=2)
    config["redis"] = private_redis.url
    key = "sk-client-metered-0003"
    config["keys"] = [*config["keys"], {"key": key, "name": "metered", "tpm": 10**9, "budget_usd": 1000.0}]
    upstream.script(*[Reply.text("ok", usage=(100, 100))] * (2 * ATTEMPTS))  # gpt-4.1: $0.0010 each
    gateway = start_gateway(config, tmp_path, name="two-workers-metered")
    try:
        wait_for_workers(gateway)
        served = [chat(gateway, key) for _ in range(ATTEMPTS)]
        served += in_parallel([lambda: chat(gateway, key)] * ATTEMPTS)
    finally:
        gateway.stop()  # a worker records what it has tallied before it exits
    assert [status for status, _, _ in served] == [200] * (2 * ATTEMPTS)
    assert len({worker_of(headers) for _, headers, _ in served}) == 2
    client = redis.Redis.from_url(private_redis.url)
    try:
        tokens = sum(float(client.get(k) or 0) for k in client.scan_iter("modelwire:tpm:metered:*"))
        spend = float(client.get("modelwire:spend:metered") or 0)
    finally:
        client.close()
    assert tokens == 2 * ATTEMPTS * 200
    assert spend == pytest.approx(2 * ATTEMPTS * 0.001)


def test_limits_are_exact_across_two_replicas_sharing_redis(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path, pg_store: str
) -> None:
    """Two replicas (one worker each) on one Redis: requests alternating between them, then all at
    once split between them, each admit exactly RPM in total."""
    config = limited_config(upstream, tmp_path, workers=1, redis_url=private_redis.url)
    config["store"] = pg_store
    pair = start_replicas(config, tmp_path, prefix="redis-replica")
    try:
        sequential = [chat(pair[n % 2], SEQUENTIAL_KEY) for n in range(ATTEMPTS)]
        concurrent = in_parallel([lambda g=pair[n % 2]: chat(g, CONCURRENT_KEY) for n in range(ATTEMPTS)])
    finally:
        for gateway in pair:
            gateway.stop()
    assert_exactly_admitted(sequential, "sequential")
    assert_exactly_admitted(concurrent, "concurrent")
    assert len(upstream.requests) == 2 * RPM


def socket_turn(socket: ws_client.ClientConnection, **frame: Any) -> dict[str, Any]:
    """One response.create on an open socket; its last event (completed, failed or error)."""
    socket.send(json.dumps({"type": "response.create", **frame}))
    while (event := json.loads(socket.recv(timeout=20)))["type"] not in ("response.completed", "error"):
        pass
    return dict(event)


def open_once_freed(gateway: RunningGateway, within: float = 5.0) -> ws_client.ClientConnection:
    """A socket opened once the key's places are given back: a replica releases a place after its
    side of the socket has ended, a moment after the client's close returns."""
    deadline = time.monotonic() + within
    while True:
        try:
            return open_socket(gateway)
        except InvalidStatus as refused:
            if refused.response.status_code != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_websockets_across_two_replicas_sharing_redis(
    upstream: FakeUpstream, private_redis: PrivateRedis, tmp_path: Path, pg_store: str
) -> None:
    """Two replicas on one PostgreSQL and one Redis. A key's cap on open sockets holds across both
    (a third socket is refused before the handshake with the documented code, on either replica,
    until one closes; another key is not held back), and a stored response made over a socket on
    one replica is chained from over a socket on the other."""
    config = gateway_config(upstream, tmp_path)
    config.update(store=pg_store, redis=private_redis.url)
    config["server"] = {**config["server"], "websocket_sockets_per_key": 2}
    config["keys"] = [*config["keys"], {"key": "sk-client-other-socket-key", "name": "other"}]
    pair = start_replicas(config, tmp_path, prefix="ws-replica")
    try:
        upstream.script(Reply.text("First, on A."), Reply.text("Second, on B."))
        with open_socket(pair[0]) as on_a, open_socket(pair[1]) as on_b:
            first = socket_turn(on_a, model="stateless-resp", input="one")
            chained = {"previous_response_id": first["response"]["id"]}
            second = socket_turn(on_b, model="stateless-resp", input="two", **chained)
            refusals = []
            for gateway in pair:
                with pytest.raises(InvalidStatus) as refused:
                    open_socket(gateway).close()
                refusals.append(refused.value.response)
            with open_socket(pair[0], "sk-client-other-socket-key") as other:
                assert socket_turn(other, model="stateless-resp", input="x")["type"] == "response.completed"
        with open_once_freed(pair[0]) as again:  # both closed: places free again
            assert socket_turn(again, model="stateless-resp", input="y")["type"] == "response.completed"
    finally:
        for gateway in pair:
            gateway.stop()
    assert second["type"] == "response.completed", second
    sent = json.dumps(upstream.requests[1].body["input"])  # the chain, expanded on B from the store
    assert 0 < sent.index('"one"') < sent.index("First, on A.") < sent.index('"two"'), sent
    for response in refusals:
        assert response.status_code == 429
        body = json.loads(response.body)
        assert body["error"]["code"] == "websocket_connection_limit_reached", body
        assert "retry-after" in {name.lower() for name in response.headers}


def test_several_workers_without_redis_never_allow_more_sockets_than_the_cap(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Fail closed: two workers and no Redis cannot count a key's sockets together, so each allows
    its share (cap 2: one each). However the kernel spreads the upgrades, never more than 2 open."""
    config = gateway_config(upstream, tmp_path, workers=2)
    config["server"] = {**config["server"], "websocket_sockets_per_key": 2}
    gateway = start_gateway(config, tmp_path, name="socket-share")
    opened: list[ws_client.ClientConnection] = []
    refused = 0
    try:
        wait_for_workers(gateway)
        with contextlib.ExitStack() as stack:
            for _ in range(8):
                try:
                    opened.append(stack.enter_context(open_socket(gateway)))
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    refused += 1
    finally:
        gateway.stop()
    assert 1 <= len(opened) <= 2 and refused == 8 - len(opened), (len(opened), refused)


def test_workers_auto_is_one_per_core(upstream: FakeUpstream, tmp_path: Path) -> None:
    """``server.workers: auto`` loads, starts one worker per core, and serves."""
    cores = min(len(os.sched_getaffinity(0)), 64)  # the cores this process may run on
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers="auto"), tmp_path, name="auto")
    try:
        status, _, _ = chat(gateway)
        spawned = len(worker_pids(gateway.proc.pid))
        log = gateway.log()
    finally:
        gateway.stop()
    assert status == 200
    assert f"{cores} worker(s)" in log, log
    assert spawned == (cores if cores > 1 else 0), spawned


def test_the_parent_of_several_workers_holds_nothing_its_start_up_checks_loaded(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With two workers, ``modelwire serve`` checks the config, store and keys, then carries on (same
    pid) as a fresh process that only parents the workers: pydantic's core and sqlite3, which the
    checks loaded and each worker loads to serve, are not mapped in it (nor SQLAlchemy, in either).
    It still owns the workers' shared metrics directory, and removes it when it stops. A module in
    the directory it was started from is not imported in place of the one it names (a stray
    ``json.py`` there)."""
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "json.py").write_text("raise SystemExit('the json.py of the working directory was imported')\n")
    config = gateway_config(upstream, tmp_path, workers=2)
    gateway = start_gateway(config, tmp_path, name="parent", cwd=here)
    try:
        wait_for_workers(gateway)  # both done importing: start_gateway returns when one answers
        status, _, _ = chat(gateway)
        parent = Path(f"/proc/{gateway.proc.pid}/maps").read_text()
        pids = worker_pids(gateway.proc.pid)
        workers = [Path(f"/proc/{pid}/maps").read_text() for pid in pids]
        cmdline = Path(f"/proc/{gateway.proc.pid}/cmdline").read_bytes().split(b"\0")
        name = Path(f"/proc/{gateway.proc.pid}/comm").read_text().strip()
        entries = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        environ = dict(entry.split(b"=", 1) for entry in entries if entry)
    finally:
        gateway.stop()
    assert status == 200
    assert gateway.proc.returncode == 0
    shared_metrics = Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode())
    assert not shared_metrics.exists()  # the parent made it and removed it on its way out
    heavy = ("_pydantic_core", "/_sqlite3.")
    assert [lib for lib in heavy if lib in parent] == []
    assert len(workers) == 2 and all(lib in maps for maps in workers for lib in heavy)
    assert not any("/sqlalchemy/" in maps for maps in [parent, *workers])
    assert b"modelwire.gateway.supervisor" in cmdline, cmdline
    assert name == "modelwire"  # as ps and pgrep knew it before the exec


def test_workers_auto_counts_only_the_cores_the_gateway_may_use(
    upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    """``auto`` is "one per core": a gateway confined to one CPU (``taskset``, a container's
    ``--cpuset-cpus``) gets one worker, not one per CPU of the host competing for that one core."""
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(gateway_config(upstream_server, tmp_path, workers="auto")))
    program = (
        "import os, sys; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from modelwire.gateway.config import load_config; print(load_config(sys.argv[1]).server.workers)"
    )
    result = subprocess.run(
        [str(Path(MODELWIRE).parent / "python"), "-c", program, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1", f"auto gave {result.stdout.strip()} workers on one usable CPU"


def test_an_expired_store_key_with_limits_does_not_stop_several_workers_starting(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The start-up check is about keys that could be admitted: an expired key never is (401 before
    any limit), so its rpm must not keep a two-worker gateway without Redis from starting."""
    config = gateway_config(upstream, tmp_path, workers=2)
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [MODELWIRE, "keys", "create", "--name", "lapsed", "--rpm", str(RPM), "--expires", "1s"]
    created = subprocess.run(
        [*command, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    time.sleep(1.1)  # past its expiry (the CLI's own start-up already used most of it)
    refused: RuntimeError | None = None
    try:
        gateway = start_gateway(config, tmp_path, name="lapsed")
    except RuntimeError as exc:
        refused = exc
    assert refused is None, f"refused to start over an expired key: {refused}"
    try:
        status, _, _ = chat(gateway)
        lapsed = chat(gateway, created.stdout.strip())
    finally:
        gateway.stop()
    assert status == 200
    assert lapsed[0] == 401 and lapsed[2]["error"]["code"] == "expired_api_key", lapsed


# ----------------------------------------------------------------------------------------------
# Several workers: metrics, and store keys with limits
# ----------------------------------------------------------------------------------------------


def requests_total(exposition: str) -> list[tuple[dict[str, str], float]]:
    """Every ``modelwire_requests_total`` series of a scrape: its labels and value."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "modelwire_requests_total"
    ]


def sample_names(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def scrape(gateway: RunningGateway) -> str:
    """One ``/metrics`` scrape, on a new connection (so successive scrapes may reach other workers)."""
    status, _, payload = request(gateway, "GET", "/metrics")
    assert status == 200
    return payload.decode()


def settled(gateway: RunningGateway, sent: int) -> None:
    """Wait until a scrape counts ``sent`` requests: a request is counted as its handler ends, just
    after the client has its last byte, so a scrape at once may still miss the newest one or two."""
    deadline = time.monotonic() + 5
    while sum(value for _, value in requests_total(scrape(gateway))) < sent and time.monotonic() < deadline:
        time.sleep(0.05)


def test_metrics_add_up_across_workers(upstream: FakeUpstream, tmp_path: Path) -> None:
    """``server.workers: 2``: after chat, embeddings and unknown-model requests served by both
    workers, every scrape (whichever worker takes it) counts every request, and no ``_created``."""
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="metrics")
    chats, embeddings, missing = 10, 6, 4
    calls: list[Callable[[], tuple[int, dict[str, str], Any]]] = [
        *[lambda: chat(gateway)] * chats,
        *[lambda: post(gateway, "/v1/embeddings", {"model": "embed", "input": "hello"})] * embeddings,
        *[lambda: chat(gateway, model="no-such-model")] * missing,
    ]
    replies: list[tuple[int, dict[str, str], Any]] = []
    try:
        probes = wait_for_workers(gateway)
        # Which worker accepts a connection is the kernel's choice: one may take a whole batch.
        for _ in range(5):
            replies += in_parallel(calls)
            if len({worker_of(headers) for _, headers, _ in replies}) == 2:
                break
        rounds = len(replies) // len(calls)
        sent = probes + len(replies)
        settled(gateway, sent)
        scrapes = [scrape(gateway) for _ in range(4)] + in_parallel([lambda: scrape(gateway)] * 8)
    finally:
        gateway.stop()
    assert [status for status, _, _ in replies] == ([200] * (chats + embeddings) + [404] * missing) * rounds
    assert len({worker_of(headers) for _, headers, _ in replies}) == 2  # both workers served some
    for exposition in scrapes:
        series = requests_total(exposition)
        assert sum(value for _, value in series) == sent, series
        embedded = sum(value for labels, value in series if labels["model"] == "embed")
        assert embedded == embeddings * rounds, series
        assert sum(value for labels, value in series if labels["status"] == "404") == missing * rounds, series
        created = sorted(name for name in sample_names(exposition) if name.endswith("_created"))
        assert created == [], created


def test_a_store_key_with_limits_is_refused_when_workers_cannot_share_counts(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Two workers without Redis, and a key with an rpm created in the store while they run: every
    request with it is refused with a 503 in the client's own dialect saying limits need Redis (fail
    closed: more than its rpm, and none admitted), in the shapes of OpenAI Chat, OpenAI Responses and
    Anthropic (whose "unavailable" is 529)."""
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="store-key")
    try:
        wait_for_workers(gateway)
        created = gateway.cli("keys", "create", "--name", "metered-store-key", "--rpm", str(RPM))
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        known = delays_until([gateway], secret, 200, time.monotonic())
        time.sleep(0.6)  # the first 200 came from one worker; let every worker's key sync run too
        chats = [chat(gateway, secret) for _ in range(RPM + 3)]
        responses = post(gateway, "/v1/responses", {"model": "stateless-resp", "input": "q"}, secret)
        anthropic = post(
            gateway, "/v1/messages", {"model": "chat-model", "max_tokens": 16, "messages": USER}, secret
        )
        with sdk(gateway, secret) as client, pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
    finally:
        gateway.stop()
    assert known != [None], "the store key never reached the gateway"
    for status, _, body in [*chats, responses]:
        assert status == 503, body
        assert body["error"]["code"] == "limits_need_redis", body
        assert "metered-store-key" in body["error"]["message"] and "redis" in body["error"]["message"]
    status, _, body = anthropic  # Anthropic has no 503: its unavailable is 529, which its clients retry
    assert (status, body["type"], body["error"]["type"]) == (529, "error", "overloaded_error"), body
    assert "metered-store-key" in body["error"]["message"] and "redis" in body["error"]["message"], body
    assert raised.value.status_code == 503
    assert upstream.requests == []  # nothing was admitted


def test_new_connections_spread_over_both_workers(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Each worker listens on a socket of its own (``SO_REUSEPORT``): a burst of new connections is
    spread over them by the kernel. On one shared socket the first worker to wake accepted every
    connection waiting, and could take a whole burst (a pooled client then stayed on it)."""
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="spread")
    try:
        wait_for_workers(gateway)
        served = Counter(worker_of(headers) for headers in _burst_of_connections(gateway, 32))
    finally:
        gateway.stop()
    # Spread by a hash of each connection's ports: fewer than 6 of 32 on one worker is a 1-in-10,000 draw.
    assert len(served) == 2 and min(served.values()) >= 6, served


def _burst_of_connections(gateway: RunningGateway, count: int) -> list[dict[str, str]]:
    """``count`` connections opened at once (as wrk or a client pool opens them), then a request on
    each: the headers of each answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    conns = [socket.create_connection((host, int(port)), timeout=30) for _ in range(count)]
    ask = f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
    answers = []
    try:
        for conn in conns:
            conn.sendall(f"{ask}Connection: close\r\n\r\n".encode())
        for conn in conns:
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            head = reply.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            assert head[0].startswith("HTTP/1.1 200"), head
            answers.append({k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])})
    finally:
        for conn in conns:
            conn.close()
    return answers


def test_a_port_held_by_several_workers_is_not_shared_with_a_second_gateway(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The workers' ``SO_REUSEPORT`` sockets let them share the port, not anyone else: a second
    gateway (one worker or several) started on it exits saying the address is in use, and the first
    answers every request."""
    first = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="first")
    try:
        wait_for_workers(first)
        for workers in (1, 2):
            config = gateway_config(upstream, tmp_path, workers=workers)
            taken = first.config["server"]["port"]
            config["server"] = {**config.get("server", {}), "host": "127.0.0.1", "port": taken}
            path = tmp_path / f"second-{workers}.yaml"
            path.write_text(yaml.safe_dump(config))
            second = subprocess.run(
                [MODELWIRE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
            )
            assert second.returncode != 0, second.stdout + second.stderr
            assert "address already in use" in second.stdout + second.stderr
        answers = in_parallel([lambda: request(first, "GET", "/v1/models")] * 16)
    finally:
        first.stop()
    assert [status for status, _, _ in answers] == [200] * 16


def test_a_killed_worker_is_replaced_and_its_share_of_connections_served(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A worker killed outright takes its listening socket with it: the kernel sends every new
    connection to the survivor until the replacement listens, and then to both again."""
    gateway = start_gateway(gateway_config(upstream, tmp_path, workers=2), tmp_path, name="killed")
    try:
        wait_for_workers(gateway)
        before = set(worker_pids(gateway.proc.pid))
        victim = next(iter(before))
        os.kill(victim, signal.SIGKILL)
        while not _exited(victim):
            time.sleep(0.01)
        during = in_parallel([lambda: request(gateway, "GET", "/v1/models")] * 16)
        deadline = time.monotonic() + 30
        while len(after := set(worker_pids(gateway.proc.pid)) - before) < 1:
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.1)
        wait_for_workers(gateway)  # the replacement answers too
        burst = in_parallel([lambda: request(gateway, "GET", "/v1/models")] * 32)
    finally:
        gateway.stop()
    assert [status for status, _, _ in during + burst] == [200] * 48
    assert len(after) == 1 and len(Counter(worker_of(headers) for _, headers, _ in burst)) == 2


def _exited(pid: int) -> bool:
    """Whether every thread of ``pid`` has exited, so its sockets are closed. Its main thread shows
    as a zombie while the others (the executor's, the writers') may still be exiting and holding the
    process's files, its listening socket among them: connections the kernel gave that socket then
    were reset when the last thread closed it."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True  # reaped
    return threads == [str(pid)] and state == "Z"
