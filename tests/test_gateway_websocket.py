"""Responses over WebSocket: the official SDK's ``responses.connect()`` against a real gateway.

Each ``response.create`` frame must be served like the HTTP request it stands for (same routing,
keys, usage rows), its events must be the SSE stream's payloads as text frames (validated against
the spec's ``ResponseStreamEvent``), ``previous_response_id`` must chain on the connection with
``store: false``, and a refused upgrade must be an HTTP error before the handshake.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway
from .spec import assert_openai

# openai's connect() opens its websockets connection in a way websockets 17.1+ deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(gateway: RunningGateway, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def events_until_done(connection: Any) -> list[Any]:
    events = []
    for event in connection:
        events.append(event)
        if event.type in ("response.completed", "response.incomplete", "response.failed", "error"):
            return events
    raise AssertionError("the socket closed before the response ended")


def raw_frames(url: str, frames: list[dict[str, Any]], key: str = CLIENT_KEY) -> list[dict[str, Any]]:
    """Send ``frames`` on one socket; every server frame until each response (or error) ended."""
    out: list[dict[str, Any]] = []
    with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        for frame in frames:
            socket.send(json.dumps(frame))
            while True:
                doc = json.loads(socket.recv(timeout=20))
                out.append(doc)
                if doc["type"] in ("response.completed", "response.failed", "error"):
                    break
    return out


def ws_url(gateway: RunningGateway, path: str = "/v1/responses") -> str:
    return gateway.url.replace("http://", "ws://") + path


@pytest.mark.parametrize("model", ["resp-model", "chat-model"])
def test_a_response_over_the_socket(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    upstream.script(Reply.text("Hello over a socket."))
    with client(gateway).responses.connect() as connection:
        connection.response.create(model=model, input="Say hello")
        events = events_until_done(connection)
    assert events[0].type == "response.created"
    final = events[-1]
    assert final.type == "response.completed", final
    assert final.response.output_text == "Hello over a socket."
    assert final.response.model in (model, "gpt-4.1")  # forwarded answers name the upstream's model
    assert final.response.usage is not None and final.response.usage.output_tokens > 0
    sent = upstream.last
    if model == "resp-model":  # a native OpenAI upstream: carried on over its own socket
        assert sent.websocket and sent.body["type"] == "response.create" and "stream" not in sent.body
    else:  # a Chat upstream: over HTTP, streamed
        assert not sent.websocket and sent.body["stream"] is True and "type" not in sent.body
    assert "stream_id" not in sent.body


def test_events_are_the_streams_payloads(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.text("Spec-shaped events."))
    frames = raw_frames(ws_url(gateway), [{"type": "response.create", "model": "resp-model", "input": "hi"}])
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    for frame in frames:
        assert_openai("ResponseStreamEvent", frame)


def test_a_tool_loop_chains_on_the_connection_with_store_false(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """``store: false``: only this connection remembers the last response, and it is enough."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city":"Paris"}')]), Reply.text("Sunny in Paris."))
    with client(gateway).responses.connect() as connection:
        connection.response.create(
            model="chat-model",
            input="Weather in Paris?",
            tools=[TOOL],
            store=False,  # type: ignore[list-item]
        )
        first = events_until_done(connection)[-1].response
        call = next(item for item in first.output if item.type == "function_call")
        connection.response.create(
            model="chat-model",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
            tools=[TOOL],  # type: ignore[list-item]
            store=False,
        )
        second = events_until_done(connection)[-1]
    assert second.type == "response.completed" and second.response.output_text == "Sunny in Paris."
    assert second.response.previous_response_id == first.id  # expanded here, reported as given
    messages = upstream.last.body["messages"]  # the Chat upstream got the whole conversation
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]


def test_an_unknown_previous_response_is_the_documented_error(gateway: RunningGateway) -> None:
    frame = {
        "type": "response.create",
        "model": "chat-model",
        "input": "more",
        "store": False,
        "previous_response_id": "resp_nowhere",
    }
    (error,) = raw_frames(ws_url(gateway), [frame])
    assert error["type"] == "error" and error["status"] == 404
    assert error["error"]["code"] == "previous_response_not_found"
    assert error["error"]["param"] == "previous_response_id"


