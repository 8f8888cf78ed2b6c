"""Planning one OpenAI call: the neutral request fitted to the host and the model, the wire it
goes on, the body it becomes, and how a cut-off answer is continued or a lost chain replayed."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ContextLengthError
from ..observe import ChainInvalidated, Observer, Repaired
from ..types import Message, Request, Response, ToolName
from ..wires import OPENAI_APIS, WIRES, Wire
from .catalog import DEFAULT_CONTEXT_WINDOW, Catalog, ModelProfile, adapt
from .driver import build_request
from .hosts import Host, WireAPI
from .repair import repair
from .strict import strict_schema

COMPACTION_SHARE = 0.7
_FAST_TIERS = {"fast": "priority", "priority": "priority"}


@dataclass(slots=True)
class Plan:
    """One logical call: the request as it will be sent and what is needed to redo it.

    ``stops`` are stop sequences applied here because the API or model takes none.
    """

    req: Request
    transcript: list[Message]
    wire: Wire
    profile: ModelProfile
    chained: bool = False
    stops: list[str] | None = None


class Planner:
    """The OpenAI driver's settings that shape a call, and what they make of a request."""

    def __init__(
        self,
        *,
        host: Host,
        api: WireAPI,
        catalog: Catalog,
        observer: Observer,
        store: bool | None,
        compaction: bool,
        continuations: int,
        extra_body: dict[str, Any],
        context_cap: int | None = None,
    ) -> None:
        self.host, self.api, self.catalog, self.observer = host, api, catalog, observer
        self.store, self.compaction, self.continuations = store, compaction, continuations
        self.extra_body = extra_body
        # A route's cap on context (given, else the host's own): see :meth:`window`.
        self.context_cap = context_cap if context_cap is not None else host.profile.context_cap
        self._reported_repairs: OrderedDict[str, None] = OrderedDict()

    def plan(self, request: Request | None, settings: dict[str, Any], *, stream: bool) -> Plan:
        req = build_request(request, settings, stream=stream)
        req.messages, report = repair(req.messages)
        if report is not None:
            self._report_repair(report)
        profile = self.catalog.profile(req.model)
        adapt(req, profile)
        wire = self._wire_for(profile, req)
        _fit_tool_choice(req, wire)
        host = self.host.profile
        if req.service_tier in _FAST_TIERS and host.service_tiers:
            req.service_tier = _FAST_TIERS[req.service_tier]
        if host.strict_tools:
            _strict_tools(req)
        if host.native_fields and wire.chains:
            self._native_responses(req)
        stops = None
        if req.stop and (not wire.stop_sequences or profile.reasoning):
            stops, req.stop = req.stop, None
        plan = Plan(req=req, transcript=req.messages, wire=wire, profile=profile, stops=stops)
        if self.chains(wire) and req.store and req.previous_response_id is None:
            _chain(plan)
        return plan

    def window(self, model: str) -> int | None:
        """The context ``model`` may use on this route: its window under any cap."""
        return self.catalog.context_window(model, self.context_cap)

    @property
    def capped(self) -> bool:
        """Whether a cap (the catalog's or this route's) bounds context windows."""
        return self.catalog.capped(self.context_cap)

    async def check_fits(self, plan: Plan, body: bytes) -> None:
        """Refuse, before it goes upstream, a request over a capped window (a cap is this side's
        promise, so it is kept here rather than left to an upstream whose window may be larger).

        Counting is O(input), so it runs only when the body could be over: a body's bytes bound
        its text tokens from above (every token is at least one byte).
        """
        if not self.capped:
            return
        window = self.window(plan.req.model)
        if window is None or len(body) <= window:
            return
        from ..tokens import count_request_tokens

        tokens = await asyncio.to_thread(count_request_tokens, plan.req)
        if tokens > window:
            native = plan.profile.context_window
            raise ContextLengthError(
                f"This model's maximum context length on this route is {window} tokens (a context cap"
                f"{f'; the model itself takes {native}' if native and native > window else ''}), but "
                f"the request has {tokens} input tokens. Shorten the input or compact the conversation.",
                code="context_length_exceeded",
                param="input",
            )

    def chains(self, wire: Wire) -> bool:
        """Whether calls on ``wire`` chain by stored response id on this host."""
        return self.host.profile.stateful and wire.chains

    def _wire_for(self, profile: ModelProfile, req: Request) -> Wire:
        """The configured API, unless the host or the model cannot serve this request on it."""
        wires = self.host.profile.wires
        configured = OPENAI_APIS[self.api]
        if configured not in wires:
            return WIRES[wires[0]]
        apis = profile.apis
        if (
            self.api == "chat"
            and "responses" in apis
            and ("chat" not in apis or (req.tools and _chat_refuses_tools(profile, req)))
        ):
            return WIRES["openai_responses"]
        return WIRES[configured]

    def _native_responses(self, req: Request) -> None:
        if req.store is None:
            req.store = self.store if self.store is not None else False
        if not self.host.profile.stateful:
            req.store = False
        if req.prompt_cache_key is None:
            req.prompt_cache_key = prompt_cache_key(req)

    def _report_repair(self, report: Repaired) -> None:
        fresh = [m for m in report.missing if m[0] not in self._reported_repairs]
        if not (fresh or report.dropped or report.moved):
            return
        for call_id, _ in fresh:
            self._reported_repairs[call_id] = None
        while len(self._reported_repairs) > 4096:
            self._reported_repairs.popitem(last=False)
        report.missing = fresh
        self.observer.emit(report)

    def body(self, plan: Plan) -> dict[str, Any]:
        req, host = plan.req, self.host.profile
        body = plan.wire.encode(req, host.options)
        if plan.wire.chains:  # the Responses API: reasoning to replay, compaction
            include = list(req.extra.get("include") or []) if req.dialect == plan.wire.name else []
            if host.native_fields and not req.store and plan.profile.reasoning is not False:
                include.append("reasoning.encrypted_content")
            if include:
                body["include"] = sorted(set(include))
            if host.compaction and self.compaction:
                window = self.window(req.model) or DEFAULT_CONTEXT_WINDOW
                threshold = max(1000, int(window * COMPACTION_SHARE))
                body.setdefault(
                    "context_management", [{"type": "compaction", "compact_threshold": threshold}]
                )
        if not host.forwards_bodies:
            _fit_codex(body)
        if not host.metadata:
            body.pop("metadata", None)
        body.update(self.extra_body)
        return body

    def should_continue(self, response: Response, done: int) -> bool:
        # A cut-off answer holding tool calls is the caller's to act on: continuing would need
        # their results first.
        return response.stop_reason == "length" and done < self.continuations and not response.tool_calls

    def continuation(self, plan: Plan, response: Response) -> Plan:
        """The plan for the call that continues ``response``."""
        transcript = [
            *plan.transcript,
            Message(role="assistant", content=list(response.content), id=response.id),
        ]
        req = dataclasses.replace(plan.req, messages=transcript, previous_response_id=None)
        new = Plan(req=req, transcript=transcript, wire=plan.wire, profile=plan.profile, stops=plan.stops)
        if self.chains(plan.wire) and req.store:
            _chain(new)
        return new

    def on_socket(self, plan: Plan, remembered: str | None, warm: bool) -> Plan:
        """The plan as sent on a WebSocket whose connection remembers response ``remembered`` (its
        most recent; ``warm``: a warm-up, holding none of the conversation).

        A caller's own ``previous_response_id`` is kept. Otherwise a transcript that continues the
        remembered response is chained onto it, sending only what follows (the connection keeps
        it even with ``store: false``); failing that, the planner's chain onto a stored response
        is kept (any connection finds those), and anything else goes whole: reasoning items with
        their ``encrypted_content``, call ids as they were, no ``previous_response_id``.
        """
        if plan.req.previous_response_id is not None and not plan.chained:
            return plan
        rest = _after(plan.transcript, remembered, warm) if remembered else None
        if rest is not None:
            req = dataclasses.replace(plan.req, messages=rest, previous_response_id=remembered)
            return dataclasses.replace(plan, req=req, chained=True)
        if plan.chained:
            return plan
        req = dataclasses.replace(plan.req, messages=plan.transcript, previous_response_id=None)
        return dataclasses.replace(plan, req=req)

    def unchain(self, plan: Plan) -> Plan:
        """The stored response we chained from is gone: replay the whole transcript instead."""
        assert plan.req.previous_response_id is not None
        self.observer.emit(ChainInvalidated(previous_response_id=plan.req.previous_response_id))
        req = dataclasses.replace(plan.req, messages=plan.transcript, previous_response_id=None)
        return Plan(
            req=req, transcript=plan.transcript, wire=plan.wire, profile=plan.profile, stops=plan.stops
        )


