"""The OpenAI Agents SDK (``agents``) against the gateway, the way its docs point it at another
endpoint: an ``AsyncOpenAI`` client with the gateway's ``base_url`` and a client key, given to the
SDK (``set_default_openai_client``) or to a model class (``OpenAIResponsesModel``,
``OpenAIChatCompletionsModel``, ``OpenAIResponsesWSModel``), tracing off (its exporter would post
to api.openai.com).

The client is the real SDK, its upstream the fake, which validates every request against the
vendors' specs: an OpenAI Responses backend (passthrough), an OpenAI-compatible Chat backend and an
Anthropic backend (both translated from the SDK's Responses requests), and the SDK's Chat model on
a Chat backend (passthrough) and on a Responses one (translated).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    OpenAIResponsesWSModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import ReasoningItem, ToolCallItem, ToolCallOutputItem
from agents.models import _openai_shared
from agents.stream_events import RawResponsesStreamEvent
from agents.tool import ToolOutputImage, ToolOutputText
from openai.types.responses import ResponseTextDeltaEvent
from openai.types.shared import Reasoning
from pydantic import BaseModel
from websockets.exceptions import InvalidStatus

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import (
    CLIENT_KEY,
    RunningGateway,
    add_vendor_backends,
    base_config,
    request,
    running_gateway,
)

ANTHROPIC_KEY = "sk-ant-up-agents-0001"
CLAUDE = "claude-agent"  # routed to the Anthropic backend (ahead of the base config's ^claude- rule)
INSTRUCTIONS = "You are a terse assistant."
GENERATIONS = ("/v1/responses", "/v1/chat/completions", "/v1/messages")
WRONG_KEY = "sk-not-a-client-key-0000"
# A 1x1 PNG, as a data URL (what a tool hands back as ``ToolOutputImage``).
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGMAAQAABQABDQottAAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The usual gateway plus an Anthropic backend on the fake, serving ``claude-agent``."""
    tmp = tmp_path_factory.mktemp("openai-agents-gateway")
    config = base_config(upstream_server, tmp)
    add_vendor_backends(config, upstream_server, anthropic=ANTHROPIC_KEY)
    config["models"].insert(0, {"name": CLAUDE, "route": "anthropic/claude-sonnet-4-5"})
    with running_gateway(config, tmp) as running:
        yield running


@pytest.fixture(autouse=True)
def no_tracing() -> Iterator[None]:
    """The SDK's tracing would export to api.openai.com (unreachable here): off for every test."""
    set_tracing_disabled(True)
    yield


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK's client, on the gateway; no retries, so a failure shows at once."""
    sdk = openai.AsyncOpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


@pytest.fixture
def default_client(client: openai.AsyncOpenAI) -> Iterator[openai.AsyncOpenAI]:
    """The client made the SDK's default (``set_default_openai_client``) for this test only."""
    saved = _openai_shared.get_default_openai_client()
    set_default_openai_client(client, use_for_tracing=False)
    try:
        yield client
    finally:
        _openai_shared.set_default_openai_client(saved)  # type: ignore[arg-type]


def generations(upstream: FakeUpstream) -> list[tuple[str, dict[str, Any]]]:
    """The generation requests that reached the upstream: (path, body), in order."""
    return [(r.path, r.body) for r in upstream.requests if r.path in GENERATIONS and r.body is not None]


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    return f"Sunny and 21C in {city}."


class Weather(BaseModel):
    city: str
    temperature_c: int
    sunny: bool


WEATHER_JSON = '{"city": "Paris", "temperature_c": 21, "sunny": true}'


def tool_agent(model: Any) -> Agent[Any]:
    return Agent(name="weather", instructions=INSTRUCTIONS, model=model, tools=[get_weather])


def call_and_output(result: Any) -> tuple[str, str]:
    """The one tool call of a run (its call id) and the output the SDK produced for it."""
    (call,) = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    (output,) = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    call_id: str = getattr(call.raw_item, "call_id")  # noqa: B009 (a union: function calls have it)
    assert dict(output.raw_item)["call_id"] == call_id
    return call_id, str(output.output)


# ---------------------------------------------------------------------------------- Responses API


