"""The fake upstream's Realtime API: ``GET /v1/realtime?model=`` (and Azure's
``/openai/realtime?api-version=&deployment=``) WebSockets, ``POST /v1/realtime/client_secrets`` and
``POST /v1/realtime/transcription_sessions``.

Written from ``tests/specs/openai-openapi.yml`` only, and mounted by ``tests/fake_upstream.py``
(it never imports modelwire). Every client event it receives is validated against the spec's
``RealtimeClientEvent`` union, every server event it sends against ``RealtimeServerEvent``, and the
HTTP bodies against their request/response schemas; problems go to the shared ``violations`` list.

Scripting, in the fake's style: ``script(*RealtimeReply)`` queues what the next ``response.create``
(or, in a transcription session or with ``server_vad`` turn detection, the next
``input_audio_buffer.commit``) produces: text, audio
chunks with their transcript, function calls, a realtime ``error`` event, or a dropped connection.
``refuse_upgrades(*statuses)`` answers the next handshakes with HTTP errors. ``connections``
records each socket's handshake and when it ended, so a test can tell that a proxy closed it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.spec import openai_errors

Json = dict[str, Any]
DEFAULT_TEXT = "Hello from the fake realtime upstream."


@dataclass
class RealtimeReply:
    """What one response (or one transcription) produces."""

    text: str | None = None  # output_text deltas (or the transcript of a committed buffer)
    audio: list[bytes] | None = None  # output_audio deltas, one per chunk, with ``transcript``
    transcript: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)  # function calls: (name, arguments)
    usage: Json | None = None  # overrides of the token counts (see ``_usage``)
    error: tuple[str, str] | None = None  # (code, message): a realtime error event instead
    drop: bool = False  # cut the connection after response.created
    hold: bool = False  # after response.created, nothing until a response.cancel: then its done

    @classmethod
    def say(cls, text: str = DEFAULT_TEXT, **usage: int) -> RealtimeReply:
        return cls(text=text, usage=usage or None)

    @classmethod
    def speak(cls, chunks: list[bytes], transcript: str, **usage: int) -> RealtimeReply:
        return cls(audio=chunks, transcript=transcript, usage=usage or None)

    @classmethod
    def call(cls, name: str, arguments: str, **usage: int) -> RealtimeReply:
        return cls(calls=[(name, arguments)], usage=usage or None)

    @classmethod
    def fail(cls, message: str, code: str = "server_error") -> RealtimeReply:
        return cls(error=(code, message))

    @classmethod
    def dropped(cls) -> RealtimeReply:
        return cls(drop=True)

    @classmethod
    def held(cls, **usage: int) -> RealtimeReply:
        """A response that goes on until cancelled, then is done as ``cancelled`` with ``usage``."""
        return cls(text="", hold=True, usage=usage or None)


@dataclass
class RealtimeSocket:
    """One connection as the fake saw it."""

    number: int
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    events: list[Json] = field(default_factory=list)  # client events, in order
    sent: list[str] = field(default_factory=list)  # the frames the fake sent, as sent
    ended: float | None = None  # when it ended (monotonic), whoever ended it
    calls: set[str] = field(default_factory=set)  # call ids this connection's responses made
    audio: bytearray = field(default_factory=bytearray)  # the input audio buffer
    session_type: str = "realtime"
    voice_activity: bool = False  # server_vad: a committed buffer starts a response by itself
    held: dict[str, tuple[Json, RealtimeReply]] = field(default_factory=dict)  # by response id


class FakeRealtime:
    def __init__(self, lock: threading.Lock, violations: list[str]) -> None:
        self._lock = lock
        self.violations = violations
        self.connections: list[RealtimeSocket] = []
        self.secrets: list[tuple[dict[str, str], Json]] = []  # client_secrets requests (headers, body)
        self._queue: deque[RealtimeReply] = deque()
        self._refusals: deque[int] = deque()
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)
        self._open: dict[int, web.Request] = {}
        self._by_socket: dict[int, RealtimeSocket] = {}  # id(ws) -> its connection
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- scripting ---------------------------------------------------------------------------

    def script(self, *replies: RealtimeReply) -> None:
        with self._lock:
            self._queue.extend(replies)

    def refuse_upgrades(self, *statuses: int) -> None:
        with self._lock:
            self._refusals.extend(statuses)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._refusals.clear()
            self.connections.clear()
            self.secrets.clear()
        loop = self._loop
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(self._cut(), loop).result(timeout=10)

    async def _cut(self) -> None:
        for request in list(self._open.values()):
            if request.transport is not None:
                request.transport.close()
        self._open.clear()

    def wait_ended(self, number: int, timeout: float = 10.0) -> bool:
        """Whether connection ``number`` ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(c.number == number and c.ended is not None for c in self.connections):
                return True
            time.sleep(0.02)
        return False

    def mount(self, app: web.Application, base: str) -> None:
        app.router.add_get(f"{base}/realtime", self._serve)
        app.router.add_get("/openai/realtime", self._serve)
        for prefix in (base, "/openai/v1"):
            app.router.add_post(f"{prefix}/realtime/client_secrets", self._client_secret)
            app.router.add_post(f"{prefix}/realtime/transcription_sessions", self._transcription_session)

    # -- helpers -----------------------------------------------------------------------------

    def _violation(self, where: str, message: str) -> None:
        with self._lock:
            self.violations.append(f"{where}: {message}")

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):08d}"

    def _auth_problem(self, request: web.Request) -> str | None:
        if request.path.startswith("/openai/"):
            if not request.headers.get("api-key"):
                return "Azure realtime needs the api-key header"
            if not request.query.get("api-version") or not request.query.get("deployment"):
                return "Azure realtime needs ?api-version= and ?deployment="
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            return "missing 'Authorization: Bearer' on the handshake"
        return None

    # -- HTTP endpoints ----------------------------------------------------------------------

    async def _client_secret(self, request: web.Request) -> web.Response:
        problem = self._auth_problem(request)
        if problem:
            return _http_error(401, problem, "invalid_request_error")
        body = await _json_body(request)
        if body is None:
            return _http_error(400, "We could not parse the JSON body.", "invalid_request_error")
        for error in openai_errors("RealtimeCreateClientSecretRequest", body):
            self._violation(request.path, error)
        with self._lock:
            self.secrets.append(({k.lower(): v for k, v in request.headers.items()}, body))
        session = body.get("session") if isinstance(body.get("session"), dict) else {}
        doc = {
            "value": self._id("ek"),
            "expires_at": int(time.time()) + 600,
            "session": self._session(session.get("type", "realtime"), session.get("model", "gpt-realtime")),
        }
        return self._json(request.path, "RealtimeCreateClientSecretResponse", doc)

    async def _transcription_session(self, request: web.Request) -> web.Response:
        problem = self._auth_problem(request)
        if problem:
            return _http_error(401, problem, "invalid_request_error")
        body = await _json_body(request)
        if body is None:
            return _http_error(400, "We could not parse the JSON body.", "invalid_request_error")
        for error in openai_errors("RealtimeTranscriptionSessionCreateRequest", body):
            self._violation(request.path, error)
        with self._lock:
            self.secrets.append(({k.lower(): v for k, v in request.headers.items()}, body))
        doc = {
            "client_secret": {"value": self._id("ek"), "expires_at": int(time.time()) + 600},
            "modalities": ["text"],
            "input_audio_format": body.get("input_audio_format", "pcm16"),
        }
        return self._json(request.path, "RealtimeTranscriptionSessionCreateResponse", doc)

    def _json(self, where: str, schema: str, doc: Json) -> web.Response:
        for error in openai_errors(schema, doc):
            self._violation(where, f"the fake's own {schema}: {error}")
        return web.json_response(doc)

    # -- the WebSocket -----------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self._loop = asyncio.get_running_loop()
        problem = self._auth_problem(request)
        if problem:
            return _http_error(401, problem, "invalid_request_error")
        model = (
            request.query.get("deployment")
            if request.path.startswith("/openai/")
            else request.query.get("model")
        )
        if not model:
            return _http_error(400, "Missing required parameter: 'model'.", "invalid_request_error")
        with self._lock:
            refusal = self._refusals.popleft() if self._refusals else None
        if refusal is not None:
            return _http_error(refusal, f"refused (scripted {refusal})", "server_error")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
        if not ws.can_prepare(request).ok:
            return _http_error(400, "This endpoint takes a WebSocket upgrade.", "invalid_request_error")
        await ws.prepare(request)
        conn = RealtimeSocket(
            next(self._numbers),
            request.path,
            dict(request.query),
            {k.lower(): v for k, v in request.headers.items()},
        )
        if request.query.get("intent") == "transcription":
            conn.session_type = "transcription"
        with self._lock:
            self.connections.append(conn)
        self._open[conn.number] = request
        self._by_socket[id(ws)] = conn
        try:
            await self._emit(
                ws, {"type": "session.created", "session": self._session(conn.session_type, model)}
            )
            async for message in ws:
                if message.type == web.WSMsgType.TEXT:
                    await self._event(ws, conn, model, message.data)
                elif message.type == web.WSMsgType.BINARY:
                    self._violation(request.path, "binary frame (the Realtime API takes JSON text frames)")
                    await self._error(ws, "invalid_request_error", "binary_frame", "Frames must be text.")
        except Exception as exc:  # a bug of the fake: reported, and the connection dropped
            if not isinstance(exc, ConnectionError):
                self._violation(request.path, f"fake realtime crashed: {exc!r}")
        finally:
            self._open.pop(conn.number, None)
            self._by_socket.pop(id(ws), None)
            conn.ended = time.monotonic()
        return ws

    def _session(self, kind: str, model: str) -> Json:
        if kind == "transcription":
            return {
                "type": "transcription",
                "id": self._id("sess"),
                "object": "realtime.transcription_session",
            }
        return {
            "type": "realtime",
            "id": self._id("sess"),
            "object": "realtime.session",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
        }

    async def _emit(self, ws: web.WebSocketResponse, event: Json) -> None:
        event = {"event_id": self._id("event"), **event}
        for error in openai_errors("RealtimeServerEvent", event):
            self._violation("realtime", f"the fake's own {event.get('type')}: {error}")
        frame = json.dumps(event)
        conn = self._by_socket.get(id(ws))
        if conn is not None:
            conn.sent.append(frame)
        await ws.send_str(frame)

    async def _error(self, ws: web.WebSocketResponse, kind: str, code: str, message: str) -> None:
        await self._emit(
            ws, {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": None}}
        )

    async def _event(self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            self._violation(conn.path, "a frame that is not JSON")
            await self._error(ws, "invalid_request_error", "invalid_json", "Frames must be JSON.")
            return
        for error in openai_errors("RealtimeClientEvent", event):
            self._violation(conn.path, f"client event: {error}")
        with self._lock:
            conn.events.append(event)
        handler = self._handlers().get(event.get("type") if isinstance(event, dict) else None)
        if handler is None:
            await self._error(ws, "invalid_request_error", "unknown_event", f"unknown event {event!r:.60}")
            return
        await handler(ws, conn, model, event)

    def _handlers(self) -> dict[Any, Callable[..., Any]]:
        return {
            "session.update": self._session_update,
            "conversation.item.create": self._item_create,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "response.create": self._respond,
            "response.cancel": self._cancel,
        }

    async def _cancel(self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json) -> None:
        """A held response ends, ``cancelled``, with what it used so far (others are not held: nothing)."""
        held = conn.held.pop(event.get("response_id") or next(iter(conn.held), ""), None)
        if held is not None:
            shell, reply = held
            done = {**shell, "status": "cancelled", "usage": _usage(reply)}
            await self._emit(ws, {"type": "response.done", "response": done})

    async def _session_update(
        self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json
    ) -> None:
        session = event.get("session", {})
        kind = session.get("type", conn.session_type)
        conn.session_type = kind
        turns = (session.get("audio") or {}).get("input", {}).get("turn_detection")
        conn.voice_activity = isinstance(turns, dict) and turns.get("type") == "server_vad"
        await self._emit(ws, {"type": "session.updated", "session": self._session(kind, model)})

    async def _item_create(
        self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json
    ) -> None:
        item = dict(event.get("item") or {})
        if item.get("type") == "function_call_output" and item.get("call_id") not in conn.calls:
            self._violation(
                conn.path, f"function_call_output for a call this session never made: {item.get('call_id')}"
            )
        item.setdefault("id", self._id("item"))
        item.setdefault("object", "realtime.item")
        item["status"] = "completed"
        await self._emit(ws, {"type": "conversation.item.added", "item": item})
        await self._emit(ws, {"type": "conversation.item.done", "item": item})

    async def _append(self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json) -> None:
        conn.audio += base64.b64decode(event.get("audio", ""))

    async def _clear(self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json) -> None:
        conn.audio.clear()
        await self._emit(ws, {"type": "input_audio_buffer.cleared"})

    async def _commit(self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json) -> None:
        item_id = self._id("item")
        audio = base64.b64encode(bytes(conn.audio)).decode()
        conn.audio.clear()
        await self._emit(ws, {"type": "input_audio_buffer.committed", "item_id": item_id})
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "audio": audio}],
        }
        await self._emit(ws, {"type": "conversation.item.added", "item": item})
        await self._emit(ws, {"type": "conversation.item.done", "item": item})
        if conn.session_type != "transcription":
            if conn.voice_activity:  # the server answers the turn it heard without being asked
                await self._respond(ws, conn, model, {})
            return
        with self._lock:
            reply = self._queue.popleft() if self._queue else RealtimeReply.say()
        text = reply.text or DEFAULT_TEXT
        for piece in _words(text):
            await self._emit(
                ws,
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "item_id": item_id,
                    "content_index": 0,
                    "delta": piece,
                },
            )
        usage = {
            "type": "tokens",
            "input_tokens": 12,
            "output_tokens": len(_words(text)),
            "total_tokens": 12 + len(_words(text)),
        }
        await self._emit(
            ws,
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": text,
                "usage": usage,
            },
        )

    async def _respond(
        self, ws: web.WebSocketResponse, conn: RealtimeSocket, model: str, event: Json
    ) -> None:
        with self._lock:
            reply = self._queue.popleft() if self._queue else RealtimeReply.say()
        if reply.error is not None:
            await self._error(
                ws,
                "server_error" if reply.error[0] == "server_error" else "invalid_request_error",
                *reply.error,
            )
            return
        response_id = self._id("resp")
        shell = {"id": response_id, "object": "realtime.response", "status": "in_progress", "output": []}
        await self._emit(ws, {"type": "response.created", "response": shell})
        if reply.hold:
            conn.held[response_id] = (shell, reply)
            return
        if reply.drop:
            request = self._open.pop(conn.number, None)
            if request is not None and request.transport is not None:
                request.transport.close()
            return
        output: list[Json] = []
        if reply.text is not None or reply.audio is not None:
            output.append(await self._message(ws, response_id, len(output), reply))
        for name, arguments in reply.calls:
            output.append(await self._call(ws, conn, response_id, len(output), name, arguments))
        done = {**shell, "status": "completed", "output": output, "usage": _usage(reply)}
        await self._emit(ws, {"type": "response.done", "response": done})

    async def _message(
        self, ws: web.WebSocketResponse, response_id: str, index: int, reply: RealtimeReply
    ) -> Json:
        item_id = self._id("item")
        audio = reply.audio is not None
        part = (
            {"type": "output_audio", "transcript": reply.transcript}
            if audio
            else {"type": "output_text", "text": reply.text}
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self._emit(
            ws,
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": index,
                "item": item,
            },
        )
        await self._emit(ws, {"type": "conversation.item.added", "item": item})
        if audio:
            for chunk in reply.audio or []:
                await self._emit(
                    ws,
                    {
                        "type": "response.output_audio.delta",
                        **where,
                        "delta": base64.b64encode(chunk).decode(),
                    },
                )
            for piece in _words(reply.transcript):
                await self._emit(
                    ws, {"type": "response.output_audio_transcript.delta", **where, "delta": piece}
                )
            await self._emit(ws, {"type": "response.output_audio.done", **where})
            await self._emit(
                ws, {"type": "response.output_audio_transcript.done", **where, "transcript": reply.transcript}
            )
        else:
            for piece in _words(reply.text or ""):
                await self._emit(ws, {"type": "response.output_text.delta", **where, "delta": piece})
            await self._emit(ws, {"type": "response.output_text.done", **where, "text": reply.text})
        item = {**item, "status": "completed", "content": [part]}
        await self._emit(
            ws,
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": index,
                "item": item,
            },
        )
        await self._emit(ws, {"type": "conversation.item.done", "item": item})
        return item

    async def _call(
        self,
        ws: web.WebSocketResponse,
        conn: RealtimeSocket,
        response_id: str,
        index: int,
        name: str,
        arguments: str,
    ) -> Json:
        item_id, call_id = self._id("item"), self._id("call")
        conn.calls.add(call_id)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": index, "call_id": call_id}
        await self._emit(
            ws,
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": index,
                "item": item,
            },
        )
        await self._emit(ws, {"type": "conversation.item.added", "item": item})
        third = max(1, len(arguments) // 3)
        for start in range(0, len(arguments), third):
            await self._emit(
                ws,
                {
                    "type": "response.function_call_arguments.delta",
                    **where,
                    "delta": arguments[start : start + third],
                },
            )
        await self._emit(
            ws,
            {"type": "response.function_call_arguments.done", **where, "name": name, "arguments": arguments},
        )
        item = {**item, "status": "completed", "arguments": arguments}
        await self._emit(
            ws,
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": index,
                "item": item,
            },
        )
        await self._emit(ws, {"type": "conversation.item.done", "item": item})
        return item


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i == 0]


def _usage(reply: RealtimeReply) -> Json:
    """A response's usage: text and audio tokens in and out, cached ones among the input.
    Defaults: 20 text tokens in, the reply's words (text) or 25 per audio chunk (audio) out."""
    counts = {
        "input_text": 20,
        "input_audio": 0,
        "cached_text": 0,
        "cached_audio": 0,
        "output_text": len(_words(reply.text or reply.transcript)) + 4 * len(reply.calls),
        "output_audio": 25 * len(reply.audio or []),
    }
    counts.update(reply.usage or {})
    input_tokens = counts["input_text"] + counts["input_audio"]
    output_tokens = counts["output_text"] + counts["output_audio"]
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": counts["input_text"],
            "audio_tokens": counts["input_audio"],
            "image_tokens": 0,
            "cached_tokens": counts["cached_text"] + counts["cached_audio"],
            "cached_tokens_details": {
                "text_tokens": counts["cached_text"],
                "audio_tokens": counts["cached_audio"],
                "image_tokens": 0,
            },
        },
        "output_token_details": {
            "text_tokens": counts["output_text"],
            "audio_tokens": counts["output_audio"],
        },
    }


async def _json_body(request: web.Request) -> Json | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _http_error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )
