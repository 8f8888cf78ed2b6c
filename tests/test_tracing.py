"""OpenTelemetry traces end to end: a real ``modelwire serve`` process exporting OTLP/HTTP to a real
receiver (``tests/otlp_receiver.py``, decoding with ``opentelemetry-proto``), the official SDKs as
clients, the fake upstream recording the trace context it is sent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from modelwire.gateway import spans as w3c
from modelwire.gateway.config import ConfigError, parse_config
from modelwire.gateway.otlp import Destination, Exporter
from modelwire.gateway.telemetry import settings

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import (
    CLIENT_KEY,
    RunningGateway,
    base_config,
    free_port,
    open_socket,
    request,
    start_gateway,
)
from .otlp_receiver import OtlpReceiver, ReceivedSpan

ANTHROPIC_KEY = "sk-ant-up-trace-0123456789"
UPSTREAM_KEYS = ["sk-up-oai-1", "sk-up-oai-2", "sk-up-compat", "sk-up-cr", "sk-up-flaky", "sk-up-nc"]
# Exports every 50 ms instead of every 5 s, so that a test waits little for its spans.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    try:
        yield server
    finally:
        server.stop()


def traced_config(
    upstream: FakeUpstream, tmp: Path, receiver: OtlpReceiver, **telemetry: Any
) -> dict[str, Any]:
    config = base_config(upstream, tmp)
    config["backends"]["claude"] = {"type": "anthropic", "base_url": upstream.root, "api_key": ANTHROPIC_KEY}
    config["models"].insert(0, {"name": "anthro", "route": "claude/claude-up"})
    config["telemetry"] = {"endpoint": receiver.url, **telemetry}
    return config


def _start_with_env(config: dict[str, Any], tmp: Path, name: str, env: dict[str, str]) -> RunningGateway:
    """``start_gateway`` with exactly ``env`` as its environment (none of the caller's OTEL_*)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        return start_gateway(config, tmp, name=name)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def traced(
    upstream_server: FakeUpstream, receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("traced")
    gateway = _start_with_env(
        traced_config(upstream_server, tmp, receiver), tmp, "traced", {**CLEAN_ENV, **FAST_EXPORT}
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def sdk(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)


def one(spans: list[ReceivedSpan], kind: str, name: str | None = None) -> ReceivedSpan:
    found = [s for s in spans if s.kind == kind and (name is None or s.name == name)]
    assert len(found) == 1, [(s.kind, s.name) for s in spans]
    return found[0]


def sent_context(headers: dict[str, str]) -> tuple[str, str, bool]:
    """The (trace id, parent span id, sampled) of a ``traceparent`` header."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


def attempts(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.kind == "client"), key=lambda s: s.attributes["modelwire.hop"])


# ------------------------------------------------------------------------------------ the spans


def test_a_chat_request_is_one_trace_of_server_admission_and_attempt_spans(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(20, 4)))
    with sdk(traced) as client:
        client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "Say hello in French."}],
            max_tokens=50,
            temperature=0.5,
            extra_headers={"x-request-id": "trace-chat-1"},
        )
    spans = receiver.trace_of("trace-chat-1", 3)
    server = one(spans, "server")
    assert server.name == "chat chat-model" and server.parent_id == ""
    assert server.resource["service.name"] == "modelwire"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "chat-model"
    assert attrs["gen_ai.request.max_tokens"] == 50 and attrs["gen_ai.request.temperature"] == 0.5
    assert attrs["gen_ai.response.model"] == "gpt-4.1"
    assert attrs["gen_ai.response.id"].startswith("chatcmpl")
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (20, 4)
    assert attrs["http.request.method"] == "POST" and attrs["url.path"] == "/v1/chat/completions"
    assert attrs["http.response.status_code"] == 200
    assert attrs["modelwire.key_name"] == "all" and attrs["modelwire.backend"] == "compat"
    assert attrs["modelwire.dialect"] == "openai_chat" and attrs["modelwire.stream"] is False
    assert server.status != "error" and "error.type" not in attrs

    admission = one(spans, "internal", "admission")
    assert admission.parent_id == server.span_id and admission.status != "error"
    (attempt,) = attempts(spans)
    assert attempt.name == "chat gpt-4.1" and attempt.parent_id == server.span_id
    upstream_port = int(upstream.url.rsplit(":", 1)[1].split("/")[0])
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["server.port"] == upstream_port
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "gpt-4.1"
    assert (attempt.attributes["modelwire.hop"], attempt.attributes["modelwire.retry"]) == (1, 0)
    # the upstream was sent the attempt span's context
    assert sent_context(upstream.last.headers) == (server.trace_id, attempt.span_id, True)


def test_a_streamed_request_has_a_stream_span_with_its_first_token(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("one two three", usage=(12, 3)))
    with sdk(traced) as client:
        stream = client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "trace-stream-1"},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two three"
    spans = receiver.trace_of("trace-stream-1", 4)
    server = one(spans, "server")
    stream_span = one(spans, "internal", "stream")
    assert stream_span.parent_id == server.span_id
    assert stream_span.events == ["first_token"]
    assert server.attributes["modelwire.stream"] is True
    assert 0 < server.attributes["modelwire.ttft_ms"] < 10_000
    assert (
        server.attributes["gen_ai.usage.input_tokens"],
        server.attributes["gen_ai.usage.output_tokens"],
    ) == (
        12,
        3,
    )
    assert len(attempts(spans)) == 1


def test_failover_has_a_span_per_attempt_the_failed_ones_in_error(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.for_model("flaky-model", Reply.error(503), Reply.error(502))  # max_retries: 1 → two tries
    upstream.for_model("backup-model", Reply.text("from the backup"))
    with sdk(traced) as client:
        client.chat.completions.create(
            model="failover",
            messages=[{"role": "user", "content": "q"}],
            extra_headers={"x-request-id": "trace-failover-1"},
        )
    spans = receiver.trace_of("trace-failover-1", 5)
    server = one(spans, "server")
    first, second, third = attempts(spans)
    assert [s.attributes["modelwire.hop"] for s in (first, second, third)] == [1, 2, 3]
    assert [s.attributes["modelwire.retry"] for s in (first, second, third)] == [0, 1, 0]
    assert [s.attributes["modelwire.backend"] for s in (first, second, third)] == ["flaky", "flaky", "compat"]
    assert [s.name for s in (first, second, third)] == ["chat flaky-model"] * 2 + ["chat backup-model"]
    for failed, status in ((first, 503), (second, 502)):
        assert failed.status == "error"
        assert failed.attributes["http.response.status_code"] == status
        assert failed.attributes["error.type"] == "UpstreamUnavailableError"
    assert third.status != "error" and "error.type" not in third.attributes
    assert all(s.parent_id == server.span_id for s in (first, second, third))
    # each attempt sent its own span's context
    sent = [sent_context(r.headers) for r in upstream.requests]
    assert sent == [(server.trace_id, s.span_id, True) for s in (first, second, third)]
    assert server.attributes["modelwire.backend"] == "compat" and server.status != "error"


def test_an_anthropic_request_says_its_operation_and_provider(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(9, 2)))
    with anthropic.Anthropic(base_url=traced.url, api_key=CLIENT_KEY, max_retries=0) as client:
        client.messages.create(
            model="anthro",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "trace-anthropic-1"},
        )
    spans = receiver.trace_of("trace-anthropic-1", 3)
    server = one(spans, "server")
    assert server.name == "chat anthro"
    attrs = server.attributes
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["modelwire.dialect"] == "anthropic_messages" and attrs["url.path"] == "/v1/messages"
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert attrs["gen_ai.response.id"].startswith("msg_")
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (9, 2)
    (attempt,) = attempts(spans)
    assert attempt.name == "chat claude-up"
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic"
    assert upstream.last.headers["x-api-key"] == ANTHROPIC_KEY  # sent, and (below) never exported


def test_gemini_and_embeddings_name_their_operations(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    """A Gemini request (its key in the query, as Google's clients may send it) translated to a Chat
    upstream, and an embeddings request."""
    upstream.script(Reply.text("ok"))
    status, _, _ = request(
        traced,
        "POST",
        f"/v1beta/models/chat-model:generateContent?key={CLIENT_KEY}",
        json.dumps({"contents": [{"parts": [{"text": "q"}]}]}).encode(),
        {"Content-Type": "application/json", "Authorization": "", "x-request-id": "trace-gemini-1"},
    )
    assert status == 200
    spans = receiver.trace_of("trace-gemini-1", 3)
    server = one(spans, "server")
    assert server.name == "generate_content chat-model"
    assert server.attributes["gen_ai.operation.name"] == "generate_content"
    assert server.attributes["url.path"] == "/v1beta/models/chat-model:generateContent"
    (attempt,) = attempts(spans)
    assert attempt.name == "chat gpt-4.1"  # the upstream speaks Chat

    with sdk(traced) as client:
        client.embeddings.create(
            model="chat-model", input=["hello"], extra_headers={"x-request-id": "trace-embed-1"}
        )
    spans = receiver.trace_of("trace-embed-1", 2)
    server = one(spans, "server")
    assert server.attributes["gen_ai.operation.name"] == "embeddings"
    (attempt,) = attempts(spans)
    assert attempt.name == "embeddings gpt-4.1"
    assert attempt.attributes["gen_ai.operation.name"] == "embeddings"

    status, _, _ = request(  # Gemini's embeddings, translated for the Chat backend's host
        traced,
        "POST",
        "/v1beta/models/chat-model:embedContent",
        json.dumps({"content": {"parts": [{"text": "q"}]}}).encode(),
        {"Content-Type": "application/json", "x-request-id": "trace-gemini-embed-1"},
    )
    assert status == 200
    spans = receiver.trace_of("trace-gemini-embed-1", 2)
    server = one(spans, "server")
    assert server.name == "embeddings chat-model"
    (attempt,) = attempts(spans)
    assert attempt.name == "embeddings gpt-4.1"

    status, _, _ = request(traced, "GET", "/v1/models", headers={"x-request-id": "trace-list-1"})
    assert status == 200
    spans = receiver.trace_of("trace-list-1", 2)
    assert one(spans, "internal", "admission").status != "error"  # a listing authenticates only


def test_a_client_error_is_not_a_server_error(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    status, _, _ = request(
        traced,
        "POST",
        "/v1/chat/completions",
        b'{"model": "no-such-model", "messages": []}',
        {"Content-Type": "application/json", "x-request-id": "trace-unknown-1"},
    )
    assert status == 404
    spans = receiver.trace_of("trace-unknown-1", 2)
    server = one(spans, "server")
    assert server.attributes["http.response.status_code"] == 404 and server.status != "error"
    admission = one(spans, "internal", "admission")
    assert admission.status == "error" and admission.attributes["error.type"]
    assert attempts(spans) == [] and upstream.requests == []


# ------------------------------------------------------------------------------ trace context


def test_the_clients_trace_is_continued_and_passed_upstream(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("ok"))
    status, _, _ = request(
        traced,
        "POST",
        "/v1/chat/completions",
        json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "q"}]}).encode(),
        {
            "Content-Type": "application/json",
            "x-request-id": "trace-parent-1",
            "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
            "tracestate": "vendor=abc",
        },
    )
    assert status == 200
    spans = receiver.trace_of("trace-parent-1", 3)
    server = one(spans, "server")
    assert server.trace_id == TRACE_ID and server.parent_id == CLIENT_SPAN
    (attempt,) = attempts(spans)
    headers = upstream.last.headers
    assert sent_context(headers) == (TRACE_ID, attempt.span_id, True)
    assert headers["tracestate"] == "vendor=abc"


def test_an_upstream_websocket_gets_the_trace_context_on_its_handshake(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("over the socket"))
    with open_socket(traced) as socket:
        socket.send(
            json.dumps({"type": "response.create", "model": "resp-model", "input": "q", "store": False})
        )
        while json.loads(socket.recv(timeout=20))["type"] not in ("response.completed", "error"):
            pass
    frames = [r for r in upstream.requests if r.socket]
    assert len(frames) == 1, [(r.method, r.path) for r in upstream.requests]
    trace_id, span_id, _ = sent_context(frames[0].headers)
    spans = receiver.wait_for(lambda s: any(x.span_id == span_id for x in s))
    attempt = next(s for s in spans if s.span_id == span_id)
    assert attempt.kind == "client" and attempt.trace_id == trace_id
    assert attempt.attributes["modelwire.backend"] == "oai"


# ---------------------------------------------------------------------------------- content


def test_content_is_absent_by_default(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("an answer about Zanzibar"))
    with sdk(traced) as client:
        client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "a question about Tuvalu"}],
            extra_headers={"x-request-id": "trace-default-1"},
        )
    spans = receiver.trace_of("trace-default-1", 3)
    assert not any(
        k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system")) for s in spans for k in s.attributes
    )
    assert not any(b"Tuvalu" in body or b"Zanzibar" in body for body in receiver.bodies)


def test_content_when_enabled_is_recorded_redacted_and_no_secret_is_ever_exported(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = traced_config(upstream, tmp_path, receiver)
    env = {**CLEAN_ENV, **FAST_EXPORT, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    gateway = _start_with_env(config, tmp_path, "content", env)
    try:
        upstream.script(Reply.text("Here it is: sk-proj-leakedleakedleaked"))
        with sdk(gateway) as client:
            client.chat.completions.create(
                model="chat-model",
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"My key is {CLIENT_KEY}; what is the capital of France?"},
                ],
                extra_headers={"x-request-id": "trace-content-1"},
            )
        upstream.script(Reply.text("ok"))
        with anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0) as anthropic_client:
            anthropic_client.messages.create(
                model="anthro",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-request-id": "trace-content-2"},
            )
        spans = receiver.trace_of("trace-content-1", 3)
        receiver.trace_of("trace-content-2", 3)
    finally:
        gateway.stop()
    server = one(spans, "server")
    inputs = json.loads(server.attributes["gen_ai.input.messages"])
    assert inputs == [
        {
            "role": "user",
            "parts": [{"type": "text", "content": "My key is [REDACTED]; what is the capital of France?"}],
        }
    ]
    assert json.loads(server.attributes["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Be brief."}
    ]
    outputs = json.loads(server.attributes["gen_ai.output.messages"])
    assert outputs == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Here it is: [REDACTED]"}]}
    ]
    exported = b"".join(receiver.bodies)
    for secret in [CLIENT_KEY, ANTHROPIC_KEY, *UPSTREAM_KEYS, "sk-proj-leakedleakedleaked"]:
        assert secret.encode() not in exported, secret


def test_no_secret_in_anything_the_traced_gateway_exported(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    """Every export of this module's gateway so far (chat, stream, failover, Anthropic, errors, as
    far as this worker ran them), and two of this test's own, one after the other."""
    with sdk(traced) as client:
        for n in (1, 2):
            upstream.script(Reply.text("ok"))
            client.chat.completions.create(
                model="chat-model",
                messages=[{"role": "user", "content": "q"}],
                extra_headers={"x-request-id": f"trace-last-{n}-sk-pastedpastedpasted"},  # a key by mistake
            )
            receiver.trace_of(f"trace-last-{n}-[REDACTED]", 3)  # exported before the next one is made
    exported = b"".join(receiver.bodies)
    assert len(receiver.bodies) >= 2
    for secret in [CLIENT_KEY, ANTHROPIC_KEY, *UPSTREAM_KEYS, "sk-pastedpastedpasted"]:
        assert secret.encode() not in exported, secret


def test_an_invalid_client_traceparent_starts_a_new_trace(
    upstream: FakeUpstream, traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    upstream.script(Reply.text("ok"))
    body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "q"}]}).encode()
    zero_trace = f"00-{'0' * 32}-{CLIENT_SPAN}-01"
    headers = {"Content-Type": "application/json", "x-request-id": "trace-bad-parent-1"}
    assert (
        request(traced, "POST", "/v1/chat/completions", body, {**headers, "traceparent": zero_trace})[0]
        == 200
    )
    server = one(receiver.trace_of("trace-bad-parent-1", 3), "server")
    assert server.parent_id == "" and server.trace_id not in (TRACE_ID, "0" * 32)
    trace_id, _, sampled = sent_context(upstream.last.headers)
    assert trace_id == server.trace_id and sampled


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-01", True),
        (f"  00-{TRACE_ID}-{CLIENT_SPAN}-00 ", True),
        (f"01-{TRACE_ID}-{CLIENT_SPAN}-01-future", True),  # a later version: its first four fields
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra", False),  # version 00 has exactly four
        (f"ff-{TRACE_ID}-{CLIENT_SPAN}-01", False),
        (f"00-{'0' * 32}-{CLIENT_SPAN}-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01", False),
        (f"00-{TRACE_ID[:-1]}-{CLIENT_SPAN}-01", False),
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-1", False),
        (f"00-{TRACE_ID}-{CLIENT_SPAN}-zz", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_traceparent_is_read_as_w3c_trace_context_says(header: str, valid: bool) -> None:
    context = w3c.parse(header, "vendor=abc")
    assert (context is not None) == valid
    if context is not None:
        assert context.traceparent()[3:52] == f"{TRACE_ID}-{CLIENT_SPAN}"
        assert context.trace_state == "vendor=abc"
        assert context.sampled == header.strip().endswith(("01", "future"))


class Span(w3c.Context):
    """A span noted in full (a dict of attributes, events, a status): a record of the exporter's
    own kind, to send it every value type and shape the gateway's records do not."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "kind",
        "message",
        "name",
        "parent_id",
        "sink",
        "start_ns",
        "status",
    )
    spans = 1

    def __init__(
        self,
        sink: Callable[[Span], None],
        name: str,
        kind: int,
        parent: w3c.Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        if parent is None:
            super().__init__(w3c.new_trace_id(), w3c.new_span_id(), w3c.SAMPLED)
            self.parent_id = b""
        else:
            super().__init__(parent.trace_id, w3c.new_span_id(), w3c.SAMPLED, parent.trace_state)
            self.parent_id = parent.span_id
        self.sink, self.name, self.kind = sink, name, kind
        self.attributes = attributes if attributes is not None else {}
        self.events: list[tuple[int, str]] = []
        self.status, self.message = w3c.UNSET, ""
        self.start_ns, self.end_ns = time.time_ns(), 0

    def event(self, name: str) -> None:
        self.events.append((time.time_ns(), name))

    def fail(self, kind: str, message: str | None = None) -> None:
        """In error (``error.type`` ``kind``), and ended."""
        self.attributes["error.type"] = kind
        self.status, self.message = w3c.ERROR, message or ""
        self.end()

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = time.time_ns()
            self.sink(self)

    def write(self, encoding: w3c.Encoding) -> list[bytes]:
        fixed = encoding.fixed(None, _described, self)
        return [
            encoding.span(
                self.trace_id,
                self.trace_state,
                self.span_id,
                self.parent_id,
                self.start_ns,
                self.end_ns,
                fixed,
                tuple(self.attributes.items()),
                self.events,
            )
        ]


def _described(span: Span) -> w3c.Fixed:
    return span.name, span.kind, (span.status, span.message), ()


def test_exporter_queue_is_bounded_and_every_value_type_survives_the_wire(receiver: OtlpReceiver) -> None:
    """Spans past the queue's bound are dropped and counted (never waited for); what is queued goes
    out once the thread starts and stops, and the collector's own decoder reads back every value
    type, event and status."""
    receiver.clear()
    # The queue holds 3 spans.
    env = {
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_BSP_MAX_QUEUE_SIZE": "3",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3",
    }
    destination = Destination.of(receiver.url + "/v1/traces", {}, "http/protobuf", env)
    exporter = Exporter(destination, {"service.name": "unit"}, ("scope", "1"))
    values = {"s": "text", "b": True, "i": -7, "big": 2**40, "f": 0.25, "l": ["a", "b"], "none": None}
    root = Span(exporter.add, "root", w3c.SERVER, None, dict(values))
    child = Span(exporter.add, "child", w3c.CLIENT, root)
    child.event("first_token")
    child.fail("UpstreamError", "it broke")
    root.end()
    for n in range(3):  # the queue holds 3: the two above and one more
        Span(exporter.add, f"extra {n}", w3c.INTERNAL, root).end()
    assert exporter.dropped == 2 and exporter.held == 3
    asyncio.run(_start_and_stop(exporter))
    got = {s.name: s for s in receiver.wait_for(lambda spans: len(spans) >= 3)}
    assert set(got) == {"root", "child", "extra 0"}
    assert got["root"].attributes == {k: v for k, v in values.items() if v is not None}
    assert got["root"].resource == {"service.name": "unit"} and got["root"].parent_id == ""
    assert got["child"].parent_id == got["root"].span_id and got["child"].trace_id == got["root"].trace_id
    assert (got["child"].status, got["child"].events) == ("error", ["first_token"])
    assert got["child"].attributes == {"error.type": "UpstreamError"} and got["root"].status == "unset"


def test_exports_go_in_whole_batches_over_one_kept_alive_connection(receiver: OtlpReceiver) -> None:
    """A full batch goes at once, the rest when the exporter stops (the delay here never passes),
    every POST on the same connection."""
    receiver.clear()
    env = {"OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}
    exporter = Exporter(Destination.of(receiver.url + "/v1/traces", {}, "http/protobuf", env), {}, ("s", "1"))

    async def export() -> None:
        exporter.start()
        for n in range(10):
            Span(exporter.add, f"span {n}", w3c.INTERNAL, None).end()
        # two whole batches, before any shutdown
        await asyncio.to_thread(receiver.wait_for, lambda spans: len(spans) >= 8)
        await exporter.shutdown()

    asyncio.run(export())
    spans = receiver.wait_for(lambda spans: len(spans) >= 10)
    assert sorted(s.name for s in spans) == sorted(f"span {n}" for n in range(10))
    assert [count for _, count in receiver.batches] == [4, 4, 2]
    peers = {peer for peer, _ in receiver.batches}
    assert len(peers) == 1 and None not in peers


async def _start_and_stop(exporter: Exporter) -> None:
    exporter.start()
    await exporter.shutdown()


def test_a_span_that_cannot_be_encoded_is_dropped_not_raised(receiver: OtlpReceiver) -> None:
    receiver.clear()
    exporter = Exporter(Destination.of(receiver.url + "/v1/traces", {}, "http/protobuf", {}), {}, ("s", "1"))
    Span(exporter.add, "lone surrogate \ud800", w3c.SERVER, None).end()  # not encodable as UTF-8
    Span(exporter.add, "fine", w3c.SERVER, None).end()
    asyncio.run(_start_and_stop(exporter))
    assert [s.name for s in receiver.wait_for(lambda spans: len(spans) >= 1)] == ["fine"]
    assert exporter.dropped == 1 and exporter.held == 0


def test_a_collector_refusing_for_now_is_retried_and_json_is_spoken_on_request(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/json: the same trace in the OTLP JSON mapping (hex ids), read
    back by the collector's decoder; a 503 and a 429 before it are retried, not dropped."""
    receiver.clear()
    receiver.refusals[:] = [503, 429]
    gateway = _start_with_env(
        traced_config(upstream, tmp_path, receiver),
        tmp_path,
        "json",
        {**CLEAN_ENV, **FAST_EXPORT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    )
    try:
        upstream.script(Reply.text("ok"))
        body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "q"}]}).encode()
        headers = {"Content-Type": "application/json", "x-request-id": "trace-json-1"}
        assert request(gateway, "POST", "/v1/chat/completions", body, headers)[0] == 200
        spans = receiver.trace_of("trace-json-1", 3)
    finally:
        gateway.stop()
    server = one(spans, "server")
    (attempt,) = attempts(spans)
    assert (
        attempt.parent_id == server.span_id
        and one(spans, "internal", "admission").parent_id == server.span_id
    )
    assert server.attributes["http.response.status_code"] == 200 and attempt.attributes["modelwire.hop"] == 1
    assert sent_context(upstream.last.headers)[:2] == (server.trace_id, attempt.span_id)
    assert len(receiver.posts) >= 3 and receiver.refusals == []
    assert all(post["content-type"] == "application/json" for post in receiver.posts)