async def test_runner_run_on_the_default_client_responses_passthrough(
    upstream: FakeUpstream, default_client: openai.AsyncOpenAI
) -> None:
    """An agent naming a model by string runs on the default client, over the Responses API (the
    SDK's default): the gateway forwards it to the Responses backend and the answer is the output."""
    upstream.script(Reply.text("Paris is the capital of France.", usage=(12, 7)))
    agent = Agent(name="geo", instructions=INSTRUCTIONS, model="resp-model")
    result = await Runner.run(agent, "Capital of France?")
    assert result.final_output == "Paris is the capital of France."
    ((path, body),) = generations(upstream)
    assert path == "/v1/responses" and body["model"] == "gpt-4.1"
    assert body["instructions"] == INSTRUCTIONS
    assert [item.get("content") for item in body["input"]] == ["Capital of France?"]
    assert upstream.last.headers["authorization"] in ("Bearer sk-up-oai-1", "Bearer sk-up-oai-2")
    usage = result.context_wrapper.usage
    assert (usage.input_tokens, usage.output_tokens) == (12, 7)


async def test_function_tool_round_trip_responses_passthrough(
    upstream: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """The model calls the tool; the SDK runs it and sends its output back for that call id; the
    second answer is the run's output."""
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city": "Paris"}')]), Reply.text("It is sunny in Paris.")
    )
    agent = tool_agent(OpenAIResponsesModel(model="resp-model", openai_client=client))
    result = await Runner.run(agent, "Weather in Paris?")
    assert result.final_output == "It is sunny in Paris."
    call_id, output = call_and_output(result)
    assert output == "Sunny and 21C in Paris."
    (_, first), (_, second) = generations(upstream)
    (tool,) = first["tools"]
    assert tool["type"] == "function" and tool["name"] == "get_weather"
    outputs = [item for item in second["input"] if item.get("type") == "function_call_output"]
    assert outputs == [{"type": "function_call_output", "call_id": call_id, "output": output}]
    calls = [item for item in second["input"] if item.get("type") == "function_call"]
    assert [(c["call_id"], json.loads(c["arguments"])) for c in calls] == [(call_id, {"city": "Paris"})]


async def test_run_streamed_delivers_the_text_deltas(
    upstream: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """``Runner.run_streamed`` over the Responses API: the raw events carry the text in pieces, and
    they add up to the final output."""
    upstream.script(Reply.text("one two three four", chunks=["one ", "two ", "three ", "four"]))
    agent = Agent(name="counter", instructions=INSTRUCTIONS, model=OpenAIResponsesModel("resp-model", client))
    result = Runner.run_streamed(agent, "Count to four.")
    deltas = [
        event.data.delta
        async for event in result.stream_events()
        if isinstance(event, RawResponsesStreamEvent) and isinstance(event.data, ResponseTextDeltaEvent)
    ]
    assert deltas == ["one ", "two ", "three ", "four"]
    assert result.final_output == "one two three four"
    assert upstream.last.body["stream"] is True


# ------------------------------------------------------------------------------ translated routes


async def test_chat_completions_model_tool_round_trip_chat_passthrough(
    upstream: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """``OpenAIChatCompletionsModel`` on a Chat backend: the tool's result goes back as a ``tool``
    message for the call's id."""
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city": "Oslo"}')]), Reply.text("Oslo is sunny today.")
    )
    agent = tool_agent(OpenAIChatCompletionsModel(model="chat-model", openai_client=client))
    result = await Runner.run(agent, "Weather in Oslo?")
    assert result.final_output == "Oslo is sunny today."
    call_id, output = call_and_output(result)
    (path, _), (_, second) = generations(upstream)
    assert path == "/v1/chat/completions"
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_messages == [{"role": "tool", "tool_call_id": call_id, "content": output}]


async def test_chat_completions_model_on_a_responses_backend(
    upstream: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """``OpenAIChatCompletionsModel`` on a Responses backend (translated): the tool round trip
    arrives as a ``function_call`` and its ``function_call_output``."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Rome"}')]), Reply.text("Rome: sunny."))
    agent = tool_agent(OpenAIChatCompletionsModel(model="resp-model", openai_client=client))
    result = await Runner.run(agent, "Weather in Rome?")
    assert result.final_output == "Rome: sunny."
    call_id, output = call_and_output(result)
    (path, _), (_, second) = generations(upstream)
    assert path == "/v1/responses"
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert [(o["call_id"], o["output"]) for o in outputs] == [(call_id, output)]


@pytest.mark.parametrize(
    ("model", "path"), [("chat-model", "/v1/chat/completions"), (CLAUDE, "/v1/messages")]
)
async def test_responses_model_tool_round_trip_translated(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, model: str, path: str
) -> None:
    """The SDK's Responses model on a route to a Chat or an Anthropic backend: the gateway
    translates the tool definition, the call and the SDK's ``function_call_output`` back."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Lima"}')]), Reply.text("Lima is sunny."))
    agent = tool_agent(OpenAIResponsesModel(model=model, openai_client=client))
    result = await Runner.run(agent, "Weather in Lima?")
    assert result.final_output == "Lima is sunny."
    call_id, output = call_and_output(result)
    assert output == "Sunny and 21C in Lima."
    (first_path, first), (_, second) = generations(upstream)
    assert first_path == path
    if path == "/v1/chat/completions":
        assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
        (assistant,) = [m for m in second["messages"] if m["role"] == "assistant"]
        assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_weather"]
        tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
        assert [(m["tool_call_id"], m["content"]) for m in tool_messages] == [(call_id, output)]
    else:
        assert [t["name"] for t in first["tools"]] == ["get_weather"]
        assert first["system"] in (INSTRUCTIONS, [{"type": "text", "text": INSTRUCTIONS}])
        uses = [b for m in second["messages"] for b in _blocks(m) if b["type"] == "tool_use"]
        results = [b for m in second["messages"] for b in _blocks(m) if b["type"] == "tool_result"]
        assert [(u["id"], u["input"]) for u in uses] == [(call_id, {"city": "Lima"})]
        assert [(r["tool_use_id"], _text(r["content"])) for r in results] == [(call_id, output)]


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