def _chat_refuses_tools(profile: ModelProfile, req: Request) -> bool:
    """Whether the model takes no tools on Chat Completions (some only at reasoning effort none)."""
    return profile.chat_tools == "no" or (
        profile.chat_tools == "effort-none" and req.reasoning_effort not in (None, "none")
    )


def _fit_tool_choice(req: Request, wire: Wire) -> None:
    """Drop a tool choice naming a tool this wire cannot carry (another dialect's server tool,
    such as Anthropic's web search): OpenAI refuses a choice of a tool it was not given."""
    if req.tool_choice is None or req.dialect in (None, wire.name):
        return  # no choice to fit, or the caller's own dialect, whose extra tools travel with it
    named = req.tool_choice.name if isinstance(req.tool_choice, ToolName) else None
    if (named is not None and named not in {t.name for t in req.tools}) or (
        req.tool_choice == "required" and not req.tools
    ):
        req.tool_choice = None


def _strict_tools(req: Request) -> None:
    """Rewrite schemas marked strict into the form OpenAI's strict mode accepts, or unmark them."""
    tools = []
    for tool in req.tools:
        if tool.strict and tool.parameters is not None:
            fitted = strict_schema(tool.parameters)
            tool = dataclasses.replace(tool, parameters=fitted or tool.parameters, strict=fitted is not None)
        tools.append(tool)
    req.tools = tools
    fmt = req.response_format
    if fmt is not None and fmt.strict and fmt.schema is not None:
        fitted = strict_schema(fmt.schema)
        req.response_format = dataclasses.replace(fmt, schema=fitted or fmt.schema, strict=fitted is not None)


