"""Background responses (``background: true``) end to end: the official ``openai`` SDK against real
gateway processes on the fake upstream.

Over stateless and Chat upstreams the gateway runs them itself (answering at once, polled, followed
and resumed as streams, cancelled, accounted like the foreground, kept across a restart only once
finished); over native upstreams everything passes through to the upstream that runs them. Every
document and event the gateway renders is checked against the official OpenAPI schemas.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from modelwire.dialects.sse import KEEPALIVE

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import (
    CLIENT_KEY,
    RunningGateway,
    base_config,
    request,
    sse_events,
    start_gateway,
    usage_rows,
)
from .services import postgres_schema
from .spec import assert_openai

T = TypeVar("T")

# stateless-resp: a stateless Responses upstream (the body passes through); chat-model: a Chat
# upstream (translated). The gateway runs background responses for both.
RUN_HERE = ["stateless-resp", "chat-model"]
CHAT_ONLY_KEY = "sk-client-chat-only-0000"
RPM_KEY = "sk-client-rpm-000000000"
TEXT = "one two three four five six"


@pytest.fixture(scope="module", autouse=True)
def clean_log(gateway: RunningGateway) -> Iterator[None]:
    """Whatever happened to a background response, the log says it without a traceback."""
    yield
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def slow(text: str = TEXT, delay: float = 0.3, **kw: Any) -> Reply:
    """A streamed answer whose events come ``delay`` apart (the gateway always streams its runs)."""
    return Reply.text(text, chunk_delay=delay, **kw)


def until(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 15) -> T:
    """Poll ``fetch`` until ``done`` says so; the last value either way."""
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = fetch()
    return value


def finished(client: openai.OpenAI, response_id: str) -> Any:
    return until(
        lambda: client.responses.retrieve(response_id), lambda r: r.status not in ("queued", "in_progress")
    )


def raw_json(gateway: RunningGateway, method: str, path: str, key: str = CLIENT_KEY) -> tuple[int, Any]:
    status, _, body = request(gateway, method, path, headers={"Authorization": f"Bearer {key}"})
    return status, json.loads(body) if body else None


# ----------------------------------------------------------------------------------------------
# Run by the gateway: polling
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", RUN_HERE)
def test_a_background_response_answers_at_once_and_is_polled_to_its_end(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway, model: str
) -> None:
    upstream.script(Reply.delay(1.5, Reply.text("Done in the background.", usage=(7, 3))))
    raw = client.responses.with_raw_response.create(model=model, input="take your time", background=True)
    created = raw.parse()  # in progress: the upstream has not even answered yet
    assert_openai("Response", json.loads(raw.content))
    assert (created.status, created.background, created.output) == ("in_progress", True, [])
    assert client.responses.retrieve(created.id).status == "in_progress"
    done = finished(client, created.id)
    assert (done.id, done.status, done.background) == (created.id, "completed", True)
    assert done.output_text == "Done in the background."
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (7, 3)
    status, doc = raw_json(gateway, "GET", f"/v1/responses/{created.id}")
    assert status == 200
    assert_openai("Response", doc)
    assert "background" not in upstream.last.body  # the upstream answered it in the foreground
    [row] = usage_rows(gateway, raw.headers["x-request-id"])  # one request, accounted once
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (7, 3, 200)
    assert row["public_model"] == model and row["error"] is None


def test_a_background_response_chains_like_any_other(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    first = client.responses.create(model="stateless-resp", input="My name is Ada.")
    upstream.script(Reply.text("You are Ada."))
    created = client.responses.create(
        model="stateless-resp", input="Who am I?", previous_response_id=first.id, background=True
    )
    assert created.previous_response_id == first.id
    done = finished(client, created.id)
    assert done.previous_response_id == first.id and done.output_text == "You are Ada."
    users = [i.get("content") for i in upstream.last.body["input"] if i.get("role") == "user"]
    assert users == ["My name is Ada.", "Who am I?"]
    upstream.script(Reply.echo())
    client.responses.create(model="stateless-resp", input="And now?", previous_response_id=done.id)
    users = [i.get("content") for i in upstream.last.body["input"] if i.get("role") == "user"]
    assert users == ["My name is Ada.", "Who am I?", "And now?"]


def test_a_failing_upstream_makes_a_failed_response(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.error(400, "the upstream refuses this input", code="invalid_value"))
    created = client.responses.create(model="chat-model", input="refused", background=True)
    done = finished(client, created.id)
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "server_error"  # the enum has no other fit; the message says it all
    assert "refuses this input" in done.error.message


# ----------------------------------------------------------------------------------------------
# Run by the gateway: refusals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*RUN_HERE, "resp-model"])
def test_background_needs_store(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=model, input="q", background=True, store=False)
    body: Any = info.value.body
    assert body["type"] == "invalid_request_error" and body["param"] == "store"
    assert "store" in body["message"]
    assert upstream.requests == []


def test_background_must_be_a_boolean(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    status, _, body = request(
        gateway,
        "POST",
        "/v1/responses",
        json.dumps({"model": "chat-model", "input": "q", "background": "yes"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 400 and json.loads(body)["error"]["param"] == "background"
    assert upstream.requests == []


def test_an_unknown_chain_is_refused_at_once(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(
            model="stateless-resp", input="q", previous_response_id="resp_nowhere", background=True
        )
    assert info.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    assert upstream.requests == []


def test_another_key_cannot_see_follow_or_cancel_it(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(slow(delay=0.2))
    with openai.OpenAI(base_url=gateway.v1, api_key=CHAT_ONLY_KEY, max_retries=0) as owner:
        created = owner.responses.create(model="chat-model", input="mine", background=True)
        for method, path in (
            ("GET", f"/v1/responses/{created.id}"),
            ("GET", f"/v1/responses/{created.id}?stream=true"),
            ("GET", f"/v1/responses/{created.id}/input_items"),
            ("POST", f"/v1/responses/{created.id}/cancel"),
            ("DELETE", f"/v1/responses/{created.id}"),
        ):
            status, doc = raw_json(gateway, method, path)  # CLIENT_KEY: another key
            assert status == 404, (method, path, doc)
        assert finished(owner, created.id).status == "completed"  # untouched by any of that


def test_background_requests_count_against_the_keys_limits(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    with openai.OpenAI(base_url=gateway.v1, api_key=RPM_KEY, max_retries=0) as limited:
        created = [limited.responses.create(model="chat-model", input="q", background=True) for _ in range(2)]
        with pytest.raises(openai.RateLimitError):  # rpm: 2
            limited.responses.create(model="chat-model", input="q", background=True)
        assert [finished(limited, r.id).status for r in created] == ["completed", "completed"]


def test_a_bad_starting_after_is_a_400(client: openai.OpenAI, gateway: RunningGateway) -> None:
    created = client.responses.create(model="chat-model", input="q", background=True)
    finished(client, created.id)
    for value in ("soon", "-2"):
        status, doc = raw_json(
            gateway, "GET", f"/v1/responses/{created.id}?stream=true&starting_after={value}"
        )
        assert status == 400 and doc["error"]["param"] == "starting_after"


# ----------------------------------------------------------------------------------------------
# Run by the gateway: streams
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", RUN_HERE)
def test_a_streamed_background_response_is_resumed_after_the_client_left(
    upstream: FakeUpstream, client: openai.OpenAI, model: str
) -> None:
    upstream.script(slow(delay=0.2))
    stream = client.responses.create(model=model, input="stream it", stream=True, background=True)
    seen: list[Any] = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break  # the client goes away mid-answer
    stream.close()
    assert [e.type for e in seen[:2]] == ["response.created", "response.in_progress"]
    response_id, last = seen[0].response.id, seen[-1].sequence_number
    assert seen[0].response.background is True
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert "".join(e.delta for e in [*seen, *rest] if e.type == "response.output_text.delta") == TEXT
    assert rest[-1].type == "response.completed" and rest[-1].response.id == response_id
    assert finished(client, response_id).output_text == TEXT


def test_a_finished_runs_events_are_the_specs_and_start_over(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.script(Reply.text("short answer"))
    created = client.responses.create(model="chat-model", input="q", background=True)
    finished(client, created.id)
    status, headers, body = request(gateway, "GET", f"/v1/responses/{created.id}?stream=true")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(data) for _, data in sse_events(body)]
    for event in events:
        assert_openai("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    lifecycle = [e for e in events if "response" in e]
    assert {e["response"]["id"] for e in lifecycle} == {created.id}
    assert [e["type"] for e in lifecycle] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]


def test_a_follower_gets_keepalives_while_the_upstream_thinks(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.script(Reply.delay(3.0, Reply.text("late")))
    created = client.responses.create(model="chat-model", input="q", background=True)
    status, _, body = request(gateway, "GET", f"/v1/responses/{created.id}?stream=true&starting_after=1")
    assert status == 200
    assert body.startswith(KEEPALIVE)  # the upstream took a second: keep-alives came first
    types = [json.loads(data)["type"] for _, data in sse_events(body)]
    assert types[0] == "response.output_item.added" and types[-1] == "response.completed"


# ----------------------------------------------------------------------------------------------
# Run by the gateway: cancel and delete
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", RUN_HERE)
def test_cancel_stops_a_running_response(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway, model: str
) -> None:
    upstream.script(slow(delay=1.0))  # about six seconds of answer
    raw = client.responses.with_raw_response.create(model=model, input="long", background=True)
    created = raw.parse()
    time.sleep(0.5)
    started = time.monotonic()
    cancelled = client.responses.cancel(created.id)
    assert time.monotonic() - started < 3.0  # the run was stopped, not waited for (about 5 s more)
    assert (cancelled.id, cancelled.status) == (created.id, "cancelled")
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # cancelling twice is idempotent
    [row] = usage_rows(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["error"]) == (499, "cancelled")
    assert row["input_tokens"] > 0  # counted offline, as for any request cut short


def test_cancel_ends_a_followers_stream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(slow(delay=1.0))
    stream = client.responses.create(model="chat-model", input="long", stream=True, background=True)
    first = next(iter(stream))
    client.responses.cancel(first.response.id)  # type: ignore[union-attr]
    rest = list(stream)  # ends: no event says cancelled
    assert all(e.type != "response.completed" for e in rest)
    assert client.responses.retrieve(first.response.id).status == "cancelled"  # type: ignore[union-attr]


def test_cancelling_a_finished_response_returns_it(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    created = client.responses.create(model="stateless-resp", input="q", background=True)
    done = finished(client, created.id)
    assert client.responses.cancel(created.id).status == done.status == "completed"


def test_only_background_responses_can_be_cancelled(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    plain = client.responses.create(model="stateless-resp", input="q")
    upstream.stored.clear()  # the one fake also plays a native upstream: this route's server keeps nothing
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(plain.id)
    assert "background" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_unknown_anywhere")


def test_deleting_a_running_response_stops_it_for_good(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(slow(delay=0.1))  # about a second and a half of answer
    created = client.responses.create(model="chat-model", input="q", background=True)
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    time.sleep(3)  # longer than the answer would have taken: the run does not write it back
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


# ----------------------------------------------------------------------------------------------
# Native upstreams run them themselves
# ----------------------------------------------------------------------------------------------


def test_a_native_upstream_runs_it_and_answers_for_it(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.script(Reply.text("upstream did it", usage=(21, 8)))
    raw = client.responses.with_raw_response.create(model="resp-model", input="q", background=True)
    created = raw.parse()
    assert created.status == "queued" and created.id.startswith("resp_fake")  # the upstream's own
    assert upstream.last.body["background"] is True
    done = client.responses.retrieve(created.id)  # the fake finishes at its first poll
    assert done.status == "completed" and upstream.last.path == f"/v1/responses/{created.id}"
    # The usage row waits for the end upstream (the gateway polls for it), then counts it once.
    rows = usage_rows(gateway, raw.headers["x-request-id"])
    assert [(r["input_tokens"], r["output_tokens"], r["status"]) for r in rows] == [(21, 8, 200)]
    polls = [
        r for r in upstream.requests if r.headers.get("x-client-request-id") == raw.headers["x-request-id"]
    ]
    assert [r.method for r in polls][:2] == ["POST", "GET"]  # with the key that created it
    assert {r.headers["authorization"] for r in polls} == {polls[0].headers["authorization"]}

    raw = client.responses.with_raw_response.create(model="resp-model", input="cancel me", background=True)
    other = raw.parse()
    assert client.responses.cancel(other.id).status == "cancelled"
    assert (upstream.last.method, upstream.last.path) == ("POST", f"/v1/responses/{other.id}/cancel")
    [row] = usage_rows(gateway, raw.headers["x-request-id"])  # no usage upstream: the input, offline
    assert row["input_tokens"] > 0 and row["output_tokens"] == 0


def test_a_native_upstreams_stream_resumes_upstream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="resp-model", input="q", stream=True, background=True))
    response_id = events[0].response.id  # type: ignore[union-attr]
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=3))
    assert upstream.last.query == {"stream": "true", "starting_after": "3"}
    assert [e.sequence_number for e in rest] == [e.sequence_number for e in events[4:]]
    assert rest[-1].type == "response.completed"


# ----------------------------------------------------------------------------------------------
# Restarts and replicas
# ----------------------------------------------------------------------------------------------


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)


def test_only_finished_responses_outlive_a_restart(upstream: FakeUpstream, tmp_path: Path) -> None:
    """A finished response is in the store and any later process answers it; one still running at
    a stop gets the grace period, then ends as failed (and is accounted as cut)."""
    config = base_config(upstream, tmp_path)
    config["server"] = {**config["server"], "grace_seconds": 1}
    before = start_gateway(config, tmp_path, name="before")
    try:
        with sdk(before) as client:
            upstream.script(Reply.text("made before the restart"))
            done = finished(
                client, client.responses.create(model="chat-model", input="q", background=True).id
            )
            upstream.script(slow(delay=1.0))  # about fourteen seconds of answer
            raw = client.responses.with_raw_response.create(model="chat-model", input="long", background=True)
            running = raw.parse()
    finally:
        started = time.monotonic()
        assert before.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8  # the grace period, not the answer's fourteen seconds
    assert "Traceback" not in before.log()
    after = start_gateway(config, tmp_path, name="after")
    try:
        with sdk(after) as client:
            kept = client.responses.retrieve(done.id)
            assert (kept.status, kept.output_text) == ("completed", "made before the restart")
            cut = client.responses.retrieve(running.id)
            assert cut.status == "failed" and cut.error is not None and "shut down" in cut.error.message
            status, _, body = request(after, "GET", f"/v1/responses/{done.id}?stream=true&starting_after=9")
            [(name, data)] = sse_events(body)  # its events died with the process: the end alone
            event = json.loads(data)
            assert (status, name, event["sequence_number"]) == (200, "response.completed", 10)
            assert_openai("ResponseStreamEvent", event)
        [row] = usage_rows(after, raw.headers["x-request-id"])
        assert (row["status"], row["error"]) == (503, "shutdown")
    finally:
        after.stop()
    assert "Traceback" not in after.log()


@pytest.fixture(scope="module")
def replicas(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningGateway]]:
    """Two gateways on one PostgreSQL store (a schema of this module's own)."""
    tmp = tmp_path_factory.mktemp("background-replicas")
    with postgres_schema() as url:
        config = {**base_config(upstream_server, tmp), "store": url}
        running = [start_gateway(config, tmp, name=f"replica-{n}") for n in range(2)]
        try:
            yield running
        finally:
            for gateway in running:
                gateway.stop()
            for gateway in running:
                assert "Traceback" not in gateway.log(), gateway.log()[-4000:]


def test_another_replica_polls_and_cancels_a_run(
    upstream: FakeUpstream, replicas: list[RunningGateway]
) -> None:
    a, b = replicas
    upstream.script(slow(delay=0.5))  # about seven seconds of answer
    with sdk(a) as on_a, sdk(b) as on_b:
        raw = on_a.responses.with_raw_response.create(model="chat-model", input="long", background=True)
        created = raw.parse()
        assert on_b.responses.retrieve(created.id).status == "in_progress"  # the stored row says so
        status, doc = raw_json(b, "GET", f"/v1/responses/{created.id}?stream=true")
        assert (status, doc["error"]["code"]) == (409, "response_in_progress_elsewhere")
        assert on_b.responses.cancel(created.id).status == "cancelled"
        stopped = until(lambda: on_a.responses.retrieve(created.id).status, lambda s: s == "cancelled", 5)
        assert stopped == "cancelled"  # the run read the cancel from the store within a second or so
        [row] = usage_rows(a, raw.headers["x-request-id"])
        assert (row["status"], row["error"]) == (499, "cancelled")
        assert on_b.responses.cancel(created.id).status == "cancelled"


def test_another_replica_deletes_a_run_for_good(
    upstream: FakeUpstream, replicas: list[RunningGateway]
) -> None:
    a, b = replicas
    upstream.script(slow(delay=0.3))
    with sdk(a) as on_a, sdk(b) as on_b:
        created = on_a.responses.create(model="chat-model", input="long", background=True)
        on_b.responses.delete(created.id)
        time.sleep(6)  # past the answer's end: the run stopped, and wrote nothing back
        for client in (on_a, on_b):
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(created.id)


def test_another_replica_answers_a_finished_run(
    upstream: FakeUpstream, replicas: list[RunningGateway]
) -> None:
    a, b = replicas
    upstream.script(Reply.text("finished on a"))
    with sdk(a) as on_a, sdk(b) as on_b:
        created = on_a.responses.create(model="stateless-resp", input="q", background=True)
        done = finished(on_b, created.id)
        assert (done.status, done.output_text) == ("completed", "finished on a")
        events = list(on_b.responses.retrieve(created.id, stream=True))
        assert [e.type for e in events] == ["response.completed"]
        assert events[0].response.output_text == "finished on a"  # type: ignore[union-attr]
        assert len(list(on_a.responses.retrieve(created.id, stream=True))) > 3  # all of them, where it ran