@pytest.mark.parametrize("model", ["chat-model", CLAUDE])
async def test_run_streamed_translated(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, model: str
) -> None:
    """Streaming through the translation: the Chat or Anthropic stream becomes Responses text
    deltas the SDK hands out as they come."""
    upstream.script(Reply.text("alpha beta gamma", chunks=["alpha ", "beta ", "gamma"]))
    agent = Agent(name="s", instructions=INSTRUCTIONS, model=OpenAIResponsesModel(model, client))
    result = Runner.run_streamed(agent, "Three words.")
    deltas = [
        event.data.delta
        async for event in result.stream_events()
        if isinstance(event, RawResponsesStreamEvent) and isinstance(event.data, ResponseTextDeltaEvent)
    ]
    assert deltas == ["alpha ", "beta ", "gamma"]
    assert result.final_output == "alpha beta gamma"


# ------------------------------------------------------------------------------ structured output


@pytest.mark.parametrize(
    ("model", "chat_api"),
    [("resp-model", False), ("chat-model", False), (CLAUDE, False), ("chat-model", True)],
    ids=["responses", "responses-to-chat", "responses-to-anthropic", "chat"],
)
async def test_structured_output(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, model: str, chat_api: bool
) -> None:
    """``output_type`` a pydantic model: the SDK asks for its strict JSON schema, the gateway carries
    the request to the upstream's own form of it, and the answer parses into the model."""
    upstream.script(Reply.text(WEATHER_JSON))
    sdk_model: Any = (
        OpenAIChatCompletionsModel(model, client) if chat_api else OpenAIResponsesModel(model, client)
    )
    agent = Agent(name="typed", instructions=INSTRUCTIONS, model=sdk_model, output_type=Weather)
    result = await Runner.run(agent, "Weather in Paris as JSON.")
    assert result.final_output == Weather(city="Paris", temperature_c=21, sunny=True)
    ((path, body),) = generations(upstream)
    if path == "/v1/responses":
        schema = body["text"]["format"]
        assert schema["type"] == "json_schema" and schema["strict"] is True
    elif path == "/v1/chat/completions":
        schema = body["response_format"]["json_schema"]
        assert body["response_format"]["type"] == "json_schema" and schema["strict"] is True
    else:
        schema = body["output_config"]["format"] if "output_config" in body else body["output_format"]
        assert schema["type"] == "json_schema"
    assert set(schema["schema"]["properties"]) == {"city", "temperature_c", "sunny"}


# ------------------------------------------------------------------------------------- WebSocket

ACCEPTED = 'modelwire_websocket_connections_total{outcome="accepted"}'


