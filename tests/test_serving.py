"""The gateway's HTTP/1.1 protocol (uvicorn's, with a whole answer sent in one write), driven by
request bytes over a transport that records what the server writes, in which calls."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modelwire.gateway import http
from modelwire.gateway.serving import Protocol

BODY = b'{"id": "chatcmpl-1", "object": "chat.completion"}'


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []  # ("write", the parts of one write) or ("close", None)
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.calls.append(("write", [bytes(data)]))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("write", [bytes(p) for p in parts]))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def whole(scope: Any, receive: Any, send: Any) -> None:
    await http.respond(send, 200, BODY, [(b"x-request-id", b"req_1")])


async def streamed(scope: Any, receive: Any, send: Any) -> None:
    await http.start_stream(send, [])
    await send(http.more(b"data: 1\n\n"))
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def connect(app: Any, transport: RecordingTransport, server: ServerState | None = None) -> Protocol:
    protocol = Protocol(
        config=uvicorn.Config(app, lifespan="off", log_config=None),
        server_state=server or ServerState(),
        app_state={},
    )
    protocol.connection_made(transport)
    return protocol


async def serve(
    app: Any, request: bytes, transport: RecordingTransport | None = None, server: ServerState | None = None
) -> RecordingTransport:
    transport = transport or RecordingTransport()
    protocol = connect(app, transport, server)
    protocol.data_received(request)
    await answered(protocol)
    return transport


async def answered(protocol: Protocol) -> None:
    for _ in range(50):
        if not protocol.tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the app did not finish")


POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_whole_answer_goes_out_in_one_write() -> None:
    transport = await serve(whole, POST)
    assert [kind for kind, _ in transport.calls] == ["write"]
    head, body = transport.calls[0][1]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"content-length: %d\r\n" % len(BODY) in head and b"x-request-id: req_1\r\n" in head
    assert body == BODY


async def test_the_next_answer_on_the_connection_is_joined_too() -> None:
    transport = await serve(whole, POST + POST)
    assert [kind for kind, _ in transport.calls] == ["write", "write"]
    assert all(parts[1] == BODY for _, parts in transport.calls)


async def test_while_other_requests_are_in_flight_an_answer_waits_for_the_loops_turn() -> None:
    """Busy, the server lets a whole answer wait until the callbacks the loop has ready have run, so
    that the answers of one turn go out together; alone, it sends an answer as soon as it has it."""
    unwritten_after_send: list[int] = []
    other_done = asyncio.Event()

    def answering(transport: RecordingTransport) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await whole(scope, receive, send)
            unwritten_after_send.append(len(transport.calls))

        return app

    async def waiting(scope: Any, receive: Any, send: Any) -> None:
        await other_done.wait()
        await whole(scope, receive, send)

    server = ServerState()
    busy, answered_alone = RecordingTransport(), RecordingTransport()
    other = connect(waiting, RecordingTransport(), server)
    other.data_received(POST)
    await asyncio.sleep(0)  # the other request is in flight
    connect(answering(busy), busy, server).data_received(POST)
    await asyncio.sleep(0.05)
    assert len(busy.calls) == 1  # answered while the other still waits
    other_done.set()
    await answered(other)
    await serve(answering(answered_alone), POST, answered_alone, server)
    assert unwritten_after_send == [0, 1]  # held while the other was in flight; written at once alone
    for transport in (busy, answered_alone):
        assert [kind for kind, _ in transport.calls] == ["write"]
        head, body = transport.calls[0][1]
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == BODY


async def test_a_head_answer_writes_its_head_alone() -> None:
    transport = await serve(whole, b"HEAD /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert [kind for kind, _ in transport.calls] == ["write"]
    (head,) = transport.calls[0][1]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert BODY not in head


async def test_a_closing_connection_gets_the_answer_before_it_closes() -> None:
    transport = await serve(whole, POST.replace(b"Host: gw", b"Host: gw\r\nConnection: close"))
    assert [kind for kind, _ in transport.calls] == ["write", "close"]
    assert transport.calls[0][1][1] == BODY


async def test_a_stream_whose_first_event_is_at_hand_sends_it_with_its_head() -> None:
    transport = await serve(streamed, POST)
    assert [kind for kind, _ in transport.calls] == ["write", "write"]
    (head, first), (last,) = transport.calls[0][1], transport.calls[1][1]
    assert (
        head.startswith(b"HTTP/1.1 200 OK\r\n")
        and b"text/event-stream" in head
        and head.endswith(b"\r\n\r\n")
    )
    assert first == b"9\r\ndata: 1\n\n\r\n"
    assert last.startswith(b"e\r\ndata: [DONE]\n\n\r\n") and last.endswith(b"0\r\n\r\n")


async def test_a_stream_waiting_for_its_first_event_has_its_head_sent_at_once() -> None:
    first_event = asyncio.Event()
    seen: list[list[str]] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await http.start_stream(send, [])
        await first_event.wait()
        await send(http.more(b"data: 1\n\n"))
        await send({"type": "http.response.body", "body": b""})

    transport = RecordingTransport()

    async def release_later() -> None:
        await asyncio.sleep(0.05)
        seen.append([kind for kind, _ in transport.calls])
        first_event.set()

    waiter = asyncio.ensure_future(release_later())
    await serve(slow, POST, transport)
    await waiter
    assert seen == [["write"]]  # the head alone, while the app waited
    assert [len(parts) for _, parts in transport.calls] == [1, 1, 1]
    assert transport.calls[0][1][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.calls[1][1] == [b"9\r\ndata: 1\n\n\r\n"]


async def test_a_client_expecting_100_continue_gets_it_before_it_sends_the_body() -> None:
    async def reading(scope: Any, receive: Any, send: Any) -> None:
        assert await http.read_body(receive, 1000, None) == b"{}"
        await whole(scope, receive, send)

    transport = RecordingTransport()
    protocol = connect(reading, transport)
    head, body = POST.split(b"\r\n\r\n")
    protocol.data_received(head.replace(b"Host: gw", b"Host: gw\r\nExpect: 100-continue") + b"\r\n\r\n")
    await asyncio.sleep(0.05)
    assert transport.calls == [("write", [b"HTTP/1.1 100 Continue\r\n\r\n"])]
    protocol.data_received(body)
    await answered(protocol)
    assert [len(parts) for _, parts in transport.calls] == [1, 1, 1]
    assert transport.calls[1][1][0].startswith(b"HTTP/1.1 200 OK\r\n") and transport.calls[2][1] == [BODY]


async def test_a_reset_connection_leaves_no_timer_holding_it() -> None:
    """A connection lost to a reset (a client killed, a load balancer's probe) is released at once,
    not when its keep-alive timer fires 75 s later."""
    for lost in (None, ConnectionResetError()):
        protocol = connect(whole, RecordingTransport())
        protocol.data_received(POST)
        await answered(protocol)
        assert protocol.timeout_keep_alive_task is not None  # idle, kept alive for the next request
        protocol.connection_lost(lost)
        assert protocol.timeout_keep_alive_task is None, lost


async def test_a_stream_sees_its_client_leave_without_a_task_of_its_own() -> None:
    """On this server the watch reads the connection's own state: no task waits on ``receive``, and
    a lost connection is seen at the next look."""
    looks: list[bool] = []
    lost = asyncio.Event()

    async def watching(scope: Any, receive: Any, send: Any) -> None:
        await http.read_body(receive, 1000, None)
        watch = http.ClientWatch(receive)
        await http.start_stream(send, [])
        tasks = len(asyncio.all_tasks())
        looks.append(watch.gone())
        await lost.wait()
        looks.append(watch.gone())
        assert len(asyncio.all_tasks()) == tasks  # no watcher task was started
        watch.stop()

    protocol = connect(watching, RecordingTransport())
    protocol.data_received(POST)
    await asyncio.sleep(0.05)
    protocol.connection_lost(ConnectionResetError())
    lost.set()
    await answered(protocol)
    assert looks == [False, True]


async def test_under_another_server_the_watch_waits_on_receive() -> None:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    watch = http.ClientWatch(messages.get)
    assert watch.gone() is False  # the first look starts the task waiting on receive
    await asyncio.sleep(0)
    assert watch.gone() is False
    await messages.put({"type": "http.disconnect"})
    await asyncio.sleep(0.01)
    assert watch.gone() is True
    watch.stop()
