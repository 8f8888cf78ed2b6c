"""Background responses (``background: true``) the gateway runs itself.

A route whose every target is a native, stateful Responses upstream (OpenAI, Azure) runs a
background response upstream: the request passes through like any other, and ``GET``, ``cancel``
and resumed streams go to that upstream (see :mod:`.stored`). Any other route (stateless or Chat
upstreams, or a mix) is run here:

- the request is admitted like any other (key, limits, body, route), the response gets an id and
  its ``in_progress`` document goes to the store at once, and the client has that document (or the
  start of the stream) straight away;
- the answer is then served by :meth:`.Generation.serve` in a task of its own, detached from the
  client's connection, so it goes on when the client leaves: failover, translation, usage, cost and
  limits exactly as in the foreground, always streamed so that every event can be kept;
- its events are renumbered into one sequence of the run's own and kept in memory (bounded), so a
  client may follow or resume the stream (``GET …?stream=true&starting_after=N``) on this replica;
- the final document goes to the store when the run ends: any replica answers ``GET`` then.

Cancelling works from any replica: here it cuts the run; elsewhere it writes the stored document
as ``cancelled``, which the run (when another process may share the store) reads back within a
second, and then stops. Deleting a running response stops it the same way. A stream can only be
followed where the run is; another replica answers a finished response with its terminal event and
an unfinished one with a 409. A run does not outlive its process: at shutdown it gets the grace
period, then ends as ``failed``; a crashed process leaves its runs ``in_progress`` in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

import orjson

from ..dialects.openai_responses import RESPONSE_ERROR_CODES, new_id
from ..errors import InvalidRequestError, PreviousResponseNotFound, RateLimitError
from . import http
from .accounting import Accounting
from .call import Call
from .chains import input_items, stored
from .config import Config
from .http import Message, Receive, Send
from .routing import Route
from .state import State
from .store import StoredResponse, describe_error
from .surfaces import RESPONSES
from .upstream import Backend

if TYPE_CHECKING:
    from .generation import Generation

log = logging.getLogger("modelwire.gateway")

MAX_RUNNING = 256  # background responses one replica runs at once; more are refused (429)
RUN_EVENT_BYTES = 4 * 1024 * 1024  # events kept per run; the oldest go first beyond it
KEEP_FINISHED_SECONDS = 600.0  # a finished run's events stay for resuming this long (as OpenAI's ~10 min)
FINISHED_EVENT_BYTES = 64 * 1024 * 1024  # ... within this much for all finished runs together
WATCH_SECONDS = 1.0  # how often a run reads its stored document for a cancel from another replica
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
NEEDS_STORE = (
    "background: true needs store: true (a background response is kept so it can be polled); "
    "leave store out or set it to true"
)
SHUT_DOWN = "the gateway shut down before this background response finished; create it again"
CUT_SHORT = "the upstream's answer ended before it finished"

# The answer runs as a Responses request that keeps nothing itself: the run stores it, under the id
# the client was given (the upstream's or renderer's own id never reaches the client).
_RUNNER = dataclasses.replace(RESPONSES, chains=False)


class Run:
    """One background response on this replica: its document, its events, its task."""

    def __init__(self, response_id: str, key_name: str | None, doc: dict[str, Any]) -> None:
        self.id = response_id
        self.key_name = key_name
        self.doc = doc
        self.events: deque[bytes] = deque()  # events[i] has sequence number offset + i
        self.offset = 0  # events dropped from the front to bound memory
        self.size = 0
        self.items: dict[int, dict[str, Any]] = {}  # output items finished so far, by output index
        self.error: dict[str, Any] | None = None  # what an ``error`` event said
        self.terminal = False  # the answer's own final event arrived
        self.committed = False  # the first document is in the store (so its absence means deleted)
        self.outcome: str | None = None  # why it was cut: cancelled, deleted, shutdown
        self.serving: asyncio.Future[None] | None = None
        self.task: asyncio.Future[None] | None = None
        self.finished = asyncio.Event()
        self.ended = 0.0
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def next_seq(self) -> int:
        return self.offset + len(self.events)

    @property
    def changed(self) -> asyncio.Future[None]:
        """Resolves when an event is added or the run ends."""
        return self._changed

    def since(self, seq: int) -> list[bytes]:
        """The kept events numbered ``seq`` and later."""
        return list(itertools.islice(self.events, max(0, seq - self.offset), None))

    def cut(self, outcome: str) -> None:
        """Stop the answer (a no-op once it has ended): ``outcome`` says why."""
        if self.outcome is None and self.serving is not None and not self.serving.done():
            self.outcome = outcome
            self.serving.cancel()

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        """Add an event, numbered next in the run's own sequence."""
        event = {"type": kind, **payload, "sequence_number": self.next_seq}
        encoded = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        self.events.append(encoded)
        self.size += len(encoded)
        while self.size > RUN_EVENT_BYTES and len(self.events) > 1:
            self.size -= len(self.events.popleft())
            self.offset += 1
        self._wake()

    def absorb(self, event: dict[str, Any]) -> None:
        """One event of the answer: its response object made this run's, then kept renumbered."""
        kind = str(event.get("type"))
        response = event.get("response")
        if isinstance(response, dict):
            # The response the client was first told of: its id, its time of creation.
            response.update(id=self.id, background=True, created_at=self.doc["created_at"])
            self.doc = response
            if kind in ("response.created", "response.in_progress"):
                return  # the run said both itself when it began
            self.terminal = kind in ("response.completed", "response.incomplete", "response.failed")
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            index = event.get("output_index")
            self.items[index if isinstance(index, int) else len(self.items)] = event["item"]
        elif kind == "error":
            self.error = {"code": _error_code(event.get("code"), 502), "message": str(event.get("message"))}
        self.emit(kind, {k: v for k, v in event.items() if k not in ("type", "sequence_number")})

    def settle(self, http_error: dict[str, Any] | None) -> None:
        """The final document, unless the answer ended itself: cancelled, or failed (said as a
        ``response.failed`` event too, so a client following the stream sees why it ended)."""
        if self.terminal:
            return
        doc = {**self.doc, "output": [self.items[i] for i in sorted(self.items)]}
        if self.outcome in ("cancelled", "deleted"):
            self.doc = {**doc, "status": "cancelled"}
            return
        if self.outcome == "shutdown":
            error = {"code": "server_error", "message": SHUT_DOWN}
        else:
            error = http_error or self.error or {"code": "server_error", "message": CUT_SHORT}
        self.doc = {**doc, "status": "failed", "error": error}
        self.emit("response.failed", {"response": self.doc})

    def finish(self) -> None:
        self.ended = time.monotonic()
        self.finished.set()
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)


