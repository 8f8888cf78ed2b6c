"""A client's Responses WebSocket carried on over the native upstream's own WebSocket.

The route ``resp-model`` goes to a native OpenAI backend (``type: openai``), which offers
WebSocket mode, so each client socket gets its own upstream socket: a follow-up turn chained on it
travels as only its new items plus ``previous_response_id``. When the upstream will not hold a
socket, turns go over HTTPS with the whole conversation; a Chat route always goes over HTTP.
The fake upstream records each frame with the number of its connection (``Recorded.socket``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client as ws_client

from modelwire.providers.codex import REFRESH_URL_ENV

from .fake_codex import FakeAccount
from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, open_socket, start_gateway

TOOL = {
    "type": "function",
    "name": "get_weather",
    "strict": False,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ENDS = ("response.completed", "response.incomplete", "response.failed", "error")


@pytest.fixture
def client_socket(gateway: RunningGateway) -> Iterator[ws_client.ClientConnection]:
    with open_socket(gateway) as socket:
        yield socket


def turn(socket: ws_client.ClientConnection, **frame: Any) -> list[dict[str, Any]]:
    """One ``response.create``; every event until the turn's last."""
    socket.send(json.dumps({"type": "response.create", **frame}))
    events = []
    while True:
        events.append(json.loads(socket.recv(timeout=20)))
        if events[-1]["type"] in ENDS:
            return events


def generations(upstream: FakeUpstream) -> list[Any]:
    return [r for r in upstream.requests if r.path.endswith("/responses") and r.body is not None]


def test_a_tool_loop_sends_only_new_items_on_the_upstream_socket(
    upstream: FakeUpstream, client_socket: ws_client.ClientConnection
) -> None:
    """Three turns with ``store: false`` on one client socket: all three on one upstream socket,
    the second and third carrying ``previous_response_id`` and only their new items."""
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Paris"}')]),
        Reply.tool_calls([("get_weather", '{"city":"Rome"}')]),
        Reply.text("Sunny in both."),
    )
    first = turn(client_socket, model="resp-model", input="weather?", tools=[TOOL], store=False)
    done = first[-1]["response"]
    call = done["output"][0]
    second = turn(
        client_socket,
        model="resp-model",
        store=False,
        tools=[TOOL],
        previous_response_id=done["id"],
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}],
    )
    done2 = second[-1]["response"]
    third = turn(
        client_socket,
        model="resp-model",
        store=False,
        tools=[TOOL],
        previous_response_id=done2["id"],
        input=[{"type": "function_call_output", "call_id": done2["output"][0]["call_id"], "output": "sunny"}],
    )
    assert third[-1]["type"] == "response.completed", third[-1]
    assert third[-1]["response"]["output"][0]["content"][0]["text"] == "Sunny in both."
    sent = generations(upstream)
    assert [r.socket for r in sent] == [sent[0].socket] * 3 and sent[0].socket > 0
    assert "previous_response_id" not in sent[0].body and sent[0].body["input"] == "weather?"
    for frame, answered in ((sent[1].body, done), (sent[2].body, done2)):
        assert frame["previous_response_id"] == answered["id"]
        assert [item["type"] for item in frame["input"]] == ["function_call_output"]
        assert "stream" not in frame and frame["type"] == "response.create"
    assert len(sent[2].raw) < 2 * len(sent[1].raw)  # the frames do not grow with the chain


def test_a_dropped_upstream_socket_is_reopened_with_the_whole_conversation(
    upstream: FakeUpstream, client_socket: ws_client.ClientConnection
) -> None:
    """The upstream cuts its socket between turns: the next turn opens another and, since that one
    never saw the chain, sends the whole conversation without ``previous_response_id``."""
    upstream.script(Reply.text("First."), Reply.text("Second."))
    first = turn(client_socket, model="resp-model", input="one", store=False)
    assert upstream.drop_sockets() == 1
    second = turn(
        client_socket,
        model="resp-model",
        input="two",
        store=False,
        previous_response_id=first[-1]["response"]["id"],
    )
    assert second[-1]["type"] == "response.completed", second[-1]
    assert second[-1]["response"]["previous_response_id"] == first[-1]["response"]["id"]
    one, two = generations(upstream)
    assert one.socket and two.socket and one.socket != two.socket
    assert "previous_response_id" not in two.body
    texts = json.dumps(two.body["input"])
    assert texts.index('"one"') < texts.index("First.") < texts.index('"two"'), texts