def sockets_accepted(gateway: RunningGateway) -> float:
    """How many client WebSockets the gateway has accepted (its /metrics)."""
    status, _, payload = request(gateway, "GET", "/metrics")
    assert status == 200
    lines = [line for line in payload.decode().splitlines() if line.startswith(ACCEPTED)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


@pytest.mark.parametrize(("model", "path"), [("resp-model", "/v1/responses"), (CLAUDE, "/v1/messages")])
async def test_responses_websocket_transport(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, gateway: RunningGateway, model: str, path: str
) -> None:
    """``OpenAIResponsesWSModel`` (the SDK's Responses WebSocket transport): one socket to the
    gateway's ``/v1/responses`` carries a tool round trip, then a second run chained on the first
    by ``previous_response_id`` with only its new input, on a Responses upstream and translated to
    an Anthropic one (where the gateway supplies the earlier turns itself)."""
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city": "Kyiv"}')]),
        Reply.text("Kyiv is sunny."),
        Reply.text("Still sunny.", usage=(21, 3)),
    )
    before = sockets_accepted(gateway)
    sdk_model = OpenAIResponsesWSModel(model=model, openai_client=client)
    try:
        first = await Runner.run(tool_agent(sdk_model), "Weather in Kyiv?")
        second = Runner.run_streamed(
            tool_agent(sdk_model), "And tomorrow?", previous_response_id=first.last_response_id
        )
        deltas = [
            event.data.delta
            async for event in second.stream_events()
            if isinstance(event, RawResponsesStreamEvent) and isinstance(event.data, ResponseTextDeltaEvent)
        ]
    finally:
        await sdk_model.close()
    assert first.final_output == "Kyiv is sunny."
    assert second.final_output == "Still sunny." and "".join(deltas) == "Still sunny."
    assert second.context_wrapper.usage.input_tokens == 21
    assert sockets_accepted(gateway) == before + 1  # all three model calls on one socket
    call_id, output = call_and_output(first)
    sent = generations(upstream)
    assert [p for p, _ in sent] == [path] * 3
    (_, _), (_, answer), (_, chained) = sent
    if path == "/v1/responses":
        outputs = [i for i in answer["input"] if i.get("type") == "function_call_output"]
        assert [(o["call_id"], o["output"]) for o in outputs] == [(call_id, output)]
        assert chained["previous_response_id"] and len(chained["input"]) == 1
    else:
        results = [b for m in answer["messages"] for b in _blocks(m) if b["type"] == "tool_result"]
        assert [(r["tool_use_id"], _text(r["content"])) for r in results] == [(call_id, output)]
        texts = [_text([b for b in _blocks(m) if b["type"] == "text"]) for m in chained["messages"]]
        assert texts == ["Weather in Kyiv?", "", "", "Kyiv is sunny.", "And tomorrow?"]


# ------------------------------------------------------------------------------ chains and content