class _Recorder:
    """The ASGI ``send`` of the answer being run: its stream taken apart into the run's events, or
    the error it answered with before any stream began."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.status = 200
        self.error_body = bytearray()
        self._rest = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            return
        body = message.get("body", b"")
        if self.status >= 400:
            self.error_body += body
            return
        data = (self._rest + body).replace(b"\r\n", b"\n")
        *events, self._rest = data.split(b"\n\n")
        for event in events:
            payload = _event_data(event)
            if payload is not None:
                self.run.absorb(payload)

    def http_error(self) -> dict[str, Any] | None:
        """The error the answer was refused with, as a response's ``error`` object."""
        if self.status < 400:
            return None
        try:
            error = orjson.loads(bytes(self.error_body)).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            error = {}
        message = error.get("message") if isinstance(error, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return {"code": _error_code(code, self.status), "message": str(message or f"HTTP {self.status}")}


class Background:
    """The background responses this replica runs, and what clients do with them."""

    def __init__(
        self,
        config: Config,
        generation: Generation,
        backends: dict[str, Backend],
        state: State,
        accounting: Accounting,
    ) -> None:
        self.config = config
        self.generation = generation
        self.backends = backends
        self.state = state
        self.accounting = accounting
        self._runs: dict[str, Run] = {}
        self._finished: OrderedDict[str, Run] = OrderedDict()
        self._finished_size = 0  # bytes of events the finished runs keep
        self._grace_ends: float | None = None  # loop time the shutdown's grace period ends

    # ------------------------------------------------------------------------------- starting

    async def detach(self, call: Call, route: Route, receive: Receive, send: Send) -> bool:
        """Run ``call`` in the background when it asks and its route needs the gateway to; answer
        at once. False when the request is not one (it is then served as usual)."""
        if call.body.get("background") is not True:
            return False
        if call.body.get("store") is False:
            raise InvalidRequestError(NEEDS_STORE, code="invalid_value", param="store")
        if self._upstream_runs(route):
            return False
        self._check_chain(call, route)
        run = await self._start(call, route)
        call.detached = True
        if call.stream:
            await self.follow(call, run, -1, receive, send)
        else:
            await self.accounting.answer(call, send, run.doc)
        return True

    def _upstream_runs(self, route: Route) -> bool:
        """Whether every target is a native Responses upstream, which runs background responses
        (and answers GET and cancel for them) itself."""
        return all(self._native(self.backends[t.backend]) for t in route.targets)

    def _native(self, backend: Backend) -> bool:
        return backend.chains and backend.passthrough

    def _check_chain(self, call: Call, route: Route) -> None:
        """An unknown ``previous_response_id`` fails now, as it would in the foreground, rather than
        as a failed response later: no target can resolve it when the gateway does not have it."""
        previous = call.body.get("previous_response_id")
        if (
            previous
            and call.items is None
            and not any(self.backends[t.backend].chains for t in route.targets)
        ):
            raise PreviousResponseNotFound(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )

    async def _start(self, call: Call, route: Route) -> Run:
        self._sweep()
        if len(self._runs) - len(self._finished) >= MAX_RUNNING:
            raise RateLimitError(
                f"this gateway replica is running {MAX_RUNNING} background responses already; retry shortly",
                code="too_many_background_responses",
                retry_after=1.0,
            )
        key_name = call.key.name if call.key else None
        response_id = new_id("resp")
        run = Run(response_id, key_name, _opening(call, response_id))
        run.emit("response.created", {"response": run.doc})
        run.emit("response.in_progress", {"response": run.doc})
        run.committed = await self.state.chains.put(_stored(call, run.doc))
        self._runs[run.id] = run
        inner = _inner(call)
        recorder = _Recorder(run)
        run.serving = asyncio.ensure_future(self.generation.serve(inner, route, _never, recorder.send))
        run.task = asyncio.ensure_future(self._run(run, call, inner, recorder))
        return run

    # -------------------------------------------------------------------------------- running

    async def _run(self, run: Run, call: Call, inner: Call, recorder: _Recorder) -> None:
        """Wait for the answer (watching for a cancel from elsewhere), then keep its end."""
        assert run.serving is not None
        watch = asyncio.ensure_future(self._watch(run)) if self.state.chains.shared else None
        await asyncio.wait({run.serving})
        if watch is not None:
            watch.cancel()
        if run.serving.cancelled():
            await self._account_cut(run, inner)
        elif (broken := run.serving.exception()) is not None:
            log.error("background response %s broke: %s", run.id, describe_error(broken))
            run.error = {"code": "server_error", "message": "internal gateway error"}
            self.accounting.account(inner, await self.accounting.estimate(inner), 500)
        run.settle(recorder.http_error())
        await self._keep(run, call)
        run.finish()
        if run.outcome == "deleted":  # gone everywhere: this replica forgets it too
            self._runs.pop(run.id, None)
            return
        self._finished[run.id] = run
        self._finished_size += run.size

    async def _watch(self, run: Run) -> None:
        """Read the stored document now and then: another replica cancels or deletes a run by
        writing it (it cannot reach this task), and the run stops when it sees that."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            try:
                found = await self.state.chains.fresh(run.id)
            except Exception as exc:  # whatever the database driver raises: keep running
                log.debug("background response %s: store read failed: %s", run.id, describe_error(exc))
                continue
            if found is None and run.committed:
                run.cut("deleted")
            elif found is not None and found.response.get("status") == "cancelled":
                run.cut("cancelled")

    async def _account_cut(self, run: Run, inner: Call) -> None:
        """A cut answer's usage, as for a request cut in the foreground: its input counted offline,
        about a token per event that came."""
        shutdown = run.outcome == "shutdown"
        inner.error = "shutdown" if shutdown else "cancelled"
        self.accounting.account(inner, await self.accounting.estimate(inner), 503 if shutdown else 499)

    async def _keep(self, run: Run, call: Call) -> None:
        """Store the final document, unless the response was deleted meanwhile; a cancel written
        by another replica since the last look wins over the answer finishing."""
        chains = self.state.chains
        if chains.shared and run.outcome is None:
            try:
                found = await chains.fresh(run.id)
            except Exception as exc:  # whatever the database driver raises: write what we have
                log.debug("background response %s: store read failed: %s", run.id, describe_error(exc))
            else:
                if found is None and run.committed:
                    run.outcome = "deleted"
                elif found is not None and found.response.get("status") == "cancelled":
                    run.doc = {**run.doc, "status": "cancelled"}
        if run.outcome != "deleted":
            await chains.put(_stored(call, run.doc))

    # ------------------------------------------------------------------------- what clients do

    def local(self, response_id: str, call: Call) -> Run | None:
        """The run of that id on this replica, if the caller's key made it (to another key it does
        not exist)."""
        self._sweep()
        run = self._runs.get(response_id)
        if run is None or run.key_name != (call.key.name if call.key else None):
            return None
        return run

    async def follow(self, call: Call, run: Run, after: int, receive: Receive, send: Send) -> None:
        """The run's events numbered after ``after``, as they come, until it ends or the client
        leaves (the run goes on)."""
        if after + 1 < run.offset:
            raise InvalidRequestError(
                f"the events of response {run.id} up to sequence number {run.offset - 1} are no longer "
                "kept; resume from a later one, or poll GET /v1/responses/{id} for the response",
                code="stream_events_expired",
                param="starting_after",
            )
        call.responding = True
        # Should this request be cut (a shutdown), its stream ends with an error event that follows
        # the run's own numbering, not with a response of another id.
        call.failing_end = lambda err: _error_event(err.code or "server_error", err.message, run.next_seq)
        await http.start_stream(send, [(b"x-request-id", call.request_id.encode())])
        gone = asyncio.ensure_future(http.disconnected(receive))
        try:
            await self._relay(run, after + 1, gone, send)
        finally:
            gone.cancel()
        await http.end_stream(send)

    async def _relay(self, run: Run, seq: int, gone: asyncio.Future[Any], send: Send) -> None:
        keepalive = self.config.server.keepalive_seconds
        while True:
            if seq < run.offset:  # a slow reader fell behind what is kept: say so, and stop
                message = (
                    f"this stream fell behind the events of response {run.id} kept in memory; "
                    "poll GET /v1/responses/{id} for the response"
                )
                await http.stream_chunk(send, _error_event("stream_events_expired", message, seq))
                return
            for event in run.since(seq):
                await http.stream_chunk(send, event)
                seq += 1
            if run.finished.is_set() and seq >= run.next_seq:
                return
            done, _ = await asyncio.wait({run.changed, gone}, timeout=keepalive)
            if gone.done():
                return
            if not done:
                await http.stream_chunk(send, RESPONSES.keepalive)

    async def cancel(self, run: Run) -> dict[str, Any]:
        """Cancel a run here; its final document (cancelling twice, or a finished run, just gives
        that, as OpenAI does)."""
        run.cut("cancelled")
        await run.finished.wait()
        return run.doc

    async def delete(self, run: Run) -> None:
        """Stop a run whose response is being deleted, so it never writes it back."""
        run.cut("deleted")
        await run.finished.wait()
        self._runs.pop(run.id, None)
        if self._finished.pop(run.id, None) is not None:
            self._finished_size -= run.size

    async def cancel_elsewhere(self, found: StoredResponse) -> dict[str, Any]:
        """Cancel a response stored by a run on another replica (or one that died with its process):
        the stored document says ``cancelled`` and that run stops when it reads it."""
        doc = found.response
        if doc.get("background") is not True:
            raise InvalidRequestError(
                f"response {found.id} was not created with background: true; only background "
                "responses can be cancelled",
                code="invalid_value",
                param="response_id",
            )
        if doc.get("status") in TERMINAL:
            return doc
        cancelled = {**doc, "status": "cancelled"}
        await self.state.chains.put(dataclasses.replace(found, response=cancelled))
        return cancelled

    def replay(self, doc: dict[str, Any], after: int) -> bytes:
        """A stored response's stream where its events are not kept (another replica ran it, or this
        one restarted): a finished one is its terminal event alone; a running one cannot be followed
        from here."""
        status = doc.get("status")
        if status not in TERMINAL:
            raise InvalidRequestError(
                f"response {doc.get('id')} is still being generated by another gateway replica, which "
                "alone has its events; poll GET /v1/responses/{id} until it finishes, or resume the "
                "stream there",
                status=409,
                code="response_in_progress_elsewhere",
                param="stream",
            )
        if status == "cancelled":
            return b""  # no event says cancelled: the stream just ends
        kind = f"response.{status}"
        event = {"type": kind, "response": doc, "sequence_number": after + 1}
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    # ------------------------------------------------------------------------------ shutdown

    def cut_after(self, seconds: float) -> None:
        """A stop signal came: the runs have ``seconds`` (the grace period) to finish, then are cut,
        whether or not clients are still following them."""
        if self._grace_ends is None:
            loop = asyncio.get_running_loop()
            self._grace_ends = loop.time() + seconds
            loop.call_later(seconds, self._cut_all)

    async def stop(self) -> None:
        """At shutdown: let the runs finish within what is left of the grace period, cut the rest,
        and wait until each has stored its end."""
        tasks = {run.task for run in self._runs.values() if run.task is not None and not run.task.done()}
        left = self._grace_ends - asyncio.get_running_loop().time() if self._grace_ends is not None else 0
        if tasks and left > 0:
            await asyncio.wait(tasks, timeout=left)
        self._cut_all()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _cut_all(self) -> None:
        for run in self._runs.values():
            run.cut("shutdown")

    def _sweep(self) -> None:
        """Forget finished runs past their keeping time, or beyond the memory kept for them."""
        now = time.monotonic()
        while self._finished:
            oldest = next(iter(self._finished.values()))
            if now - oldest.ended < KEEP_FINISHED_SECONDS and self._finished_size <= FINISHED_EVENT_BYTES:
                return
            self._finished_size -= oldest.size
            del self._finished[oldest.id]
            self._runs.pop(oldest.id, None)


def _opening(call: Call, response_id: str) -> dict[str, Any]:
    """The response as first said: in progress, nothing out yet, the request's settings echoed
    (read from the body, so a request that passes through undecoded is not decoded for this)."""
    body = call.body
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": True,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": call.model,
        "output": [],
        "parallel_tool_calls": _or(body.get("parallel_tool_calls"), True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": _or(body.get("reasoning"), {"effort": None, "summary": None}),
        "store": True,
        "temperature": _or(body.get("temperature"), 1.0),
        "text": _or(body.get("text"), {"format": {"type": "text"}}),
        "tool_choice": _or(body.get("tool_choice"), "auto"),
        "tools": _or(body.get("tools"), []),
        "top_p": _or(body.get("top_p"), 1.0),
        "truncation": _or(body.get("truncation"), "disabled"),
        "metadata": _or(body.get("metadata"), {}),
    }


def _inner(call: Call) -> Call:
    """The request the run serves: the client's, streamed (so every event can be kept), without
    ``background`` (the upstreams are to answer it in the foreground)."""
    body = {k: v for k, v in call.body.items() if k != "background"}
    body["stream"] = True
    return Call(
        call.request_id,
        _RUNNER,
        call.started,
        call.client,
        key=call.key,
        headers=call.headers,
        body=body,
        model=call.model,
        stream=True,
        items=call.items,
    )


def _stored(call: Call, doc: dict[str, Any]) -> StoredResponse:
    items = call.items if call.items is not None else input_items(call.body)
    return stored(call.body, items, doc, call.key.name if call.key else None)


async def _never() -> Message:
    """The run's ``receive``: no client is there to go away (cutting the run is how it stops)."""
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


def _event_data(event: bytes) -> dict[str, Any] | None:
    """The JSON object of one SSE event; None for a comment (a keep-alive) or anything else."""
    at = event.find(b"data:")
    if at == -1:
        return None
    try:
        doc = orjson.loads(event[at + 5 :])
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _error_event(code: str, message: str, seq: int) -> bytes:
    """A stream's ``error`` event (its fields at the top level, as in an SSE stream)."""
    event = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": seq}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def _error_code(code: Any, status: int) -> str:
    """A response's ``error.code`` is an enum (typed clients reject anything else): other codes are
    said as the nearest of its values, and the message keeps the detail."""
    if code in RESPONSE_ERROR_CODES:
        return str(code)
    return "rate_limit_exceeded" if status == 429 else "server_error"


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value
