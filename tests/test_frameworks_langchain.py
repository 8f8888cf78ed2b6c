"""LangChain's own chat model classes against a real ``modelwire serve`` process, pointed at it
the way users do: ``ChatOpenAI(base_url=gateway.v1, ...)`` (Chat Completions, or Responses with
``use_responses_api=True``), ``ChatAnthropic(base_url=gateway.url, ...)`` and ``OpenAIEmbeddings``.

The model name picks the upstream's wire, so each client class crosses both a passthrough and a
translated route: ``chat-model`` is a Chat upstream, ``resp-model`` and ``reasoner`` a Responses
one, ``claude-direct`` an Anthropic one, and other ``claude-`` names go to the Chat upstream. The
fake upstream validates every request the gateway sends against the vendor's spec.

Nothing may reach the internet: LangSmith tracing is off (its variables are unset), and
``OpenAIEmbeddings`` runs with ``check_embedding_ctx_length=False`` (else it fetches tiktoken's
encodings).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

import modelwire

from .fake_upstream import FakeUpstream, Reply, anthropic_signature, embedding_for, gemini_embedding
from .gateway_fixtures import CLIENT_KEY, RunningGateway, add_vendor_backends, base_config, running_gateway

ANTHROPIC_KEY = "sk-ant-up-langchain-0001"
CLAUDE = "claude-direct"  # the Anthropic backend (ahead of the base config's ^claude- rule)
GEMINI_EMBED = "gemini-embed"  # a Gemini backend's embedding model
GEMINI_KEY = "AIza-up-langchain-000000001"
CLAUDE_VIA_CHAT = "claude-house-blend"  # the base config's ^claude- rule: the Chat upstream
GENERATIONS = ("/v1/responses", "/v1/chat/completions", "/v1/messages")
WRONG_KEY = "sk-not-a-client-key-000000"
PNG = base64.b64encode(b"\x89PNG fake").decode()

# What LangChain sends to the Responses API that the official OpenAPI spec does not allow but the
# real API takes; on a passthrough route the gateway forwards the client's body as it is, so the
# fake reports these (the echoed tool in its own Response too). Tests that provoke them forgive
# exactly these, nothing else.
NO_STRICT = "$.tools[0]: 'strict' is a required property"  # bind_tools leaves `strict` out
BARE_ASSISTANT = "{'type': 'output_text', 'text': 'Paris.', 'annotations': []} is not valid"  # no id/status


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The usual gateway plus an Anthropic backend on the fake, serving ``claude-direct``, and a
    Gemini embedding model."""
    tmp = tmp_path_factory.mktemp("langchain-gateway")
    config = base_config(upstream_server, tmp)
    add_vendor_backends(config, upstream_server, anthropic=ANTHROPIC_KEY, gemini=GEMINI_KEY)
    config["models"][:0] = [
        {"name": GEMINI_EMBED, "route": "gem/gemini-embedding-001"},
        {"name": CLAUDE, "route": "anthropic/claude-sonnet-4-5"},
    ]
    config["lockout"] = {"failures": 100}  # the wrong-key tests must not lock the others out
    with running_gateway(config, tmp) as running:
        yield running


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LangSmith tracing, and no vendor settings from the environment but what a test passes."""
    for name in list(os.environ):
        if name.startswith(("LANGCHAIN_", "LANGSMITH_", "OPENAI_", "ANTHROPIC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LANGSMITH_TRACING", "false")


def chat_openai(gateway: RunningGateway, model: str, key: str = CLIENT_KEY, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=gateway.v1, api_key=key, model=model, max_retries=0, **kw)


def chat_anthropic(gateway: RunningGateway, model: str, key: str = CLIENT_KEY, **kw: Any) -> ChatAnthropic:
    kw.setdefault("max_tokens", 256)
    return ChatAnthropic(base_url=gateway.url, api_key=key, model=model, max_retries=0, **kw)


def embeddings(gateway: RunningGateway, key: str = CLIENT_KEY) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(  # type: ignore[call-arg]
        base_url=gateway.v1,
        api_key=key,
        model="chat-model",
        check_embedding_ctx_length=False,  # else tiktoken downloads its encodings
        max_retries=0,
    )


def translated(gateway: RunningGateway, client: str) -> Any:
    """ChatOpenAI on the Anthropic upstream, or ChatAnthropic on the Chat upstream."""
    return chat_openai(gateway, CLAUDE) if client == "openai" else chat_anthropic(gateway, CLAUDE_VIA_CHAT)


def generations(upstream: FakeUpstream) -> list[tuple[str, Any]]:
    """The generation requests that reached the upstream: (path, body), in order."""
    return [(r.path, r.body) for r in upstream.requests if r.path in GENERATIONS]


def forgive(upstream: FakeUpstream, *known: str) -> None:
    """Drop the fake's reports of these known client deviations (see ``NO_STRICT``); any other
    violation still fails the test."""
    upstream.violations[:] = [v for v in upstream.violations if not any(k in v for k in known)]


def joined(chunks: list[Any]) -> Any:
    """The chunks of a stream added up, as LangChain aggregates them."""
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool_result`` blocks of an Anthropic request."""
    return [
        block
        for message in body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_result"
    ]