@pytest.mark.parametrize("model", ["resp-model", "chat-model", CLAUDE])
async def test_auto_previous_response_id_chains_through_the_gateway(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, model: str
) -> None:
    """``auto_previous_response_id``: after the first call the SDK sends only new items and the
    previous response's id. On a Responses upstream the id is the upstream's; on translated routes
    the gateway keeps the chain and sends the upstream the whole conversation."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Bern"}')]), Reply.text("Bern is sunny."))
    agent = tool_agent(OpenAIResponsesModel(model, client))
    result = await Runner.run(agent, "Weather in Bern?", auto_previous_response_id=True)
    assert result.final_output == "Bern is sunny."
    call_id, output = call_and_output(result)
    (path, _), (_, second) = generations(upstream)
    if path == "/v1/responses":
        assert second["previous_response_id"]
        assert second["input"] == [{"type": "function_call_output", "call_id": call_id, "output": output}]
    elif path == "/v1/chat/completions":
        assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
        assert second["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": output}
    else:
        assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
        (result_block,) = second["messages"][-1]["content"]
        assert (result_block["tool_use_id"], _text(result_block["content"])) == (call_id, output)


@function_tool
def snapshot(city: str) -> list[ToolOutputText | ToolOutputImage]:
    """A photo of a city.

    Args:
        city: The city's name.
    """
    return [
        ToolOutputText(text=f"Photo of {city}:"),
        ToolOutputImage(image_url=f"data:image/png;base64,{PNG_BASE64}"),
    ]


async def test_tool_output_with_an_image_to_anthropic(
    upstream: FakeUpstream, client: openai.AsyncOpenAI
) -> None:
    """A tool that returns text and an image: the SDK sends a ``function_call_output`` whose output is
    a list of content items; translated to Anthropic, both land in the ``tool_result``."""
    upstream.script(Reply.tool_calls([("snapshot", '{"city": "Rome"}')]), Reply.text("A fine photo."))
    agent = Agent(
        name="photos", instructions=INSTRUCTIONS, model=OpenAIResponsesModel(CLAUDE, client), tools=[snapshot]
    )
    result = await Runner.run(agent, "Show me Rome.")
    assert result.final_output == "A fine photo."
    (_, _), (_, second) = generations(upstream)
    (tool_result,) = [b for m in second["messages"] for b in _blocks(m) if b["type"] == "tool_result"]
    assert tool_result["content"] == [
        {"type": "text", "text": "Photo of Rome:"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_BASE64}},
    ]


async def test_reasoning_round_trip_to_anthropic(upstream: FakeUpstream, client: openai.AsyncOpenAI) -> None:
    """``ModelSettings(reasoning=...)`` on an Anthropic route: thinking is enabled, the thinking comes
    back as a reasoning item the SDK replays with the tool's output, and the gateway restores the
    signed ``thinking`` block ahead of the ``tool_use`` (the fake checks the signature)."""
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city": "Oslo"}')], summary=["Look the weather up."]),
        Reply.text("Oslo is sunny."),
    )
    agent = tool_agent(OpenAIResponsesModel(CLAUDE, client))
    agent.model_settings = ModelSettings(
        reasoning=Reasoning(effort="low", summary="auto"), response_include=["reasoning.encrypted_content"]
    )
    result = await Runner.run(agent, "Weather in Oslo?")
    assert result.final_output == "Oslo is sunny."
    (reasoning,) = [item for item in result.new_items if isinstance(item, ReasoningItem)]
    assert [s.text for s in reasoning.raw_item.summary] == ["Look the weather up."]
    (_, first), (_, second) = generations(upstream)
    assert first["thinking"]["type"] == "enabled"
    (assistant,) = [m for m in second["messages"] if m["role"] == "assistant"]
    thinking, tool_use = assistant["content"]
    assert thinking == {
        "type": "thinking",
        "thinking": "Look the weather up.",
        "signature": FakeUpstream.anthropic_signature("Look the weather up."),
    }
    assert tool_use["type"] == "tool_use"


# ----------------------------------------------------------------------------------------- errors


async def test_wrong_key_is_an_authentication_error(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """A key the gateway does not know: the SDK raises ``AuthenticationError`` (OpenAI's error shape)
    at once, and nothing reaches the upstream."""
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=WRONG_KEY, max_retries=0) as bad:
        agent = Agent(
            name="locked-out", instructions=INSTRUCTIONS, model=OpenAIResponsesModel("resp-model", bad)
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            await Runner.run(agent, "hi")
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key" and caught.value.type == "invalid_request_error"
    assert upstream.requests == []


async def test_wrong_key_over_the_websocket_is_refused(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """The same over the WebSocket transport: the upgrade is answered 401 with OpenAI's error body
    (the SDK surfaces the handshake failure), and nothing reaches the upstream."""
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=WRONG_KEY, max_retries=0) as bad:
        sdk_model = OpenAIResponsesWSModel("resp-model", bad)
        try:
            with pytest.raises(InvalidStatus) as caught:
                await Runner.run(Agent(name="locked-out", model=sdk_model), "hi")
        finally:
            await sdk_model.close()
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body or b"")["error"]["code"] == "invalid_api_key"
    assert upstream.requests == []


@pytest.mark.parametrize("model", ["chat-model", CLAUDE])
async def test_upstream_refusal_reaches_the_sdk_in_openai_shape(
    upstream: FakeUpstream, client: openai.AsyncOpenAI, model: str
) -> None:
    """A 400 from a Chat or Anthropic upstream: the SDK raises ``BadRequestError`` with the
    upstream's message (the gateway renders it as an OpenAI error)."""
    upstream.script(Reply.error(400, "The prompt is too long for this model."))
    agent = Agent(name="refused", instructions=INSTRUCTIONS, model=OpenAIResponsesModel(model, client))
    with pytest.raises(openai.BadRequestError) as caught:
        await Runner.run(agent, "hi")
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    assert "The prompt is too long for this model." in caught.value.message
    assert len(generations(upstream)) == 1  # a 400 is not retried
