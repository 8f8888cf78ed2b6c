"""The gateway's OpenAI surfaces end to end: the official ``openai`` SDK against a real
``modelwire serve`` process, over each kind of upstream. Every body the gateway renders is also
checked against the official OpenAPI schemas."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import openai
import orjson
import pytest

from .fake_upstream import FakeUpstream, Reply, embedding_for
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request
from .spec import assert_openai

# chat-model: Chat client → Chat upstream (passthrough); resp-model: → Responses upstream (translated)
CHAT_ROUTES = ["chat-model", "resp-model"]
# resp-model: Responses → Responses (passthrough); chat-model: → Chat upstream (translated)
RESPONSES_ROUTES = ["resp-model", "chat-model", "stateless-resp"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_RESPONSES = {"type": "function", **WEATHER["function"], "strict": False}


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def raw_post(
    gateway: RunningGateway, path: str, body: dict[str, object]
) -> tuple[int, dict[str, str], bytes]:
    return request(gateway, "POST", path, orjson.dumps(body), {"Content-Type": "application/json"})


# ----------------------------------------------------------------------------------- chat completions


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_plain(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.text("The capital is Paris.", usage=(14, 6)))
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Capital of France?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "The capital is Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 14
    assert raw.headers["x-modelwire-backend"] == ("compat" if model == "chat-model" else "oai")
    assert raw.headers["x-modelwire-model"] == "gpt-4.1" and raw.headers["x-request-id"]
    assert_openai("CreateChatCompletionResponse", json.loads(raw.content))
    assert upstream.last.body["model"] == "gpt-4.1"


def test_chat_client_request_id_is_kept(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat-model",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Request-Id": "mine-123"},
    )
    assert raw.headers["x-request-id"] == "mine-123"


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_streamed(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.text("one two three", usage=(5, 3)))
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    )
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]


def test_chat_stream_usage_is_accounted_but_not_shown_unasked(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.script(Reply.text("hidden usage", usage=(5, 2)))
    chunks = list(
        client.chat.completions.create(
            model="chat-model", messages=[{"role": "user", "content": "q"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)  # no usage-only chunk the client did not ask for
    assert upstream.last.body["stream_options"] == {"include_usage": True}  # asked on its behalf


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_tools(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Oslo"}')])
    )
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    calls = first.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Oslo"]  # type: ignore[union-attr]
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls]
    upstream.script(Reply.text("Both sunny."))
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    assert second.choices[0].message.content == "Both sunny."
    sent = upstream.last.body
    if model == "resp-model":
        outputs = [i["call_id"] for i in sent["input"] if i.get("type") == "function_call_output"]
    else:
        outputs = [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"]
    assert outputs == [c.id for c in calls]


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_streamed_tool_calls(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Paris", "unit": "c"}')]))
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "q"}], tools=[WEATHER], stream=True
    )  # type: ignore[arg-type]
    fragments, names = [], []
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                fragments.append(call.function.arguments)
    assert names == ["get_weather"]
    assert len(fragments) > 1 and json.loads("".join(fragments)) == {"city": "Paris", "unit": "c"}


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_structured_output(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    upstream.script(Reply.text('{"n": 7}'))
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "a number"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "num", "schema": schema, "strict": True},
        },
    )
    assert json.loads(completion.choices[0].message.content or "") == {"n": 7}
    sent = upstream.last.body
    if model == "resp-model":
        assert sent["text"]["format"] == {
            "type": "json_schema",
            "name": "num",
            "schema": schema,
            "strict": True,
        }
    else:
        assert sent["response_format"]["json_schema"]["schema"] == schema


@pytest.mark.parametrize("model", CHAT_ROUTES)
def test_chat_vision(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    png = base64.b64encode(b"\x89PNG fake image").decode()
    client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.png", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                ],
            }
        ],
    )
    sent = upstream.last.body
    if model == "resp-model":
        parts = sent["input"][0]["content"]
        assert parts[1] == {
            "type": "input_image",
            "image_url": "https://example.com/cat.png",
            "detail": "high",
        }
        assert parts[2]["image_url"] == f"data:image/png;base64,{png}"
    else:
        assert sent["messages"][0]["content"][2]["image_url"]["url"] == f"data:image/png;base64,{png}"


def test_chat_over_a_responses_only_model(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("from the pro model"))
    completion = client.chat.completions.create(model="pro", messages=[{"role": "user", "content": "q"}])
    assert completion.choices[0].message.content == "from the pro model"
    assert upstream.last.path == "/v1/responses" and upstream.last.body["model"] == "gpt-5-pro"


# ------------------------------------------------------------------------------------------ responses


@pytest.mark.parametrize("model", RESPONSES_ROUTES)
def test_responses_plain(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway, model: str
) -> None:
    upstream.script(Reply.text("Hello back.", usage=(8, 3)))
    raw = client.responses.with_raw_response.create(model=model, input="Hello", instructions="Be brief.")
    response = raw.parse()
    assert response.output_text == "Hello back."
    assert response.status == "completed" and response.usage is not None and response.usage.input_tokens == 8
    assert_openai("Response", json.loads(raw.content))


@pytest.mark.parametrize("model", RESPONSES_ROUTES)
def test_responses_streamed(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.text("alpha beta gamma", usage=(4, 3)))
    events = list(client.responses.create(model=model, input="go", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "alpha beta gamma" and len(deltas) == 3
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "alpha beta gamma" and final.usage.output_tokens == 3


@pytest.mark.parametrize("model", RESPONSES_ROUTES)
def test_responses_tools(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city":"Rome"}')]))
    first = client.responses.create(model=model, input="Weather in Rome?", tools=[WEATHER_RESPONSES])  # type: ignore[list-item]
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Rome"}  # type: ignore[union-attr]
    upstream.script(Reply.text("Sunny in Rome."))
    second = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},  # type: ignore[union-attr]
        ],
        tools=[WEATHER_RESPONSES],  # type: ignore[list-item]
    )
    assert second.output_text == "Sunny in Rome."


@pytest.mark.parametrize("model", RESPONSES_ROUTES)
def test_responses_streamed_tool_calls(upstream: FakeUpstream, client: openai.OpenAI, model: str) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Lima", "days": 3}')]))
    with client.responses.stream(model=model, input="q", tools=[WEATHER_RESPONSES]) as stream:  # type: ignore[list-item]
        deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 1 and json.loads("".join(deltas)) == {"city": "Lima", "days": 3}
    assert [o.type for o in final.output] == ["function_call"]


def test_previous_response_id_through_the_gateways_store(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    first = client.responses.create(model="stateless-resp", input="My name is Ada.")
    upstream.script(Reply.echo())
    second = client.responses.create(
        model="stateless-resp", input="What is my name?", previous_response_id=first.id
    )
    sent = upstream.last.body
    assert "previous_response_id" not in sent  # the upstream keeps no state: the gateway expanded it
    assert [i.get("content") for i in sent["input"] if i.get("role") == "user"] == [
        "My name is Ada.",
        "What is my name?",
    ]
    assert any(i.get("type") == "message" and i.get("role") == "assistant" for i in sent["input"])
    upstream.script(Reply.echo())
    client.responses.create(model="stateless-resp", input="And again?", previous_response_id=second.id)
    users = [i.get("content") for i in upstream.last.body["input"] if i.get("role") == "user"]
    assert users == ["My name is Ada.", "What is my name?", "And again?"]


def test_previous_response_id_with_a_chat_upstream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    first = client.responses.create(model="chat-model", input="Remember 42.", stream=False)
    client.responses.create(model="chat-model", input="What number?", previous_response_id=first.id)
    roles = [m["role"] for m in upstream.last.body["messages"]]
    assert roles == ["user", "assistant", "user"]


def reference(item_id: str) -> dict[str, str]:
    return {"type": "item_reference", "id": item_id}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", ["chat-model", "stateless-resp"])
def test_an_item_reference_to_a_stored_answer_is_that_answer(
    upstream: FakeUpstream, client: openai.OpenAI, model: str, stream: bool
) -> None:
    """The Vercel AI SDK resends an earlier stored answer by its item id alone: an upstream that
    stores nothing gets the item itself, so the conversation keeps its assistant turn."""
    upstream.script(Reply.text("Your name is Ada, noted."))
    if stream:
        with client.responses.stream(model=model, input="My name is Ada.") as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model=model, input="My name is Ada.")
    upstream.script(Reply.text("Ada."))
    second = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "My name is Ada."},
            reference(first.output[0].id),  # type: ignore[list-item, arg-type]
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert second.output_text == "Ada."
    sent = upstream.last.body
    assert "item_reference" not in json.dumps(sent)
    if model == "chat-model":
        turns = [(m["role"], m["content"]) for m in sent["messages"]]
        assert turns == [
            ("user", "My name is Ada."),
            ("assistant", "Your name is Ada, noted."),
            ("user", "What is my name?"),
        ]
    else:
        assert sent["input"][1]["id"] == first.output[0].id
        assert sent["input"][1]["content"][0]["text"] == "Your name is Ada, noted."
    # The stored follow-up holds the resolved item: chaining from it replays the text, not the id.
    upstream.script(Reply.text("Still Ada."))
    client.responses.create(model=model, input="And now?", previous_response_id=second.id)
    assert "Your name is Ada, noted." in json.dumps(upstream.last.body)


def test_item_references_in_a_tool_loop(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """The AI SDK's tool loop: the call comes back by reference, its output in full."""
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Rome"}')], summary=["Needs a lookup."]))
    first = client.responses.create(
        model="chat-model",
        input="Weather in Rome?",
        tools=[WEATHER_RESPONSES],  # type: ignore[list-item]
    )
    thought, call = first.output
    assert thought.type == "reasoning" and call.type == "function_call"
    upstream.script(Reply.text("Sunny in Rome."))
    client.responses.create(
        model="chat-model",
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            reference(thought.id),
            reference(call.id),  # type: ignore[arg-type]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
        tools=[WEATHER_RESPONSES],  # type: ignore[list-item]
    )
    messages = upstream.last.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Rome"}',
    }
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == call.call_id
    assert "item_reference" not in json.dumps(messages)