def usage(message: Any) -> tuple[int, int]:
    assert message.usage_metadata is not None, "no usage_metadata"
    return message.usage_metadata["input_tokens"], message.usage_metadata["output_tokens"]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    temperature_c: int


# ----------------------------------------------------------------------------- invoke and stream


@pytest.mark.parametrize("model", ["chat-model", CLAUDE])
def test_chat_openai_invoke(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    upstream.script(Reply.text("The capital is Paris.", usage=(14, 6)))
    answer = chat_openai(gateway, model).invoke([("system", "Be brief."), ("human", "Capital of France?")])
    assert isinstance(answer, AIMessage) and answer.content == "The capital is Paris."
    assert usage(answer) == (14, 6) and answer.response_metadata["finish_reason"] == "stop"
    # A translated answer carries the client's model name; a forwarded one, the upstream's.
    assert answer.response_metadata["model_name"] == ("gpt-4.1" if model == "chat-model" else CLAUDE)
    [(path, body)] = generations(upstream)
    if model == CLAUDE:
        assert path == "/v1/messages" and body["model"] == "claude-sonnet-4-5"
        assert json.dumps(body["system"]).count("Be brief.") == 1
        [message] = body["messages"]
        assert message["role"] == "user" and "Capital of France?" in json.dumps(message["content"])
    else:
        assert path == "/v1/chat/completions" and body["model"] == "gpt-4.1"
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("model", ["chat-model", CLAUDE])
def test_chat_openai_stream_reports_usage(
    upstream: FakeUpstream, gateway: RunningGateway, model: str
) -> None:
    upstream.script(Reply.text("one two three four", usage=(9, 4)))
    chunks = list(chat_openai(gateway, model, stream_usage=True).stream("Count to four."))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 4 and "".join(map(str, texts)) == "one two three four"  # token by token
    total = joined(chunks)
    assert isinstance(total, AIMessageChunk) and usage(total) == (9, 4)
    assert total.response_metadata["finish_reason"] == "stop"
    [(_, body)] = generations(upstream)
    assert body["stream"] is True


async def test_chat_openai_async(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.text("alpha beta", usage=(3, 2)), Reply.text("gamma"))
    llm = chat_openai(gateway, CLAUDE, stream_usage=True)
    chunks = [c async for c in llm.astream("go")]
    assert "".join(str(c.content) for c in chunks) == "alpha beta"
    assert [c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata] == [2]
    assert (await llm.ainvoke("again")).content == "gamma"


@pytest.mark.parametrize("model", [CLAUDE, CLAUDE_VIA_CHAT])
def test_chat_anthropic_invoke_and_stream(
    upstream: FakeUpstream, gateway: RunningGateway, model: str
) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(20, 4)), Reply.text("un deux trois", usage=(8, 3)))
    llm = chat_anthropic(gateway, model)
    answer = llm.invoke([("system", "Be brief."), ("human", "Say hello in French.")])
    assert answer.content == "Bonjour." and answer.response_metadata["stop_reason"] == "end_turn"
    assert usage(answer) == (20, 4)
    chunks = list(llm.stream("Count to three."))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3 and "".join(texts) == "un deux trois"
    assert usage(joined(chunks)) == (8, 3)
    expected = "/v1/messages" if model == CLAUDE else "/v1/chat/completions"
    assert [p for p, _ in generations(upstream)] == [expected, expected]