# ---------------------------------------------------------------------- on, off and configuration


def _importtime_gateway(
    upstream: FakeUpstream, tmp: Path, name: str, env: dict[str, str], config: dict[str, Any] | None = None
) -> str:
    """A gateway run with ``-X importtime`` (every module it ever imports is in its log), a plain and
    a streamed request through it, then stopped: its log."""
    gateway = _start_with_env(
        config or base_config(upstream, tmp), tmp, name, {**CLEAN_ENV, "PYTHONPROFILEIMPORTTIME": "1", **env}
    )
    try:
        upstream.script(Reply.text("plain"), Reply.text("streamed"))
        with sdk(gateway) as client:
            client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "q"}])
            list(
                client.chat.completions.create(
                    model="chat-model", messages=[{"role": "user", "content": "q"}], stream=True
                )
            )
    finally:
        assert gateway.stop() == 0
    return gateway.log()


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}],
    ids=["not-configured", "sdk-disabled", "exporter-none"],
)
def test_tracing_off_sends_nothing_and_never_imports_opentelemetry(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path, env: dict[str, str]
) -> None:
    receiver.clear()
    if env:  # an endpoint is set too: only the switch keeps tracing off
        env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    log = _importtime_gateway(upstream, tmp_path, "off", {**FAST_EXPORT, **env})
    assert "modelwire.gateway.app" in log and "import time:" in log  # the probe works
    assert "modelwire.gateway.tracing" not in log and "modelwire.gateway.otlp" not in log
    assert "opentelemetry" not in log
    assert upstream.requests and all("traceparent" not in r.headers for r in upstream.requests)
    assert receiver.bodies == []