@pytest.mark.parametrize("model", ["chat-model", "stateless-resp"])
def test_an_item_reference_the_gateway_does_not_hold_is_a_404(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway, model: str
) -> None:
    """Unknown, unstored (``store: false``) or another key's: OpenAI's own 404, and nothing sent
    upstream that would lose the turn. A native upstream that keeps its own items gets it as sent."""
    unstored = client.responses.create(model=model, input="secret", store=False)
    mine = client.responses.create(model=model, input="mine")
    upstream.requests.clear()
    other_key = openai.OpenAI(base_url=gateway.v1, api_key="sk-client-chat-only-0000", max_retries=0)
    attempts = [(client, "msg_never_minted"), (client, unstored.output[0].id)]
    if model == "chat-model":  # the model that other key may use
        attempts.append((other_key, mine.output[0].id))
    for sdk, missing in attempts:
        with pytest.raises(openai.NotFoundError) as info:
            sdk.responses.create(model=model, input=[reference(missing), {"role": "user", "content": "hi"}])  # type: ignore[list-item]
        body = info.value.body
        assert isinstance(body, dict) and body["param"] == "input" and body["type"] == "invalid_request_error"
        assert f"Item with id '{missing}' not found." in body["message"]
    other_key.close()
    assert not upstream.requests
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model, input=[{"type": "item_reference", "id": 7}])  # type: ignore[list-item]
    client.responses.create(
        model="resp-model", input=[reference("msg_kept_upstream"), {"role": "user", "content": "hi"}]
    )  # type: ignore[list-item]
    assert upstream.last.body["input"][0] == reference("msg_kept_upstream")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", ["stateless-resp", "chat-model"])