def test_parameters_and_images_cross_the_translation(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    image = HumanMessage(
        content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]
    )
    chat_openai(gateway, CLAUDE, max_tokens=77, stop=["END"], temperature=0.3).invoke([image])
    [(_, to_anthropic)] = generations(upstream)
    assert (to_anthropic["max_tokens"], to_anthropic["stop_sequences"], to_anthropic["temperature"]) == (
        77,
        ["END"],
        0.3,
    )
    source = {"type": "base64", "media_type": "image/png", "data": PNG}
    assert {"type": "image", "source": source} in to_anthropic["messages"][0]["content"]

    upstream.reset()
    image = HumanMessage(
        content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image", "base64": PNG, "mime_type": "image/png"},
        ]
    )
    chat_anthropic(gateway, CLAUDE_VIA_CHAT, max_tokens=99, temperature=0.2).invoke([image], stop=["END"])
    [(_, to_chat)] = generations(upstream)
    assert (to_chat["max_tokens"], to_chat["stop"], to_chat["temperature"]) == (99, ["END"], 0.2)
    url = {"url": f"data:image/png;base64,{PNG}"}
    assert {"type": "image_url", "image_url": url} in to_chat["messages"][0]["content"]


@pytest.mark.parametrize(("limit", "budget", "max_tokens"), [(None, 24576, 24576 + 4096), (5000, 4999, 5000)])
def test_reasoning_effort_to_claude_leaves_room_for_the_answer(
    upstream: FakeUpstream, gateway: RunningGateway, limit: int | None, budget: int, max_tokens: int
) -> None:
    """``reasoning_effort="high"`` becomes a thinking budget. With no limit asked (OpenAI then caps
    nothing) the answer's default room comes on top of it; it used to be carved out of the default
    4096 (budget 4095: one token left for the answer). A limit the client set is kept."""
    upstream.script(Reply.reasoning(["Deep thought."], text="42", usage=(10, 40)))
    llm = chat_openai(gateway, CLAUDE, reasoning_effort="high", max_tokens=limit)
    assert llm.invoke("The answer?").text == "42"
    [(_, body)] = generations(upstream)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == max_tokens


# ----------------------------------------------------------------------------------- tool calls