def test_tracing_from_the_standard_variables_alone(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    receiver.clear()
    env = {
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-from-env",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=tok123",
    }
    log = _importtime_gateway(upstream, tmp_path, "env", env)
    assert "modelwire.gateway.tracing" in log  # the same probe sees the tracer when tracing is on
    assert "opentelemetry" not in log  # and no OpenTelemetry package, even then
    servers = receiver.wait_for(lambda spans: len([s for s in spans if s.kind == "server"]) >= 2)
    assert {s.resource["service.name"] for s in servers} == {"gateway-from-env"}
    assert all(post["x-collector-token"] == "tok123" for post in receiver.posts)
    assert all("traceparent" in r.headers for r in upstream.requests)


def test_a_zero_sample_ratio_exports_nothing_but_still_passes_the_context(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """Left out by the ratio: nothing exported, the upstream told so. A client's sampled context
    is followed either way: unsampled stays unsampled, sampled is traced whatever the ratio."""
    receiver.clear()
    gateway = _start_with_env(
        traced_config(upstream, tmp_path, receiver, sample_ratio=0.0),
        tmp_path,
        "sampled",
        {**CLEAN_ENV, **FAST_EXPORT},
    )
    body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "q"}]}).encode()

    def ask(request_id: str, traceparent: str | None = None) -> dict[str, str]:
        upstream.script(Reply.text("ok"))
        headers = {"Content-Type": "application/json", "x-request-id": request_id}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        assert request(gateway, "POST", "/v1/chat/completions", body, headers)[0] == 200
        return upstream.last.headers

    try:
        trace_id, _, sampled = sent_context(ask("ratio-zero-1"))
        assert not sampled and trace_id != "0" * 32
        unsampled_parent = f"00-{TRACE_ID}-{CLIENT_SPAN}-00"
        assert sent_context(ask("ratio-zero-2", unsampled_parent))[::2] == (TRACE_ID, False)
        sampled_parent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
        ask("ratio-zero-3", sampled_parent)
        spans = receiver.trace_of("ratio-zero-3", 3)
    finally:
        gateway.stop()
    assert one(spans, "server").parent_id == CLIENT_SPAN
    assert {s.attributes.get("modelwire.request_id") for s in receiver.spans} == {"ratio-zero-3", None}


