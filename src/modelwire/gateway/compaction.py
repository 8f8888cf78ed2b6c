"""``POST /v1/responses/compact``: OpenAI's server-side compaction of a conversation.

What it returns (compacted items with ``encrypted_content``) only the host that minted it can read
back, and no other upstream has an equivalent, so it is never translated: the request goes to the
route's targets whose host offers compaction (native OpenAI and Azure OpenAI), in failover order,
and the answer passes through. A ``previous_response_id`` the gateway stored itself (served by a
stateless upstream) is expanded into the input, as for any Responses request; a native upstream's
own id goes up as it came.

A route with no such target is refused with a 400 ``invalid_request_error`` naming the model: the
request is well formed and the endpoint exists, but this model cannot do it, so the client must
change the request (compact on its side, or pick a model served by OpenAI). Not a 404, which says
the endpoint or model does not exist, nor a 5xx, which says the server failed and which the SDKs
retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects import openai_responses
from ..errors import InvalidRequestError, ModelwireError
from ..providers.transport import Transport
from ..providers.transport import call as upstream_call
from . import passthrough
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .http import Receive, Scope, Send
from .routing import Target
from .upstream import Backend, Failover


@dataclass(eq=False)
class Compaction:
    backends: dict[str, Backend]
    failover: Failover
    transport: Transport
    admission: Admission
    accounting: Accounting

    def offers(self, backend: Backend) -> bool:
        return backend.profile.compaction and backend.passthrough

    async def compact(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            route = await self.admission.admit(call, scope, receive)
            await self.admission.expand_chain(call)
            targets = [t for t in route.order() if self.offers(self.backends[t.backend])]
            if not targets:
                raise InvalidRequestError(
                    f"the model {call.model!r} is not served by an upstream with server-side compaction "
                    "(OpenAI or Azure OpenAI backends); compact the conversation on the client, or use "
                    "a model such an upstream serves",
                    code="compaction_not_supported",
                    param="model",
                )
            outcome = await self.failover.run(targets, lambda t, b, i: self._attempt(call, t, b, i))
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        payload, doc = outcome.value
        usage = doc.get("usage")
        decoded = openai_responses.decode_usage(usage if isinstance(usage, dict) else None)
        await self.accounting.served(call, send, outcome, payload, decoded)

    async def _attempt(
        self, call: Call, target: Target, backend: Backend, index: int
    ) -> tuple[bytes, dict[str, Any]]:
        # Only the model changes: the route's URI parameters (temperature, reasoning effort, ...)
        # are not fields of a compaction request, and the upstream would refuse them.
        body = {**call.body, "model": target.model}
        if call.items is not None:
            body["input"] = call.items
            body.pop("previous_response_id", None)
        headers = backend.headers(index)
        headers["X-Client-Request-Id"] = call.request_id
        reply = await upstream_call(
            self.transport,
            "POST",
            backend.host.url("response", target.model, suffix="compact"),
            headers,
            orjson.dumps(body),
            read_timeout=backend.config.timeout,
        )
        payload = await reply.read()
        return payload, passthrough.json_object(payload)
