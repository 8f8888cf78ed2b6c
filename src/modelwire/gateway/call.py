"""One client request in flight: what the gateway learned about it, from admission to its log line."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..types import Request, Usage

MINTED_ID_PREFIX = f"req_{uuid.uuid4().hex[:12]}"
"""What starts the request ids this process makes up (a client may bring its own)."""

if TYPE_CHECKING:
    from ..errors import ModelwireError
    from .auth import ClientKey
    from .routing import Target
    from .surfaces import Surface
    from .tracing import RequestTrace
    from .upstream import Backend
    from .upstream_sockets import SocketTurn


@dataclass(slots=True, eq=False)
class Call:
    request_id: str
    surface: Surface
    started: float
    client: str = ""
    key: ClientKey | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    stream: bool = False
    request: Request | None = None  # the neutral request, decoded only when translating
    items: list[dict[str, Any]] | None = None  # Responses input after chain expansion
    missing_item: str | None = None  # an item_reference the gateway does not hold
    ttft: float | None = None
    backend: str | None = None  # who served it (or failed it last)
    upstream_model: str | None = None
    status: int = 200
    usage: Usage | None = None
    cost: float | None = None
    error: str | None = None  # why it did not succeed, as a short code
    responding: bool = False  # the response head went out: errors must go inside the body now
    # Once answer events flow, how to end that same stream with an error (its ids, its sequence).
    failing_end: Callable[[ModelwireError], bytes] | None = None
    task: asyncio.Task[Any] | None = None
    cut: bool = False  # ended by the gateway's shutdown, past the grace period
    events: int = 0  # stream events forwarded, for estimating output when a stream is cut
    socket: SocketTurn | None = None  # a response.create from a client's WebSocket
    detached: bool = False  # handed to a background run, which accounts its usage instead
    hops: int = 0  # upstream attempts made (failover and retries included)
    trace: RequestTrace | None = None  # its spans, when tracing is on (gateway/tracing.py)

    def served_by(self, target: Target, backend: Backend, hops: int = 1) -> None:
        self.backend, self.upstream_model, self.hops = backend.name, target.model, hops

    def decoded(self) -> Request:
        if self.request is None:
            body = self.body
            if self.items is not None:  # the chain is expanded: the upstream needs no id
                body = {**body, "input": self.items, "previous_response_id": None}
            self.request = self.surface.decode_request(body)
        return self.request

    def echoed(self) -> Request:
        """The request as its answer repeats it back: with the ``previous_response_id`` the client
        named, which :meth:`decoded` leaves out once the gateway expanded the chain itself."""
        req = self.decoded()
        previous = self.body.get("previous_response_id")
        if self.items is None or not isinstance(previous, str):
            return req
        return dataclasses.replace(req, previous_response_id=previous)


class InFlight:
    """The requests being served, so a shutdown past its grace period can end each one cleanly
    (its own error in its own dialect, a usage row) instead of leaving them to be killed."""

    def __init__(self) -> None:
        self._calls: set[Call] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.entered = 0  # requests ever entered: tells a quiet spell from a busy one

    def enter(self, call: Call) -> None:
        call.task = asyncio.current_task()
        self._calls.add(call)
        self.entered += 1

    def leave(self, call: Call) -> None:
        self._calls.discard(call)

    def __len__(self) -> int:
        return len(self._calls)

    def cut_after(self, seconds: float) -> None:
        """From now, give in-flight requests ``seconds`` to finish, then cut the rest."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(seconds, self.cut_all)

    def cut_all(self) -> None:
        for call in list(self._calls):
            if call.task is not None and not call.task.done():
                call.cut = True
                call.task.cancel("modelwire: shutdown grace period over")