def test_an_expanded_chain_says_the_previous_response_id_it_was_given(
    upstream: FakeUpstream, client: openai.OpenAI, model: str, stream: bool
) -> None:
    """The upstream never saw the id (the gateway sent the history instead), yet the answer, its
    lifecycle events and the stored copy all name it, as OpenAI's own answer does."""
    first = client.responses.create(model=model, input="My name is Ada.")
    upstream.script(Reply.text("You are Ada."))
    if stream:
        follow_up = client.responses.create(
            model=model, input="Who am I?", previous_response_id=first.id, stream=True
        )
        events = list(follow_up)
        lifecycle = [e for e in events if e.type in ("response.created", "response.completed")]
        assert [e.type for e in lifecycle] == ["response.created", "response.completed"]
        assert [e.response.previous_response_id for e in lifecycle] == [first.id, first.id]  # type: ignore[union-attr]
        second = lifecycle[-1].response  # type: ignore[union-attr]
    else:
        raw = client.responses.with_raw_response.create(
            model=model, input="Who am I?", previous_response_id=first.id
        )
        assert_openai("Response", json.loads(raw.content))
        second = raw.parse()
        assert second.previous_response_id == first.id
    assert second.output_text == "You are Ada."
    assert "previous_response_id" not in (upstream.last.body or {})  # the upstream still never saw it
    assert client.responses.retrieve(second.id).previous_response_id == first.id
    assert first.previous_response_id is None


def test_store_false_is_honoured(
    upstream: FakeUpstream, client: openai.OpenAI, gateway: RunningGateway
) -> None:
    unstored = client.responses.create(model="stateless-resp", input="secret", store=False)
    status, _, _ = request(gateway, "GET", f"/v1/responses/{unstored.id}")
    assert status == 404
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="stateless-resp", input="x", previous_response_id=unstored.id)