def test_an_unknown_otlp_protocol_fails_at_start_naming_it(
    upstream: FakeUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = traced_config(upstream, tmp_path, receiver)
    config["server"] = {**config["server"], "port": free_port()}
    path = tmp_path / "modelwire.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-c", "from modelwire.cli import main; main()", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**CLEAN_ENV, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    )
    assert done.returncode == 2, done.stderr
    assert "grpc" in done.stderr and "http/protobuf" in done.stderr and "telemetry" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_from_the_section_and_the_variables() -> None:
    config = parse_config({"telemetry": {"endpoint": "http://collector:4318/", "sample_ratio": 0.25}})
    found = settings(config, {})
    assert found is not None and found.endpoint == "http://collector:4318/v1/traces"
    assert found.sample_ratio == 0.25 and found.service_name == "modelwire" and not found.capture_content
    assert settings(parse_config({}), {}) is None
    assert (
        settings(parse_config({}), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1/traces"}) is not None
    )
    assert settings(config, {"OTEL_SDK_DISABLED": "true"}) is None
    named = settings(parse_config({"telemetry": {}}), {"OTEL_SERVICE_NAME": "svc"})
    assert named is not None and named.service_name == "svc" and named.endpoint is None
    assert named.sample_ratio == 1.0 and named.follow_parent
    ratio = settings(
        parse_config({"telemetry": {}}),
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"},
    )
    assert ratio is not None and (ratio.sample_ratio, ratio.follow_parent) == (0.3, False)
    off = settings(parse_config({"telemetry": {}}), {"OTEL_TRACES_SAMPLER": "parentbased_always_off"})
    assert off is not None and (off.sample_ratio, off.follow_parent) == (0.0, True)
    assert found.protocol == "http/protobuf"
    as_json = settings(config, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})
    assert as_json is not None and as_json.protocol == "http/json"
    with pytest.raises(ConfigError, match="http/protobuf"):
        settings(config, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ConfigError, match="sample_ratio"):
        parse_config({"telemetry": {"sample_ratio": 2}})
