"""``POST /v1/responses/compact`` end to end: the official ``openai`` SDK against a real gateway
process, passing through to a native upstream, refused with a 400 wherever no upstream compacts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, usage_rows
from .spec import assert_openai

CONVERSATION: list[Any] = [
    {"role": "user", "content": "Plan a landing page for a dog cafe."},
    {
        "id": "msg_001",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": "A hero image, a menu, a map.", "annotations": [], "logprobs": []}
        ],
    },
]


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def test_compact_passes_through_to_a_native_upstream(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.script(Reply.text("unused", usage=(139, 438)))
    raw = client.responses.with_raw_response.compact(model="resp-model", input=CONVERSATION)
    doc = json.loads(raw.content)
    assert_openai("CompactResource", doc)
    compacted = raw.parse()
    assert compacted.object == "response.compaction"
    assert [item.type for item in compacted.output] == ["compaction"]
    assert compacted.usage.input_tokens == 139 and compacted.usage.output_tokens == 438
    sent = upstream.last
    assert (sent.method, sent.path) == ("POST", "/v1/responses/compact")
    assert sent.body == {"model": "gpt-4.1", "input": CONVERSATION}  # only the model changed
    assert raw.headers["x-modelwire-backend"] == "oai"
    [row] = usage_rows(gateway, raw.headers["x-request-id"])
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (139, 438, 200)
    assert row["public_model"] == "resp-model" and row["backend"] == "oai"


def test_compact_expands_a_chain_the_gateway_stored(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    first = client.responses.create(model="stateless-resp", input="Remember the word otter.")
    client.responses.compact(model="resp-model", input="and compact", previous_response_id=first.id)
    sent = upstream.last.body
    assert "previous_response_id" not in sent  # the native upstream never stored that response
    assert sent["input"][0] == {"type": "message", "role": "user", "content": "Remember the word otter."}
    assert sent["input"][1]["id"] == first.output[0].id
    assert sent["input"][-1] == {"type": "message", "role": "user", "content": "and compact"}


def test_a_native_upstreams_own_chain_goes_up_as_it_came(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    first = client.responses.create(model="resp-model", input="kept upstream")
    client.responses.compact(model="resp-model", previous_response_id=first.id)
    assert upstream.last.body == {"model": "gpt-4.1", "previous_response_id": first.id}


@pytest.mark.parametrize("model", ["chat-model", "stateless-resp"])
def test_compact_without_a_compacting_upstream_is_a_400(
    upstream: FakeUpstream, client: openai.OpenAI, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.compact(model=model, input=CONVERSATION)
    assert info.value.status_code == 400
    body: Any = info.value.body
    assert body["type"] == "invalid_request_error" and body["code"] == "compaction_not_supported"
    assert body["param"] == "model" and model in body["message"]
    assert upstream.requests == []  # nothing was sent anywhere


def test_an_upstream_refusal_reaches_the_client(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.error(400, "input is too short to compact", code="invalid_value"))
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.compact(model="resp-model", input="hi")
    assert "too short to compact" in info.value.message
    assert info.value.body["code"] == "invalid_value"  # type: ignore[index]


def test_compact_needs_a_key_and_a_model(gateway: RunningGateway) -> None:
    stranger = openai.OpenAI(base_url=gateway.v1, api_key="sk-wrong-key-000000000", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError):
        stranger.responses.compact(model="resp-model", input="hi")
    sdk = openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    with sdk, pytest.raises(openai.BadRequestError) as info:
        sdk.post("/responses/compact", body={"input": "hi"}, cast_to=object)
    assert info.value.body["param"] == "model"  # type: ignore[index]