def round_trip(llm: Any, upstream: FakeUpstream) -> tuple[AIMessage, str]:
    """Ask, get the scripted tool call, answer it with a ToolMessage, get the final text; returns
    the first answer and the call's id."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Paris"}')]), Reply.text("Sunny in Paris."))
    bound = llm.bind_tools([get_weather])
    history: list[BaseMessage] = [HumanMessage("Weather in Paris?")]
    first = bound.invoke(history)
    assert isinstance(first, AIMessage)
    [call] = first.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"} and call["id"]
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    second = bound.invoke(history)
    assert isinstance(second, AIMessage) and second.text == "Sunny in Paris." and not second.tool_calls
    return first, call["id"]


def chat_tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("model", ["chat-model", CLAUDE])
def test_chat_openai_tools(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    first, call_id = round_trip(chat_openai(gateway, model), upstream)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    (_, asked), (_, answered) = generations(upstream)
    if model == CLAUDE:
        assert [t["name"] for t in asked["tools"]] == ["get_weather"]
        assert "city" in asked["tools"][0]["input_schema"]["properties"]
        [result] = tool_results(answered)
        assert result["tool_use_id"] == call_id and "Sunny in Paris." in json.dumps(result["content"])
    else:
        assert [t["function"]["name"] for t in asked["tools"]] == ["get_weather"]
        assert chat_tool_messages(answered) == [
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny in Paris."}
        ]


@pytest.mark.parametrize("model", ["resp-model", "chat-model"])
def test_chat_openai_responses_tools(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    round_trip(chat_openai(gateway, model, use_responses_api=True), upstream)
    (_, asked), (path, answered) = generations(upstream)
    if model == "resp-model":
        forgive(upstream, NO_STRICT)
        assert path == "/v1/responses" and [t["name"] for t in asked["tools"]] == ["get_weather"]
        [output] = [i for i in answered["input"] if i.get("type") == "function_call_output"]
        [sent_call] = [i for i in answered["input"] if i.get("type") == "function_call"]
        assert output == {
            "type": "function_call_output",
            "call_id": sent_call["call_id"],
            "output": "Sunny in Paris.",
        }
    else:
        assert path == "/v1/chat/completions"
        [tool_message] = chat_tool_messages(answered)
        [assistant] = [m for m in answered["messages"] if m["role"] == "assistant"]
        assert tool_message["tool_call_id"] == assistant["tool_calls"][0]["id"]
        assert tool_message["content"] == "Sunny in Paris."


@pytest.mark.parametrize("model", [CLAUDE, CLAUDE_VIA_CHAT])
def test_chat_anthropic_tools(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    first, call_id = round_trip(chat_anthropic(gateway, model), upstream)
    assert first.response_metadata["stop_reason"] == "tool_use"
    (_, asked), (path, answered) = generations(upstream)
    if model == CLAUDE:
        assert path == "/v1/messages" and [t["name"] for t in asked["tools"]] == ["get_weather"]
        assert [r["tool_use_id"] for r in tool_results(answered)] == [call_id]
    else:
        assert path == "/v1/chat/completions"
        assert [t["function"]["name"] for t in asked["tools"]] == ["get_weather"]
        assert chat_tool_messages(answered) == [
            {"role": "tool", "tool_call_id": call_id, "content": "Sunny in Paris."}
        ]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_streamed_parallel_tool_calls(upstream: FakeUpstream, gateway: RunningGateway, client: str) -> None:
    """Translated both ways: ChatOpenAI to the Anthropic upstream, ChatAnthropic to the Chat one."""
    calls = [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Oslo"}')]
    upstream.script(Reply.tool_calls(calls, text="Checking."))
    llm = translated(gateway, client)
    chunks = list(llm.bind_tools([get_weather]).stream("Weather in Paris and Oslo?"))
    assert sum(1 for c in chunks if c.tool_call_chunks) > 2  # arguments arrive in pieces
    total = joined(chunks)
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    assert len({c["id"] for c in total.tool_calls}) == 2 and "Checking." in total.text


# ---------------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("model", ["chat-model", "resp-model", CLAUDE])
def test_structured_output(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    """The default method (a json_schema response_format) in each upstream's own form."""
    upstream.script(Reply.text('{"city": "Paris", "temperature_c": 21}'))
    result = chat_openai(gateway, model).with_structured_output(Weather).invoke("Weather in Paris?")
    assert result == Weather(city="Paris", temperature_c=21)
    [(path, body)] = generations(upstream)
    if model == "chat-model":
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Weather"
        schema = fmt["json_schema"]["schema"]
    elif model == "resp-model":
        fmt = body["text"]["format"]
        assert path == "/v1/responses" and fmt["type"] == "json_schema" and fmt["name"] == "Weather"
        schema = fmt["schema"]
    else:
        fmt = body["output_config"]["format"]
        assert path == "/v1/messages" and fmt["type"] == "json_schema"
        schema = fmt["schema"]
    assert schema["required"] == ["city", "temperature_c"] and schema["additionalProperties"] is False


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_structured_output_by_function_calling(
    upstream: FakeUpstream, gateway: RunningGateway, client: str
) -> None:
    """A forced tool call: ChatOpenAI to the Anthropic upstream, ChatAnthropic to the Chat one."""
    upstream.script(Reply.tool_calls([("Weather", '{"city": "Oslo", "temperature_c": -3}')]))
    llm = translated(gateway, client)
    result = llm.with_structured_output(Weather, method="function_calling").invoke("Weather in Oslo?")
    assert result == Weather(city="Oslo", temperature_c=-3)
    [(_, body)] = generations(upstream)
    if client == "openai":
        assert body["tool_choice"]["type"] == "tool" and body["tool_choice"]["name"] == "Weather"
    else:
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}


