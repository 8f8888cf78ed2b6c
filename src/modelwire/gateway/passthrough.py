"""The fast path's edits: a client's body changed only where the route says.

When the client's dialect equals the upstream's wire, the gateway forwards the client's own JSON
with the model swapped (or, for Gemini, put in the URL), the route's URI parameters applied in
that dialect's own field names, what the host needs fitted (see each wire's ``fit_forwarded``),
and, for the Responses API, a ``previous_response_id`` the gateway expanded itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects.options import WireOptions
from ..errors import ProtocolError
from ..wires import Wire
from .routing import Target


def rewrite(
    body: dict[str, Any],
    target: Target,
    wire: Wire,
    opts: WireOptions,
    *,
    stream: bool,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The client's body with only what the route changes: model, URI parameters, history."""
    body = dict(body)
    if wire.model_in_body:
        body["model"] = target.model
    else:  # the gateway put the URL's model and stream flag in the body; the upstream's URL says them
        body.pop("model", None)
        body.pop("stream", None)
    for name, value in target.params:
        wire.apply_param(body, name, value, opts)
    wire.fit_forwarded(body, opts, stream)
    if items is not None:
        body["input"] = items
        body.pop("previous_response_id", None)
    return body


def json_object(payload: bytes) -> dict[str, Any]:
    """An upstream's JSON answer, or a :class:`ProtocolError` saying what it was instead."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        snippet = payload[:80].decode("utf-8", "replace")
        raise ProtocolError(f"the upstream answered something that is not JSON: {snippet!r}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the upstream answered JSON that is not an object")
    return doc