def test_stored_response_get_input_items_delete(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    created = client.responses.create(model="stateless-resp", input="keep me", instructions="sys")
    upstream.stored.clear()  # the one fake also plays a native upstream: this route's server keeps nothing
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.type for i in items.data] == ["message"]
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_reasoning_items_are_kept(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.reasoning(["weighing options"], text="Answer.", encrypted="enc-77"))
    first = client.responses.create(
        model="resp-model", input="think", include=["reasoning.encrypted_content"], store=False
    )
    reasoning = next(o for o in first.output if o.type == "reasoning")
    assert reasoning.encrypted_content == "enc-77"  # type: ignore[union-attr]
    client.responses.create(
        model="resp-model",
        store=False,
        include=["reasoning.encrypted_content"],
        input=[
            *[o.model_dump(exclude_none=True) for o in first.output],  # type: ignore[list-item]
            {"role": "user", "content": "more"},
        ],
    )
    replayed = [i for i in upstream.last.body["input"] if i.get("type") == "reasoning"]
    assert replayed and replayed[0]["encrypted_content"] == "enc-77"


def test_reasoning_summaries_reach_chat_clients(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.reasoning(["first thought"], text="done"))
    _, _, body = raw_post(
        gateway_of(client),
        "/v1/chat/completions",
        {"model": "resp-model", "messages": [{"role": "user", "content": "q"}], "reasoning_effort": "low"},
    )
    message = json.loads(body)["choices"][0]["message"]
    assert message["content"] == "done"


def gateway_of(client: openai.OpenAI) -> RunningGateway:
    url = str(client.base_url).rstrip("/").removesuffix("/v1")
    return RunningGateway(url, None, None, None, {})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- embeddings, models


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(upstream: FakeUpstream, client: openai.OpenAI, encoding: str) -> None:
    result = client.embeddings.create(model="chat-model", input=["hello", "world"], encoding_format=encoding)  # type: ignore[arg-type]
    assert [d.index for d in result.data] == [0, 1]
    vector = result.data[0].embedding
    if encoding == "base64":  # asked for explicitly, the SDK hands the string over as it came
        import array

        values = array.array("f")
        values.frombytes(base64.b64decode(vector))  # type: ignore[arg-type]
        vector = values.tolist()
    assert vector == pytest.approx(embedding_for("hello"), rel=1e-6)
    assert upstream.last.path == "/v1/embeddings" and upstream.last.body["encoding_format"] == encoding


def test_embeddings_with_the_sdk_default(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="chat-model", input="plain")  # the SDK asks for base64 by itself
    assert result.data[0].embedding == pytest.approx(embedding_for("plain"), rel=1e-6)


def test_models_are_filtered_by_key(gateway: RunningGateway) -> None:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as everyone:
        ids = [m.id for m in everyone.models.list()]
        assert {"chat-model", "resp-model", "failover"} <= set(ids)
        assert everyone.models.retrieve("resp-model").id == "resp-model"
    with openai.OpenAI(base_url=gateway.v1, api_key="sk-client-chat-only-0000", max_retries=0) as limited:
        assert [m.id for m in limited.models.list()] == ["chat-model"]
        with pytest.raises(openai.NotFoundError):
            limited.models.retrieve("resp-model")
        with pytest.raises(openai.PermissionDeniedError):
            limited.chat.completions.create(model="resp-model", messages=[{"role": "user", "content": "q"}])
    status, _, body = request(gateway, "GET", "/v1/models")
    assert status == 200
    assert_openai("ListModelsResponse", json.loads(body))


def test_responses_stored_by_a_native_upstream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    created = client.responses.create(model="resp-model", input="kept upstream")  # the fake stores it
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    assert upstream.last.method == "GET" and upstream.last.path == f"/v1/responses/{created.id}"
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_responses_input_tokens(client: openai.OpenAI, gateway: RunningGateway) -> None:
    status, _, body = raw_post(
        gateway,
        "/v1/responses/input_tokens",
        {"model": "resp-model", "input": "hello world " * 50, "instructions": "Be brief."},
    )
    doc = json.loads(body)
    assert status == 200 and doc["object"] == "response.input_tokens" and doc["input_tokens"] > 100


@pytest.mark.parametrize("model", ["stateless-resp", "chat-model"])
def test_an_unknown_chain_on_a_stateless_upstream_is_a_404(
    upstream: FakeUpstream, client: openai.OpenAI, model: str
) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=model, input="and then?", previous_response_id="resp_never_seen")
    assert info.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    assert not upstream.requests  # nothing was sent that would have lost the conversation