def test_item_references_over_the_socket_are_resolved_or_refused(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """An earlier stored answer named by its item id alone reaches a Chat upstream as that answer,
    as over HTTP; an item the gateway does not hold is OpenAI's 404 on the socket, sent nowhere."""
    upstream.script(Reply.text("Your name is Ada, noted."), Reply.text("Ada."))
    first = client(gateway).responses.create(model="chat-model", input="My name is Ada.")
    turn = {
        "type": "response.create",
        "model": "chat-model",
        "input": [
            {"role": "user", "content": "My name is Ada."},
            {"type": "item_reference", "id": first.output[0].id},
            {"role": "user", "content": "What is my name?"},
        ],
    }
    unknown = {**turn, "input": [{"type": "item_reference", "id": "msg_never_minted"}]}
    frames = raw_frames(ws_url(gateway), [turn, unknown])
    (completed,) = [f for f in frames if f["type"] == "response.completed"]
    assert completed["response"]["output"][0]["content"][0]["text"] == "Ada."
    turns = [(m["role"], m["content"]) for m in upstream.last.body["messages"]]
    assert turns == [
        ("user", "My name is Ada."),
        ("assistant", "Your name is Ada, noted."),
        ("user", "What is my name?"),
    ]
    assert len(upstream.requests) == 2  # the refused turn went nowhere
    error = frames[-1]
    assert error["type"] == "error" and error["status"] == 404
    assert error["error"]["param"] == "input" and error["error"]["type"] == "invalid_request_error"
    assert "Item with id 'msg_never_minted' not found." in error["error"]["message"]


def test_lanes_echo_their_stream_id(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.text("one"), Reply.text("two"))
    frames = raw_frames(
        ws_url(gateway),
        [
            {"type": "response.create", "model": "resp-model", "input": "a", "stream_id": "lane-a"},
            {"type": "response.create", "model": "resp-model", "input": "b", "stream_id": "lane.b"},
        ],
    )
    lanes = [f["stream_id"] for f in frames]
    split = lanes.index("lane.b")
    assert set(lanes[:split]) == {"lane-a"} and set(lanes[split:]) == {"lane.b"}
    for frame in frames:
        assert_openai("ResponseStreamEvent", {k: v for k, v in frame.items() if k != "stream_id"})


def test_upstream_and_frame_errors_are_socket_error_events(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    upstream.script(Reply.error(400, "Invalid value for 'input'.", code="invalid_value"))
    frames = raw_frames(
        ws_url(gateway),
        [
            {"type": "response.create", "model": "resp-model", "input": "x"},
            {"type": "response.cancel"},
            {"type": "response.create", "model": "no-such-model-anywhere", "input": "x", "stream_id": "l1"},
        ],
    )
    upstream_error, unknown_type, unknown_model = frames
    assert (
        upstream_error["status"] == 400 and upstream_error["error"]["message"] == "Invalid value for 'input'."
    )
    assert unknown_type["status"] == 400 and "response.create" in unknown_type["error"]["message"]
    assert unknown_model["status"] == 404 and unknown_model["stream_id"] == "l1"
    for event in frames:
        assert set(event) <= {"type", "status", "error", "stream_id", "sequence_number"}
        assert {"type", "message"} <= set(event["error"])


def test_each_response_is_accounted_like_http(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """One request line (and usage row) per response, each with its own request id and tokens."""
    upstream.script(Reply.text("counted"), Reply.text("counted again"))
    before = len(gateway.log().splitlines())
    frames = raw_frames(
        ws_url(gateway),
        [
            {"type": "response.create", "model": "reasoner", "input": "a"},
            {"type": "response.create", "model": "reasoner", "input": "b"},
        ],
    )
    assert [f["type"] for f in frames].count("response.completed") == 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in gateway.log().splitlines()[before:] if "model=reasoner" in line]
        if len(lines) == 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2, lines
    assert len({line.split("request_id=")[1].split()[0] for line in lines}) == 2
    assert all("status=200" in line and "output_tokens=5" in line and "key=all" in line for line in lines)


def test_a_bad_key_is_refused_before_the_handshake(gateway: RunningGateway) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(gateway), additional_headers={"Authorization": "Bearer sk-wrong-key-000000"})
    assert refused.value.response.status_code == 401
    body = json.loads(refused.value.response.body or b"{}")
    assert body["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as missing:
        ws_client.connect(ws_url(gateway))
    assert missing.value.response.status_code == 401


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/nowhere"])  # /v1/realtime: its own tests
def test_other_paths_refuse_the_upgrade_cleanly(gateway: RunningGateway, path: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(gateway, path), additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert refused.value.response.status_code == 404
    assert "/v1/responses" in json.loads(refused.value.response.body or b"{}")["error"]["message"]
    log = gateway.log()
    assert "Traceback" not in log and "without completing handshake" not in log


def test_a_client_gone_mid_answer_is_a_cut_request_not_a_crash(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    upstream.script(Reply.text("word " * 40, chunk_delay=0.05))
    before = len(gateway.log().splitlines())
    with ws_client.connect(
        ws_url(gateway), additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    ) as socket:
        socket.send(json.dumps({"type": "response.create", "model": "stateless-resp", "input": "talk"}))
        assert json.loads(socket.recv(timeout=20))["type"] == "response.created"
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        lines = [line for line in gateway.log().splitlines()[before:] if "model=stateless-resp" in line]
        time.sleep(0.05)
    assert lines and "status=499" in lines[0] and "error=client_closed" in lines[0]
    assert "Traceback" not in gateway.log()


def collect(socket: Any, done: int) -> list[dict[str, Any]]:
    """Server frames until ``done`` responses (or errors) have ended."""
    out: list[dict[str, Any]] = []
    while done:
        doc = json.loads(socket.recv(timeout=20))
        out.append(doc)
        if doc["type"] in ("response.completed", "response.failed", "error"):
            done -= 1
    return out


def text_of(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def test_lanes_run_side_by_side_each_in_order(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.for_model("gpt-5-pro", Reply.text("slow " * 20, chunk_delay=0.05), Reply.text("after"))
    upstream.for_model("gpt-4.1", Reply.text("quick"))
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with ws_client.connect(ws_url(gateway), additional_headers=headers) as socket:
        for frame in (
            {"type": "response.create", "model": "pro", "input": "long", "stream_id": "slow"},
            {"type": "response.create", "model": "pro", "input": "next", "stream_id": "slow"},
            {"type": "response.create", "model": "resp-model", "input": "short", "stream_id": "fast"},
        ):
            socket.send(json.dumps(frame))
        frames = collect(socket, 3)
    ends = [(f["stream_id"], text_of(f["response"])) for f in frames if f["type"] == "response.completed"]
    assert ends[0] == ("fast", "quick")  # not held behind the slow lane
    assert [text for lane, text in ends if lane == "slow"] == ["slow " * 20, "after"]  # FIFO
    slow = [f for f in frames if f["stream_id"] == "slow"]
    first_done = next(i for i, f in enumerate(slow) if f["type"] == "response.completed")
    assert all(f["type"] != "response.created" for f in slow[1:first_done])  # the second waited


def test_too_many_lanes_is_the_documented_error(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with ws_client.connect(ws_url(gateway), additional_headers=headers) as socket:
        for n in range(17):
            socket.send(
                json.dumps(
                    {"type": "response.create", "model": "resp-model", "input": "x", "stream_id": f"l{n}"}
                )
            )
        frames = collect(socket, 17)
    errors = [f for f in frames if f["type"] == "error"]
    assert len(errors) == 1 and errors[0]["stream_id"] == "l16" and errors[0]["status"] == 429
    assert errors[0]["error"]["code"] == "websocket_stream_limit_reached"
    assert sum(f["type"] == "response.completed" for f in frames) == 16


def test_key_limits_and_garbage_frames_over_the_socket(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """The key's rpm counts each response.create; a frame that is not JSON is a clean 400."""
    headers = {"Authorization": "Bearer sk-client-rpm-000000000"}
    with ws_client.connect(ws_url(gateway), additional_headers=headers) as socket:
        socket.send("this is not JSON")
        for _ in range(3):
            socket.send(json.dumps({"type": "response.create", "model": "chat-model", "input": "x"}))
        frames = collect(socket, 4)
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["status"] for e in errors] == [400, 429]
    assert "JSON" in errors[0]["error"]["message"]
    assert errors[1]["error"]["type"] == "rate_limit_exceeded"  # as the HTTP answer says it
    assert sum(f["type"] == "response.completed" for f in frames) == 2
    assert "Traceback" not in gateway.log()


def test_a_warm_up_generates_nothing_and_later_turns_chain_from_it(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """``generate: false`` is answered by the gateway with a finished response holding no output
    and no usage, and no upstream call; a turn chaining from it (``store`` left at its default,
    which the upstream could not resolve) reaches the upstream as the warm-up's input plus its own."""
    upstream.script(Reply.text("Warmed and answered."))
    warm = {"type": "response.create", "model": "resp-model", "input": "context", "generate": False}
    frames = raw_frames(ws_url(gateway), [warm])
    assert [f["type"] for f in frames] == ["response.created", "response.in_progress", "response.completed"]
    for frame in frames:
        assert_openai("ResponseStreamEvent", frame)
    warmed = frames[-1]["response"]
    assert warmed["status"] == "completed" and warmed["output"] == [] and warmed["usage"]["total_tokens"] == 0
    assert upstream.requests == []

    follow = {"type": "response.create", "model": "resp-model", "input": "question"}
    auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
    with ws_client.connect(ws_url(gateway), additional_headers=auth) as s:
        s.send(json.dumps(warm))
        warm_id = [json.loads(s.recv(timeout=20)) for _ in range(3)][-1]["response"]["id"]
        s.send(json.dumps({**follow, "previous_response_id": warm_id}))
        while (event := json.loads(s.recv(timeout=20)))["type"] != "response.completed":
            assert event["type"] != "error", event
    assert event["response"]["output"][0]["content"][0]["text"] == "Warmed and answered."
    (sent,) = upstream.requests
    assert "generate" not in sent.body and "previous_response_id" not in sent.body
    texts = [item["content"] for item in sent.body["input"]]
    assert texts == ["context", "question"], sent.body["input"]


def test_a_warm_up_is_only_for_a_key_allowed_the_model(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Nothing goes upstream, but a warm-up is still a request: a model the key may not use is the
    same 403 as over HTTP, as the socket's error event."""
    warm = {"type": "response.create", "model": "resp-model", "input": "x", "generate": False}
    (error,) = raw_frames(ws_url(gateway), [warm], key="sk-client-chat-only-0000")
    assert error["type"] == "error" and error["status"] == 403, error
    assert error["error"]["code"] == "model_not_allowed"
    assert upstream.requests == []


def test_background_is_refused_over_the_socket(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """WebSocket mode has no background responses (PROTOCOLS.md 2.7): a 400 error event, nothing
    sent upstream, and the socket still serves the next frame."""
    upstream.script(Reply.text("After the refusal."))
    frames = raw_frames(
        ws_url(gateway),
        [
            {"type": "response.create", "model": "resp-model", "input": "x", "background": True},
            {"type": "response.create", "model": "resp-model", "input": "y"},
        ],
    )
    error, *rest = frames
    assert error["type"] == "error" and error["status"] == 400, error
    assert error["error"]["param"] == "background"
    assert rest[-1]["type"] == "response.completed"
    assert len(upstream.requests) == 1 and upstream.last.body["input"] == "y"


@pytest.mark.parametrize("model", ["chat-model", "stateless-resp"])
def test_upstream_garbage_never_reaches_the_socket(
    upstream: FakeUpstream, gateway: RunningGateway, model: str
) -> None:
    """An upstream over HTTP sends garbage mid-stream, translated (Chat) or forwarded as it came
    (a stateless Responses host): every frame the client gets is still a JSON object, the turn
    ends failed (an error event, or response.failed once the answer had begun), and the socket
    serves the next turn."""
    upstream.script(Reply.garbage(), Reply.text("Clean again."))
    frames = raw_frames(
        ws_url(gateway),
        [
            {"type": "response.create", "model": model, "input": "x"},
            {"type": "response.create", "model": model, "input": "y"},
        ],
    )  # raw_frames parses every frame as JSON: garbage would fail here
    ends = [f for f in frames if f["type"] in ("error", "response.failed", "response.completed")]
    assert [f["type"] for f in ends[1:]] == ["response.completed"], ends
    assert ends[0]["type"] in ("error", "response.failed"), ends
    assert "Traceback" not in gateway.log()


def test_a_key_revoked_while_its_socket_is_open_gets_nothing_more(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Fail closed: the key is checked on every response.create, not just on the upgrade. Once it
    is revoked (in the store, by the CLI), its open socket's next turn is a 401 error event and
    nothing more reaches the upstream."""
    created = gateway.cli("keys", "create", "--name", "short-lived-socket")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    upstream.script(Reply.text("Before the revocation."))
    headers = {"Authorization": f"Bearer {secret}"}
    frame = json.dumps({"type": "response.create", "model": "chat-model", "input": "x"})
    with ws_client.connect(ws_url(gateway), additional_headers=headers) as socket:
        socket.send(frame)
        while (event := json.loads(socket.recv(timeout=20)))["type"] != "response.completed":
            pass
        revoked = gateway.cli("keys", "revoke", "short-lived-socket")
        assert revoked.returncode == 0, revoked.stderr
        deadline = time.monotonic() + 5
        while True:  # gateways learn of a revocation within a second
            socket.send(frame)
            event = json.loads(socket.recv(timeout=20))
            if event["type"] == "error" or time.monotonic() > deadline:
                break
            while event["type"] != "response.completed":
                event = json.loads(socket.recv(timeout=20))
        sent = len(upstream.requests)
        socket.send(frame)
        again = json.loads(socket.recv(timeout=20))
    assert event["type"] == "error" and event["status"] == 401, event
    assert event["error"]["code"] == "invalid_api_key"
    assert again["type"] == "error" and again["status"] == 401, again
    assert len(upstream.requests) == sent  # the refused turns went nowhere