def test_an_upstream_that_refuses_sockets_is_served_over_https(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Two refused handshakes (the first try and its one retry): the turn goes over HTTPS, and so
    do the next turns while the backend's sockets rest, without another handshake. (A gateway of
    its own: the rest would outlast this test.)"""
    upstream.refuse_upgrades(*[Reply.error(503, "no sockets here")] * 3)
    upstream.script(Reply.text("Over HTTPS."), Reply.text("Still HTTPS."))
    gateway = start_gateway(base_config(upstream, tmp_path), tmp_path, name="resting")
    try:
        with open_socket(gateway) as socket:
            first = turn(socket, model="resp-model", input="hello")
            second = turn(socket, model="resp-model", input="again")
    finally:
        gateway.stop()
    assert first[-1]["type"] == "response.completed", first[-1]
    assert second[-1]["response"]["output"][0]["content"][0]["text"] == "Still HTTPS."
    sent = generations(upstream)
    assert [r.socket for r in sent] == [0, 0]
    assert len(upstream._refusals) == 1  # two handshakes tried, none while the sockets rest


def test_an_upstream_error_event_is_the_clients_error_event(
    upstream: FakeUpstream, client_socket: ws_client.ClientConnection
) -> None:
    """A 400 from the upstream socket, before any output: the client's socket gets the same error
    (its status and code), and the next turn is served on the same client socket. (A first turn
    opens the upstream socket: on a gateway just started that can outlast the tests' 0.25 s
    keep-alive, which then opens the stream, and an error inside a stream is ``response.failed``.
    So the upstream socket is opened by a turn of its own first.)"""
    upstream.script(
        Reply.text("Opened."),
        Reply.error(400, "bad tool schema", code="invalid_tools"),
        Reply.text("Fine now."),
    )
    assert turn(client_socket, model="resp-model", input="w")[-1]["type"] == "response.completed"
    (error,) = turn(client_socket, model="resp-model", input="x")
    assert error["type"] == "error" and error["status"] == 400, error
    assert error["error"]["code"] == "invalid_tools" and "bad tool schema" in error["error"]["message"]
    assert turn(client_socket, model="resp-model", input="y")[-1]["type"] == "response.completed"


def test_a_chat_route_stays_on_http(
    upstream: FakeUpstream, client_socket: ws_client.ClientConnection
) -> None:
    """Only hosts that offer WebSocket mode get an upstream socket."""
    upstream.script(Reply.text("From Chat."))
    events = turn(client_socket, model="chat-model", input="hi")
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "From Chat."
    (sent,) = upstream.requests
    assert sent.socket == 0 and sent.path.endswith("/chat/completions")


def test_failover_between_targets_before_any_output(
    upstream: FakeUpstream, client_socket: ws_client.ClientConnection
) -> None:
    """The route's first target (native, over its socket) answers 503 error events, to its retries
    too: the turn fails over to the next target (a Chat upstream, over HTTP) and the client sees
    one answer."""
    overloaded = Reply.error(503, "overloaded", code="server_is_overloaded")
    upstream.for_model("failing-model", *[overloaded] * 3)  # the try and the backend's two retries
    upstream.for_model("backup-model", Reply.text("From the backup."))
    events = turn(client_socket, model="failover-translated", input="hi")
    assert events[-1]["type"] == "response.completed", events[-1]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "From the backup."
    assert [e["type"] for e in events].count("response.created") == 1
    *tried, served = upstream.requests
    assert [(r.websocket, r.body["model"]) for r in tried] == [(True, "failing-model")] * 3
    assert not served.websocket and served.path.endswith("/chat/completions")


def test_the_codex_route_keeps_its_conversation_on_one_upstream_socket(
    upstream: FakeUpstream, account: FakeAccount, tmp_path: Path
) -> None:
    """A Codex backend (signed in, bodies fitted by the driver, never forwarded as they came): a
    client socket's turns go on over one upstream socket of the driver's, the follow-up sending
    only its new item and the id of the answer that socket made."""
    home = tmp_path / "codex"
    home.mkdir()
    (home / "auth.json").write_text(json.dumps(account.auth_json()))
    config = {
        "store": f"sqlite:///{tmp_path}/state.db",
        "backends": {"plan": {"type": "codex", "base_url": upstream.url}},
        "models": [{"name": "codex-model", "route": "plan/gpt-5.4"}],
        "keys": [{"key": CLIENT_KEY, "name": "all"}],
    }
    env = {"CODEX_HOME": str(home), REFRESH_URL_ENV: f"{account.issuer}/oauth/token"}
    upstream.script(Reply.tool_calls([("get_weather", '{"city":"Oslo"}')]), Reply.text("Snow in Oslo."))
    gateway = start_gateway(config, tmp_path, env=env, name="codex-sockets")
    try:
        with open_socket(gateway) as socket:
            first = turn(socket, model="codex-model", input="weather?", tools=[TOOL], store=False)
            done = first[-1]["response"]
            output = {
                "type": "function_call_output",
                "call_id": done["output"][0]["call_id"],
                "output": "snow",
            }
            second = turn(
                socket,
                model="codex-model",
                store=False,
                tools=[TOOL],
                previous_response_id=done["id"],
                input=[output],
            )
    finally:
        gateway.stop()
    assert second[-1]["type"] == "response.completed", second[-1]
    assert second[-1]["response"]["output"][0]["content"][0]["text"] == "Snow in Oslo."
    one, two = generations(upstream)
    assert one.websocket and two.socket == one.socket
    assert one.headers["authorization"].startswith("Bearer ")
    assert two.body["previous_response_id"] and [i["type"] for i in two.body["input"]] == [
        "function_call_output"
    ]


@pytest.mark.parametrize("broken", [Reply.truncated("cut off in the middle", after=3), Reply.garbage()])
def test_a_broken_upstream_socket_ends_the_turn_cleanly(
    upstream: FakeUpstream, gateway: RunningGateway, client_socket: ws_client.ClientConnection, broken: Reply
) -> None:
    """The upstream's socket cuts a turn after some output, or sends garbage: the client's turn
    ends with an error event (never tried elsewhere, it had output), no traceback is logged, and
    the next turn is served on a new upstream socket."""
    upstream.script(broken, Reply.text("Whole again."))
    events = turn(client_socket, model="resp-model", input="x")
    assert events[-1]["type"] == "error", events[-1]
    after = turn(client_socket, model="resp-model", input="y")
    assert after[-1]["response"]["output"][0]["content"][0]["text"] == "Whole again."
    first, second = generations(upstream)
    assert first.socket != second.socket
    assert "Traceback" not in gateway.log()
