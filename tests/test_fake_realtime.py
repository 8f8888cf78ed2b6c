"""The fake realtime upstream itself: it must catch what the spec forbids, or the realtime tests
could pass on events the real API would reject."""

from __future__ import annotations

import json

import websockets.sync.client as ws_client

from .fake_realtime import RealtimeReply
from .fake_upstream import FakeUpstream


def connect(upstream: FakeUpstream) -> ws_client.ClientConnection:
    url = upstream.url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    return ws_client.connect(url, additional_headers={"Authorization": "Bearer sk-test"})


def test_client_events_are_validated_against_the_spec(upstream: FakeUpstream) -> None:
    with connect(upstream) as socket:
        socket.recv(timeout=10)
        socket.send(json.dumps({"type": "response.create", "response": {"output_modalities": "text"}}))
        socket.send(json.dumps({"type": "conversation.item.create"}))  # no item
        socket.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        socket.recv(timeout=10)
    found = list(upstream.violations)
    upstream.violations.clear()
    assert any("output_modalities" in v for v in found), found
    assert any("'item' is a required property" in v for v in found), found


def test_an_unknown_function_call_output_is_a_violation(upstream: FakeUpstream) -> None:
    upstream.realtime.script(RealtimeReply.call("f", "{}"))
    with connect(upstream) as socket:
        item = {"type": "function_call_output", "call_id": "call_never_made", "output": "x"}
        socket.send(json.dumps({"type": "conversation.item.create", "item": item}))
        socket.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        while json.loads(socket.recv(timeout=10))["type"] != "session.updated":
            pass
    found = list(upstream.violations)
    upstream.violations.clear()
    assert any("call_never_made" in v for v in found), found


def test_handshakes_need_a_key_and_a_model(upstream: FakeUpstream) -> None:
    url = upstream.url.replace("http://", "ws://") + "/realtime"
    for headers, query in (({}, "?model=gpt-realtime"), ({"Authorization": "Bearer sk"}, "")):
        try:
            ws_client.connect(url + query, additional_headers=headers)
        except Exception as exc:  # InvalidStatus: refused before the upgrade
            assert getattr(exc, "response", None) is not None and exc.response.status_code in (400, 401)
        else:
            raise AssertionError("the fake accepted a handshake it must refuse")
    assert upstream.realtime.connections == []