# -------------------------------------------------------------------------------------- responses


@pytest.mark.parametrize("model", ["resp-model", CLAUDE])
def test_responses_invoke_and_stream(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    upstream.script(Reply.text("Hello there.", usage=(7, 3)), Reply.text("one two three", usage=(5, 3)))
    llm = chat_openai(gateway, model, use_responses_api=True)
    answer = llm.invoke("hi")
    assert answer.text == "Hello there." and usage(answer) == (7, 3)
    assert answer.response_metadata["id"].startswith("resp_")
    chunks = list(llm.stream("count"))
    assert sum(1 for c in chunks if c.text) >= 3 and "".join(c.text for c in chunks) == "one two three"
    assert [usage(c) for c in chunks if c.usage_metadata] == [(5, 3)]
    expected = "/v1/responses" if model == "resp-model" else "/v1/messages"
    assert [p for p, _ in generations(upstream)] == [expected, expected]


@pytest.mark.parametrize("model", ["reasoner", CLAUDE])
def test_responses_reasoning_round_trip(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    """Stateless (``store=False``) reasoning: its summary shows, and the encrypted reasoning goes
    back with the next turn; to Claude, as the thinking block with its signature intact."""
    upstream.script(
        Reply.reasoning(["Thinking about the capital."], text="Paris.", usage=(12, 30), reasoning_tokens=20),
        Reply.text("Lyon is second."),
    )
    llm = chat_openai(
        gateway,
        model,
        use_responses_api=True,
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        store=False,
        output_version="responses/v1",
    )
    first = llm.invoke("Capital of France?")
    assert first.text == "Paris."
    [reasoning] = [b for b in first.content if isinstance(b, dict) and b.get("type") == "reasoning"]
    assert [s["text"] for s in reasoning["summary"]] == ["Thinking about the capital."]
    assert reasoning["encrypted_content"]
    second = llm.invoke([HumanMessage("Capital of France?"), first, HumanMessage("And the second city?")])
    assert second.text == "Lyon is second."
    (_, asked), (_, again) = generations(upstream)
    if model == "reasoner":
        forgive(upstream, BARE_ASSISTANT)
        assert first.usage_metadata["output_token_details"]["reasoning"] == 20  # type: ignore[index]
        assert asked["reasoning"] == {"effort": "low", "summary": "auto"} and asked["store"] is False
        [sent_back] = [i for i in again["input"] if i.get("type") == "reasoning"]
        assert sent_back["encrypted_content"] == "enc-fake-reasoning"
    else:
        assert asked["thinking"]["type"] == "enabled"
        thinking = [b for m in again["messages"] if isinstance(m["content"], list) for b in m["content"]]
        [block] = [b for b in thinking if b["type"] == "thinking"]
        assert block["thinking"] == "Thinking about the capital."
        assert block["signature"] == anthropic_signature("Thinking about the capital.")


@pytest.mark.parametrize("model", ["resp-model", "chat-model"])
def test_responses_previous_response_id(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    """``use_previous_response_id``: LangChain sends only the new turn; the history is the
    upstream's (resp-model) or the gateway's own to replay (chat-model). The history LangChain is
    handed says another first question, which must not be what the upstream sees."""
    upstream.script(Reply.text("Paris."), Reply.text("Lyon."))
    llm = chat_openai(gateway, model, use_responses_api=True, use_previous_response_id=True)
    first = llm.invoke("Capital?")
    assert first.response_metadata["id"].startswith("resp_")  # what LangChain chains on
    second = llm.invoke([HumanMessage("Not sent."), first, HumanMessage("And the second city?")])
    assert second.text == "Lyon."
    _, (_, again) = generations(upstream)
    if model == "resp-model":
        assert again["previous_response_id"] == first.response_metadata["id"]
        assert [i["content"] for i in again["input"]] == ["And the second city?"]
    else:
        assert [(m["role"], m["content"]) for m in again["messages"]] == [
            ("user", "Capital?"),
            ("assistant", "Paris."),
            ("user", "And the second city?"),
        ]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_anthropic_thinking_through_responses(
    upstream: FakeUpstream, gateway: RunningGateway, stream: bool
) -> None:
    """ChatAnthropic with extended thinking on an OpenAI reasoning model: the reasoning comes back
    as a signed thinking block, and that block, returned with the tool result, becomes the
    reasoning item (its encrypted content too) the stateless upstream needs."""
    calls = [("get_weather", '{"city": "Paris"}')]
    upstream.script(
        Reply.tool_calls(calls, summary=["Need the weather."], encrypted="enc-weather", usage=(30, 20)),
        Reply.text("Sunny in Paris."),
    )
    llm = chat_anthropic(
        gateway, "reasoner", thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4000
    ).bind_tools([get_weather])
    first = joined(list(llm.stream("Weather?"))) if stream else llm.invoke("Weather?")
    [thinking] = [b for b in first.content if isinstance(b, dict) and b["type"] == "thinking"]
    assert thinking["thinking"] == "Need the weather." and thinking["signature"]
    assert usage(first) == (30, 20)
    [call] = first.tool_calls
    final = llm.invoke([HumanMessage("Weather?"), first, ToolMessage("sunny", tool_call_id=call["id"])])
    assert final.text == "Sunny in Paris."
    (_, asked), (_, again) = generations(upstream)
    assert asked["reasoning"]["summary"] == "auto" and "reasoning.encrypted_content" in asked["include"]
    [reasoning] = [i for i in again["input"] if i["type"] == "reasoning"]
    assert reasoning["encrypted_content"] == "enc-weather"
    assert [i["type"] for i in again["input"]][-3:] == ["reasoning", "function_call", "function_call_output"]


@pytest.mark.parametrize("model", [CLAUDE, CLAUDE_VIA_CHAT])
def test_chat_anthropic_counts_tokens(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    count = chat_anthropic(gateway, model).get_num_tokens_from_messages(
        [HumanMessage("hello there, world")], tools=[get_weather]
    )
    assert isinstance(count, int) and count > 0
    if model == CLAUDE:  # the upstream's count, asked as LangChain asked it
        [counted] = upstream.requests
        assert (
            counted.path == "/v1/messages/count_tokens" and counted.body["tools"][0]["name"] == "get_weather"
        )
    else:  # the gateway's own estimate: nothing to ask a Chat upstream
        assert generations(upstream) == []


# -------------------------------------------------------------------------------------- embeddings


def test_embeddings(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    embedder = embeddings(gateway)
    vectors = embedder.embed_documents(["hello", "world"])
    assert vectors[0] == pytest.approx(embedding_for("hello"), rel=1e-6)
    assert vectors[1] == pytest.approx(embedding_for("world"), rel=1e-6)
    assert embedder.embed_query("plain") == pytest.approx(embedding_for("plain"), rel=1e-6)
    assert [r.path for r in upstream.requests] == ["/v1/embeddings"] * 2
    assert upstream.requests[0].body["input"] == ["hello", "world"]


@pytest.fixture
def tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LangChain tokenizes with tiktoken, which downloads its encodings once into a cache: the
    cache is filled from the file modelwire ships (byte-identical to OpenAI's; tiktoken checks it)."""
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shipped = Path(modelwire.__file__).parent / "data" / "cl100k_base.tiktoken"
    shutil.copy(shipped, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


@pytest.mark.usefixtures("tiktoken_cache")
@pytest.mark.parametrize("model", ["chat-model", GEMINI_EMBED])
def test_embeddings_as_token_arrays(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    """LangChain's default (``check_embedding_ctx_length``) sends each text as cl100k token ids: an
    OpenAI upstream gets them as sent; for a Gemini one the gateway reads them back as text."""
    embedder = OpenAIEmbeddings(base_url=gateway.v1, api_key=CLIENT_KEY, model=model, max_retries=0)  # type: ignore[call-arg]
    vectors = embedder.embed_documents(["red fox", "naïve café"])
    sent = upstream.last.body
    if model == "chat-model":
        assert all(isinstance(ids, list) for ids in sent["input"])
        assert vectors[0] == pytest.approx(embedding_for(json.dumps(sent["input"][0])), rel=1e-6)
    else:
        assert [r["content"]["parts"][0]["text"] for r in sent["requests"]] == ["red fox", "naïve café"]
        for vector, request in zip(vectors, sent["requests"], strict=True):
            assert vector == pytest.approx(gemini_embedding(request), rel=1e-6)


# ---------------------------------------------------------------------------------------- errors


def test_wrong_key_is_refused_before_the_upstream(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError) as chat:
        chat_openai(gateway, "chat-model", key=WRONG_KEY).invoke("hi")
    assert chat.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        chat_openai(gateway, "resp-model", key=WRONG_KEY, use_responses_api=True).invoke("hi")
    with pytest.raises(openai.AuthenticationError):
        list(chat_openai(gateway, CLAUDE, key=WRONG_KEY).stream("hi"))
    with pytest.raises(anthropic.AuthenticationError) as messages:
        chat_anthropic(gateway, CLAUDE, key=WRONG_KEY).invoke("hi")
    assert messages.value.status_code == 401
    assert messages.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        embeddings(gateway, key=WRONG_KEY).embed_query("hi")
    assert upstream.requests == []


def test_upstream_errors_keep_their_class(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """A 400 from the upstream is the client SDK's BadRequestError, whatever the translation."""
    upstream.script(Reply.error(400, "Bad tool schema."), Reply.error(400, "Bad tool schema."))
    with pytest.raises(openai.BadRequestError, match=r"Bad tool schema\."):
        chat_openai(gateway, CLAUDE).invoke("hi")
    with pytest.raises(anthropic.BadRequestError) as caught:
        chat_anthropic(gateway, CLAUDE_VIA_CHAT).invoke("hi")
    assert caught.value.body["error"] == {"type": "invalid_request_error", "message": "Bad tool schema."}  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        chat_openai(gateway, "no-such-model").invoke("hi")
    with pytest.raises(anthropic.NotFoundError):
        chat_anthropic(gateway, "no-such-model").invoke("hi")
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_error_mid_stream_raises(upstream: FakeUpstream, gateway: RunningGateway, client: str) -> None:
    upstream.script(Reply.stream_error("one two three four five", after=3, message="server exploded"))
    llm: Any = chat_openai(gateway, "chat-model") if client == "openai" else translated(gateway, client)
    seen: list[str] = []
    error = openai.APIError if client == "openai" else anthropic.APIError
    with pytest.raises(error, match="server exploded"):
        for chunk in llm.stream("count"):
            seen.append(chunk.text)
    assert "".join(seen).startswith("one") and "five" not in "".join(seen)