def _fit_codex(body: dict[str, Any]) -> None:
    """The subscription route refuses sampling and output limits, and requires instructions."""
    for name in ("max_output_tokens", "temperature", "top_p"):
        body.pop(name, None)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") == "minimal":
        reasoning["effort"] = "low"
    body.setdefault("instructions", "You are a helpful assistant.")


def _chain(plan: Plan) -> None:
    """Send only what follows the last stored response in the transcript, chained by its id."""
    messages = plan.req.messages
    lead = leading_instructions(messages)  # not inherited through a chain: keep sending them
    for i in range(len(messages) - 1, lead - 1, -1):
        msg = messages[i]
        if msg.role == "assistant" and msg.id and msg.id.startswith("resp_"):
            plan.req.messages = messages[:lead] + messages[i + 1 :]
            plan.req.previous_response_id = msg.id
            plan.chained = True
            return


def _after(messages: list[Message], response_id: str | None, warm: bool) -> list[Message] | None:
    """The instructions and what follows response ``response_id`` in the transcript (everything
    after the instructions for a warm-up), or None when that is nothing new or not found."""
    lead = leading_instructions(messages)
    start = lead if warm else _answered_at(messages, response_id, lead)
    if start is None or start >= len(messages):
        return None
    return messages[:lead] + messages[start:]


def _answered_at(messages: list[Message], response_id: str | None, lead: int) -> int | None:
    """The index after the last assistant message that is response ``response_id``."""
    for i in range(len(messages) - 1, lead - 1, -1):
        if messages[i].role == "assistant" and messages[i].id == response_id:
            return i + 1
    return None


def leading_instructions(messages: list[Message]) -> int:
    """How many system/developer messages lead: they go as instructions, never inherited."""
    lead = 0
    while lead < len(messages) and messages[lead].role in ("system", "developer"):
        lead += 1
    return lead


def prompt_cache_key(req: Request) -> str:
    """A cache key from what stays the same across a conversation: model, instructions, tools."""
    digest = hashlib.sha256(req.model.encode())
    for msg in req.messages:
        if msg.role not in ("system", "developer"):
            break
        digest.update(msg.text.encode())
    for tool in req.tools:
        digest.update(
            orjson.dumps([tool.name, tool.description, tool.parameters], option=orjson.OPT_SORT_KEYS)
        )
    return "mw-" + digest.hexdigest()[:40]
