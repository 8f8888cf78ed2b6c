"""The per-request log line: its fields, its quoting, what it never writes, and its batching."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import pytest

from modelwire.gateway.auth import ClientKey
from modelwire.gateway.call import Call
from modelwire.gateway.limits import Policy
from modelwire.gateway.requestlog import FLUSH_SECONDS, RequestLog
from modelwire.gateway.surfaces import CHAT
from modelwire.types import Usage


def served(**changes: object) -> Call:
    call = Call("req_0a1b2c", CHAT, time.monotonic() - 0.25, "203.0.113.7")
    call.key = ClientKey(name="alice", patterns=("*",), policy=Policy(name="alice"))
    call.model, call.backend, call.upstream_model = "gpt-5.5", "openai", "gpt-5.5-2026"
    call.usage, call.cost, call.ttft = Usage(input_tokens=25, output_tokens=40), 0.000431, 0.1
    for name, value in changes.items():
        setattr(call, name, value)
    return call


async def lines(log: RequestLog, sink: io.StringIO, *calls: Call) -> list[str]:
    for call in calls:
        log.write(call)
    log.flush()
    return sink.getvalue().splitlines()


@pytest.fixture(autouse=True)
def info_level() -> None:
    logging.getLogger("modelwire.access").setLevel(logging.INFO)


async def test_text_and_json_carry_the_same_fields() -> None:
    text_sink, json_sink = io.StringIO(), io.StringIO()
    [text] = await lines(RequestLog("text", text_sink), text_sink, served())
    [doc] = [json.loads(line) for line in await lines(RequestLog("json", json_sink), json_sink, served())]
    pairs = dict(part.split("=", 1) for part in text.split(" "))
    assert list(pairs) == [k for k, v in doc.items() if v is not None]
    assert pairs["client"] == "203.0.113.7" and pairs["key"] == "alice" and pairs["status"] == "200"
    assert (
        doc["upstream_model"] == "gpt-5.5-2026" and doc["input_tokens"] == 25 and doc["output_tokens"] == 40
    )
    assert 240 <= doc["latency_ms"] < 5000 and doc["ttft_ms"] == 100.0 and doc["cost_usd"] == 0.000431
    assert doc["time"].endswith("Z") and doc["error"] is None


async def test_a_client_cannot_forge_a_line_or_get_a_key_logged() -> None:
    sink = io.StringIO()
    model = 'm" status=200\nfake=1 sk-proj-abcdefghijklmnop'
    [line] = await lines(RequestLog("text", sink), sink, served(model=model, request_id="a b\nc"))
    assert 'request_id="a b\\nc"' in line and "sk-proj" not in line and "[REDACTED]" in line
    assert ' model="m\\" status=200\\nfake=1 [REDACTED]" ' in line, "quoted: one field, not two"


async def test_lines_are_written_in_batches() -> None:
    sink = io.StringIO()
    log = RequestLog("text", sink)
    for _ in range(3):
        log.write(served())
    assert sink.getvalue() == "", "nothing is written per request"
    await asyncio.sleep(FLUSH_SECONDS * 3)
    assert len(sink.getvalue().splitlines()) == 3


async def test_nothing_below_the_access_level() -> None:
    logging.getLogger("modelwire.access").setLevel(logging.WARNING)
    sink = io.StringIO()
    assert await lines(RequestLog("text", sink), sink, served()) == []
