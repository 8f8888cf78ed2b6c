"""The Gemini dialect, both ways, checked against google-genai (the official SDK) as the client.

Property tests give each direction's inverse (as ``test_roundtrip`` does for the OpenAI dialects);
every rendered response and stream chunk is validated with the SDK's own pydantic types; and a
loopback server lets the SDK itself post requests we decode and read responses and streams we
render.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwire.dialects import anthropic_messages, gemini, replay
from modelwire.dialects.sse import KEEPALIVE as SHARED_KEEPALIVE
from modelwire.dialects.sse import SSEParser
from modelwire.dialects.stream import ResponseAccumulator, events_from_response
from modelwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    UpstreamUnavailableError,
)
from modelwire.types import (
    Audio,
    BlockDelta,
    BlockStart,
    BlockStop,
    File,
    Finish,
    Image,
    Message,
    Part,
    Reasoning,
    Request,
    Response,
    ResponseFormat,
    Start,
    StreamError,
    StreamEvent,
    Text,
    Tool,
    ToolCall,
    ToolName,
    ToolResult,
    Usage,
    assistant,
    system,
    tool_result,
    user,
)

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
ids = st.from_regex(r"[a-z0-9]{4,12}", fullmatch=True)
names = st.from_regex(r"[a-z_]{1,16}", fullmatch=True)
args = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.integers(-(2**53), 2**53) | words, max_size=3
).map(lambda d: orjson.dumps(d).decode())
signatures = st.binary(min_size=1, max_size=32).map(lambda b: base64.b64encode(b).decode())
json_texts = st.dictionaries(st.from_regex(r"[a-z]{2,8}", fullmatch=True), words, min_size=2, max_size=3).map(
    lambda d: orjson.dumps(d).decode()
)
PARAMETERS = {"type": "object", "properties": {"q": {"type": "string"}}}


def wire(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as it arrives after a trip through JSON."""
    return orjson.loads(orjson.dumps(doc))


def normal(req: Request) -> Request:
    req.dialect = None
    req.extra = {}
    return req


# ------------------------------------------------------------------ the SDK's types as the schema


def assert_sdk_response(doc: dict[str, Any]) -> gt.GenerateContentResponse:
    """google-genai's response model (extra fields forbidden, thought signatures base64)."""
    return gt.GenerateContentResponse.model_validate(wire(doc))


def assert_sdk_request(body: dict[str, Any]) -> None:
    """Each part of a request body against the SDK's types: the REST body has no model of its own."""
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    body = wire(body)
    for content in body["contents"]:
        assert content["role"] in ("user", "model")
        gt.Content.model_validate(content)
    if "systemInstruction" in body:
        gt.Content.model_validate(body["systemInstruction"])
    for tool in body.get("tools", ()):
        gt.Tool.model_validate(tool)
    if "toolConfig" in body:
        gt.ToolConfig.model_validate(body["toolConfig"])
    if "generationConfig" in body:
        gt.GenerationConfig.model_validate(body["generationConfig"])


# =========================================================================== requests, both ways


def media() -> st.SearchStrategy[Part]:
    return st.one_of(
        st.builds(Image, data=st.binary(min_size=1, max_size=24), media_type=st.just("image/png")),
        st.builds(Image, url=st.just("https://example.com/cat.png"), media_type=st.just("image/png")),
        st.builds(File, data=st.binary(min_size=1, max_size=24), media_type=st.just("application/pdf")),
        st.builds(File, url=st.just("gs://bucket/report.pdf"), media_type=st.just("application/pdf")),
        st.builds(Audio, data=st.binary(min_size=1, max_size=24), format=st.sampled_from(["wav", "mp3"])),
    )


@st.composite
def gemini_conversations(draw: Any) -> list[Message]:
    """Canonical transcripts: one system message; a model turn's calls answered by one tool
    message; Gemini's own signatures as reasoning before a text or before the first call (a
    call's signature decodes to the reasoning right before it)."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(system(draw(words)))
    for _ in range(draw(st.integers(1, 3))):
        messages.append(user(draw(words), *draw(st.lists(media(), max_size=2))))
        reply: list[Part] = []
        if draw(st.booleans()):
            if draw(st.booleans()):
                reply.append(Reasoning(data=draw(signatures), dialect="gemini"))
            reply.append(Text(text=draw(words)))
        calls = [
            ToolCall(id="call_" + draw(ids), name=draw(names), arguments=draw(args))
            for _ in range(draw(st.integers(0 if reply else 1, 2)))
        ]
        if calls and draw(st.booleans()):  # in parallel calls only the first is signed
            reply.append(Reasoning(data=draw(signatures), dialect="gemini"))
        messages.append(Message(role="assistant", content=reply + calls))
        if calls:
            results: list[Part] = [
                ToolResult(
                    call_id=c.id,
                    name=c.name,
                    content=[Text(text=draw(words | json_texts))],
                    is_error=draw(st.booleans()),
                )
                for c in calls
            ]
            messages.append(Message(role="tool", content=results))
    return messages


@st.composite
def gemini_requests(draw: Any) -> Request:
    req = Request(model="gemini-2.5-pro", messages=draw(gemini_conversations()))
    req.tools = draw(
        st.lists(
            st.builds(
                Tool, name=names, description=st.none() | words, parameters=st.none() | st.just(PARAMETERS)
            ),
            max_size=2,
            unique_by=lambda t: t.name,
        )
    )
    if req.tools:
        req.tool_choice = draw(st.sampled_from(["auto", "none", "required", ToolName(req.tools[0].name)]))
    req.max_output_tokens = draw(st.none() | st.integers(1, 100_000))
    req.temperature = draw(st.none() | st.floats(0, 2).map(lambda f: round(f, 2)))
    req.top_p = draw(st.none() | st.floats(0, 1).map(lambda f: round(f, 2)))
    req.seed = draw(st.none() | st.integers(0, 2**31))
    req.stop = draw(st.none() | st.lists(words, min_size=1, max_size=2))
    req.reasoning_effort = draw(
        st.none() | st.sampled_from(["none", "minimal", "low", "medium", "high", "xhigh"])
    )
    req.reasoning_summary = draw(st.none() | st.just("auto"))
    req.response_format = draw(
        st.none()
        | st.just(ResponseFormat(type="json_object"))
        | st.just(ResponseFormat(type="json_schema", schema={"type": "object"}))
    )
    return req


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(gemini_requests())
def test_request_round_trip(req: Request) -> None:
    body = gemini.encode_request(req)
    assert_sdk_request(body)
    assert normal(gemini.decode_request(wire(body), "models/gemini-2.5-pro")) == req


def test_encode_request_wire_shape() -> None:
    req = Request(
        model="gemini-3-pro",
        messages=[
            system("be brief"),
            user("weather in Paris?"),
            assistant(
                Reasoning(id="rs_1", data="ENC", dialect="openai_responses"),  # not Gemini's: dropped
                Reasoning(data="c2lnMQ==", dialect="gemini"),
                "Checking.",
                ToolCall(id="call_1", name="weather", arguments='{"city":"Paris"}', signature="c2lnMg=="),
                ToolCall(id="call_2", name="time", arguments="not json"),
            ),
            tool_result("call_1", '{"temp":21}'),
            tool_result("call_2", "boom", is_error=True),
            Message(role="developer", content=[Text(text="answer in French")]),
            user("and tomorrow?"),
        ],
        tools=[Tool(name="weather", parameters=PARAMETERS), Tool(name="time")],
        tool_choice=ToolName("weather"),
        parallel_tool_calls=False,
        reasoning_effort="high",
        reasoning_summary="auto",
        response_format=ResponseFormat(
            type="json_schema", name="out", schema={"type": "object"}, strict=True
        ),
    )
    body = gemini.encode_request(req)
    assert_sdk_request(body)
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "weather in Paris?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Checking.", "thoughtSignature": "c2lnMQ=="},
                    {
                        "functionCall": {"id": "call_1", "name": "weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2lnMg==",
                    },
                    {"functionCall": {"id": "call_2", "name": "time", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "call_1", "name": "weather", "response": {"temp": 21}}},
                    {"functionResponse": {"id": "call_2", "name": "time", "response": {"error": "boom"}}},
                    {"text": "and tomorrow?"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "be brief"}, {"text": "answer in French"}]},
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "weather", "parametersJsonSchema": PARAMETERS},
                    {"name": "time"},
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}},
        "generationConfig": {
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
            "thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": True},
        },
    }


def test_encode_request_signature_placement() -> None:
    """A reasoning's signature rides on the next part, or an empty text part of its own."""
    envelope = gemini._signature_for_client(Reasoning(id="rs_9", data="ENC", dialect="openai_responses"))
    msg = assistant(
        Reasoning(data="QQ==", dialect="gemini"),
        ToolCall(id="c1", name="f", arguments="{}"),  # takes the reasoning's signature
        Reasoning(data="Qg==", dialect="gemini"),
        ToolCall(id="c2", name="f", arguments="{}", signature="Qw=="),  # has its own
        ToolCall(id="c3", name="g", arguments="{}", signature=envelope),  # a client carried it
        Reasoning(data="RA==", dialect="gemini"),  # nothing follows
    )
    parts = gemini.encode_request(Request(model="m", messages=[user("x"), msg]))["contents"][1]["parts"]
    assert [
        (p.get("functionCall", {}).get("id"), p.get("text"), p.get("thoughtSignature")) for p in parts
    ] == [
        ("c1", None, "QQ=="),
        (None, "", "Qg=="),
        ("c2", None, "Qw=="),
        ("c3", None, None),  # another dialect's reasoning never reaches Gemini
        (None, "", "RA=="),
    ]


def test_encode_request_passes_gemini_extras_only_to_gemini() -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"googleSearch": {}}, {"codeExecution": {}}],
        "toolConfig": {"retrievalConfig": {"languageCode": "fr"}},
        "generationConfig": {"topK": 40, "presencePenalty": 0.5, "responseModalities": ["TEXT"]},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        "cachedContent": "cachedContents/abc",
    }
    req = gemini.decode_request(body, "gemini-2.5-flash")
    assert req.extra == {k: v for k, v in body.items() if k != "contents"}
    assert gemini.encode_request(req) == body
    req.dialect = "openai_chat"
    assert gemini.encode_request(req) == {"contents": body["contents"]}


@pytest.mark.parametrize(
    ("result", "response"),
    [
        (ToolResult(call_id="c", content=[Text(text="plain")]), {"result": "plain"}),
        (ToolResult(call_id="c", content=[Text(text='{"a":[1,2]}')]), {"a": [1, 2]}),
        (ToolResult(call_id="c", content=[Text(text="[1,2]")]), {"result": "[1,2]"}),
        # A JSON object that looks like our own wrapping is wrapped again, so it comes back intact.
        (ToolResult(call_id="c", content=[Text(text='{"result":"x"}')]), {"result": '{"result":"x"}'}),
        (ToolResult(call_id="c", content=[Text(text='{"output":"x"}')]), {"result": '{"output":"x"}'}),
        (ToolResult(call_id="c", content=[Text(text="failed")], is_error=True), {"error": "failed"}),
    ],
)
def test_tool_result_response_objects(result: ToolResult, response: dict[str, Any]) -> None:
    msgs = [
        user("x"),
        assistant(ToolCall(id="c", name="f", arguments="{}")),
        Message(role="tool", content=[result]),
    ]
    body = gemini.encode_request(Request(model="m", messages=msgs))
    (part,) = body["contents"][2]["parts"]
    assert part["functionResponse"] == {"id": "c", "name": "f", "response": response}
    (back,) = gemini.decode_request(body, "m").messages[2].content
    assert back == ToolResult(call_id="c", name="f", content=result.content, is_error=result.is_error)


def test_tool_result_without_a_call_needs_a_name() -> None:
    req = Request(model="m", messages=[user("x"), tool_result("call_missing", "out")])
    with pytest.raises(InvalidRequestError, match="call_missing"):
        gemini.encode_request(req)
    req.messages[1] = tool_result("call_missing", "out", name="lookup")
    assert gemini.encode_request(req)["contents"][0]["parts"][1]["functionResponse"]["name"] == "lookup"


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", {"thinkingBudget": 0}),
        ("low", {"thinkingBudget": 2048}),
        ("medium", {"thinkingBudget": 8192}),
        ("high", {"thinkingBudget": 24576}),
        ("minimal", {"thinkingLevel": "MINIMAL"}),
        ("xhigh", {"thinkingLevel": "XHIGH"}),
    ],
)
def test_effort_to_thinking_config(effort: str, thinking: dict[str, Any]) -> None:
    body = gemini.encode_request(Request(model="m", messages=[user("x")], reasoning_effort=effort))
    assert body["generationConfig"] == {"thinkingConfig": thinking}


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"thinkingBudget": 0}, "none"),
        ({"thinkingBudget": 128}, "low"),
        ({"thinkingBudget": 4095}, "low"),
        ({"thinkingBudget": 4096}, "medium"),
        ({"thinkingBudget": 16383}, "medium"),
        ({"thinkingBudget": 16384}, "high"),
        ({"thinkingBudget": -1}, "high"),
        ({"thinkingLevel": "LOW"}, "low"),
        ({"thinking_level": "minimal"}, "minimal"),
        ({"thinkingLevel": "HIGH", "thinkingBudget": 0}, "high"),
        ({"includeThoughts": True}, None),
    ],
)
def test_thinking_config_to_effort(thinking: dict[str, Any], effort: str | None) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"thinkingConfig": thinking}}
    req = gemini.decode_request(body, "m")
    assert req.reasoning_effort == effort
    assert req.reasoning_summary == ("auto" if thinking.get("includeThoughts") else None)


# ================================================================ what real clients send, decoded


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        fake.requests.append((self.path, dict(self.headers), orjson.loads(raw)))
        status, content_type, payload = fake.reply
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    fake: FakeGemini


class FakeGemini:
    """A loopback HTTP server answering every POST with one canned reply, recording requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.reply: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer_json(self, doc: dict[str, Any], status: int = 200) -> None:
        self.reply = (status, "application/json", orjson.dumps(doc))

    def answer_stream(self, payload: bytes) -> None:
        self.reply = (200, "text/event-stream", payload)

    def last_request(self) -> tuple[str, dict[str, Any]]:
        """``(model from the path, body)`` of the last request."""
        path, _, body = self.requests[-1]
        return path.split("/models/", 1)[1].split(":", 1)[0], body

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGemini]:
    server = FakeGemini()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(fake: FakeGemini) -> Iterator[genai.Client]:
    fake.requests.clear()
    fake.answer_json(
        gemini.render_response(Response(id="r", model="m", content=[Text(text="ok")]), Request(model="m"))
    )
    options = gt.HttpOptions(base_url=fake.url, retry_options=gt.HttpRetryOptions(attempts=1))
    sdk = genai.Client(api_key="test-key", http_options=options)
    try:
        yield sdk
    finally:
        sdk.close()


def test_sdk_request_is_decodable(client: genai.Client, fake: FakeGemini) -> None:
    client.models.generate_content(
        model="gemini-x",
        contents=[
            gt.Content(
                role="user",
                parts=[gt.Part(text="hi"), gt.Part.from_bytes(data=b"\x89PNG", mime_type="image/png")],
            ),
            gt.Content(
                role="model",
                parts=[
                    gt.Part(function_call=gt.FunctionCall(name="f", args={"a": 1}), thought_signature=b"sig")
                ],
            ),
            gt.Content(
                role="user", parts=[gt.Part.from_function_response(name="f", response={"result": "ok"})]
            ),
        ],
        config=gt.GenerateContentConfig(
            system_instruction="be nice",
            temperature=0.5,
            top_p=0.9,
            top_k=4,
            seed=3,
            stop_sequences=["x"],
            max_output_tokens=100,
            tools=[
                gt.Tool(
                    function_declarations=[
                        gt.FunctionDeclaration(
                            name="f",
                            description="d",
                            parameters=gt.Schema(
                                type="OBJECT",
                                properties={"a": gt.Schema(type="INTEGER", nullable=True)},
                                required=["a"],
                            ),
                        ),
                        gt.FunctionDeclaration(name="g", parameters_json_schema=PARAMETERS),
                    ]
                ),
                gt.Tool(google_search=gt.GoogleSearch()),
            ],
            tool_config=gt.ToolConfig(
                function_calling_config=gt.FunctionCallingConfig(mode="ANY", allowed_function_names=["f"])
            ),
            thinking_config=gt.ThinkingConfig(include_thoughts=True, thinking_budget=1024),
            response_mime_type="application/json",
            response_json_schema={"type": "object"},
        ),
    )
    model, body = fake.last_request()
    assert fake.requests[-1][1]["x-goog-api-key"] == "test-key"  # where the gateway finds the key
    req = gemini.decode_request(body, model)
    call_id = req.messages[2].tool_calls[0].id
    assert call_id.startswith("call_0_")  # the SDK sent no id: a stable one is made up
    assert req == Request(
        model="gemini-x",
        dialect="gemini",
        messages=[
            system("be nice"),
            user("hi", Image(data=b"\x89PNG", media_type="image/png")),
            assistant(  # the SDK's bytes signature, base64 on the wire: reasoning before the call
                Reasoning(data="c2ln", dialect="gemini"),
                ToolCall(id=call_id, name="f", arguments='{"a":1}'),
            ),
            Message(role="tool", content=[ToolResult(call_id=call_id, name="f", content=[Text(text="ok")])]),
        ],
        tools=[
            Tool(
                name="f",
                description="d",
                parameters={
                    "type": "object",
                    "properties": {"a": {"type": ["integer", "null"]}},
                    "required": ["a"],
                },
            ),
            Tool(name="g", parameters=PARAMETERS),
        ],
        tool_choice=ToolName("f"),
        max_output_tokens=100,
        temperature=0.5,
        top_p=0.9,
        seed=3,
        stop=["x"],
        response_format=ResponseFormat(type="json_schema", schema={"type": "object"}),
        reasoning_effort="low",
        reasoning_summary="auto",
        extra={"tools": [{"googleSearch": {}}], "generationConfig": {"topK": 4.0}},
    )


def test_sdk_response_schema_and_thinking_level(client: genai.Client, fake: FakeGemini) -> None:
    schema = {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "property_ordering": ["a"]}
    client.models.generate_content(
        model="m",
        contents="hi",
        config=gt.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=schema,
            thinking_config=gt.ThinkingConfig(thinking_level=gt.ThinkingLevel.MINIMAL),
        ),
    )
    req = gemini.decode_request(fake.last_request()[1], "m")
    assert req.messages == [user("hi")]
    assert req.response_format == ResponseFormat(
        type="json_schema", schema={"type": "object", "properties": {"a": {"type": "string"}}}
    )
    assert req.reasoning_effort == "minimal"


def test_gemini_cli_request() -> None:
    """What Gemini CLI sends: parametersJsonSchema, includeThoughts, and {"output": …} results."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "list files"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look.", "thought": True},
                    {
                        "functionCall": {"id": "ls-1", "name": "list_directory", "args": {"path": "."}},
                        "thoughtSignature": "c2ln",
                    },
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "id": "ls-1",
                            "name": "list_directory",
                            "response": {"output": "a.py"},
                        }
                    }
                ],
            },
        ],
        "systemInstruction": {"role": "user", "parts": [{"text": "You are an agent."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "list_directory",
                        "description": "Lists a directory.",
                        "parametersJsonSchema": {
                            "type": "object",
                            "properties": {"path": {"type": "string"}},
                            "required": ["path"],
                            "additionalProperties": False,
                        },
                    }
                ]
            }
        ],
        "generationConfig": {
            "temperature": 0,
            "topP": 1,
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 8192},
        },
    }
    req = gemini.decode_request(body, "gemini-2.5-pro", stream=True)
    assert req.stream and req.model == "gemini-2.5-pro"
    assert req.messages == [
        system("You are an agent."),
        user("list files"),
        assistant(  # the call's signature is the signature of the thought before it
            Reasoning(summary=["Let me look."], data="c2ln", dialect="gemini"),
            ToolCall(id="ls-1", name="list_directory", arguments='{"path":"."}'),
        ),
        Message(
            role="tool",
            content=[ToolResult(call_id="ls-1", name="list_directory", content=[Text(text="a.py")])],
        ),
    ]
    assert req.tools[0].parameters == body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
    model_turn = gemini.encode_request(req)["contents"][1]
    assert model_turn == {  # upstream, the thought's text is dropped; its signature stays on the call
        "role": "model",
        "parts": [
            {
                "functionCall": {"id": "ls-1", "name": "list_directory", "args": {"path": "."}},
                "thoughtSignature": "c2ln",
            }
        ],
    }
    assert (req.temperature, req.top_p, req.reasoning_effort, req.reasoning_summary) == (
        0.0,
        1.0,
        "medium",
        "auto",
    )


def test_snake_case_body() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"inline_data": {"mime_type": "application/pdf", "data": "JVBERi0"}}]},
            {
                "role": "model",
                "parts": [{"function_call": {"name": "f", "args": {}}, "thought_signature": "QQ=="}],
            },
            {"role": "user", "parts": [{"function_response": {"name": "f", "response": {"x": 1}}}]},
        ],
        "system_instruction": {"parts": {"text": "sys"}},  # a lone part, as Google's curl examples send
        "tools": [{"function_declarations": [{"name": "f"}]}],
        "tool_config": {"function_calling_config": {"mode": "none"}},
        "generation_config": {
            "max_output_tokens": 5,
            "stop_sequences": ["\n"],
            "response_mime_type": "application/json",
        },
    }
    req = gemini.decode_request(body, "m")
    call = req.messages[2].tool_calls[0]
    assert req.messages == [
        system("sys"),
        user(File(data=b"%PDF-", media_type="application/pdf")),  # URL-safe, unpadded base64 taken
        assistant(Reasoning(data="QQ==", dialect="gemini"), ToolCall(id=call.id, name="f", arguments="{}")),
        Message(role="tool", content=[ToolResult(call_id=call.id, name="f", content=[Text(text='{"x":1}')])]),
    ]
    assert (req.tools, req.tool_choice) == ([Tool(name="f")], "none")
    assert (req.max_output_tokens, req.stop, req.response_format) == (
        5,
        ["\n"],
        ResponseFormat(type="json_object"),
    )
    assert req.extra == {}


SIGNED_CALL = {"functionCall": {"id": "c1", "name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"}
UNSIGNED_CALL = {"functionCall": {"id": "c2", "name": "g", "args": {}}}


def test_a_call_signature_is_reasoning_before_the_call() -> None:
    """A signed functionCall decodes to [Reasoning, ToolCall], so every dialect can carry the
    signature, and goes back to Gemini as the same part with the same thoughtSignature."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [SIGNED_CALL, UNSIGNED_CALL]},
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"id": "c1", "name": "f", "response": {"result": "A"}}},
                    {"functionResponse": {"id": "c2", "name": "g", "response": {"result": "B"}}},
                ],
            },
        ]
    }
    neutral: list[Part] = [
        Reasoning(data="c2ln", dialect="gemini"),
        ToolCall(id="c1", name="f", arguments='{"a":1}'),
        ToolCall(id="c2", name="g", arguments="{}"),
    ]
    req = gemini.decode_request(body, "m")
    assert req.messages[1] == assistant(*neutral)
    assert orjson.dumps(gemini.encode_request(req)) == orjson.dumps(body)  # byte for byte
    # The driver side reads the same from a response and from a stream, and a Gemini client gets
    # back the parts it would have had from Gemini.
    resp = gemini.decode_response(
        {"candidates": [{"content": {"role": "model", "parts": [SIGNED_CALL, UNSIGNED_CALL]}}]}
    )
    assert resp.content == neutral
    assert gemini.render_response(resp, Request(model="m"))["candidates"][0]["content"]["parts"] == [
        SIGNED_CALL,
        UNSIGNED_CALL,
    ]
    acc = ResponseAccumulator()
    for event in stream_of(
        {"candidates": [{"content": {"parts": [SIGNED_CALL]}}]},
        {"candidates": [{"content": {"parts": [UNSIGNED_CALL]}, "finishReason": "STOP"}]},
    ):
        acc.feed(event)
    assert acc.result().content == neutral
    chunks = parse_sse(render_stream(resp, gemini.StreamRenderer(Request(model="m"))))
    assert [p for c in chunks for p in c["candidates"][0]["content"]["parts"]] == [
        SIGNED_CALL,
        UNSIGNED_CALL,
        {"text": ""},
    ]


def test_a_call_signature_survives_another_dialect() -> None:
    """Why the signature is reasoning: an Anthropic client over a Gemini upstream sees it as a
    thinking block, sends that back, and Gemini gets its signature on the call again."""
    reasoning, call = gemini.decode_response({"candidates": [{"content": {"parts": [SIGNED_CALL]}}]}).content
    assert isinstance(reasoning, Reasoning)
    block = anthropic_messages.render_thinking(reasoning)
    assert block is not None and block["signature"].startswith(replay.PREFIX)
    back = anthropic_messages.decode_thinking(block["thinking"], block["signature"])
    assert back == reasoning
    body = gemini.encode_request(Request(model="m", messages=[user("go"), assistant(back, call)]))
    assert body["contents"][1] == {"role": "model", "parts": [SIGNED_CALL]}


def test_another_dialects_reasoning_on_a_call() -> None:
    """A Gemini client carries another dialect's reasoning as the signature of the call after it:
    it decodes to that reasoning before the call, goes back to the client on the call, and never
    reaches a Gemini upstream."""
    foreign = Reasoning(id="rs_1", data="gAAAA-enc", dialect="openai_responses")
    envelope = gemini._signature_for_client(foreign)
    part = {"functionCall": {"id": "c1", "name": "f", "args": {}}, "thoughtSignature": envelope}
    body = {"contents": [{"role": "user", "parts": [{"text": "go"}]}, {"role": "model", "parts": [part]}]}
    req = gemini.decode_request(body, "m")
    assert req.messages[1] == assistant(foreign, ToolCall(id="c1", name="f", arguments="{}"))
    assert gemini.encode_request(req)["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"id": "c1", "name": "f", "args": {}}}],
    }
    resp = Response(id="r", model="m", content=req.messages[1].content, stop_reason="tool_calls")
    assert gemini.render_response(resp, Request(model="m"))["candidates"][0]["content"]["parts"] == [part]


def test_consecutive_model_contents_are_one_turn() -> None:
    """google-genai keeps a streamed answer as one model content per chunk: they are one turn, so
    text split across chunks is one text and an id-less response answers a call from any of them."""
    chunked = [
        {"role": "model", "parts": [{"text": "plan", "thought": True}]},
        {"role": "model", "parts": [{"text": "Hel"}]},
        {"role": "model", "parts": [{"text": "lo"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln"}]},
        {"role": "model", "parts": [{"text": ""}]},  # the last chunk of our own streams
    ]
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "ok"}}}]}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}, *chunked, answer]}
    req = gemini.decode_request(body, "m")
    call = ToolCall(id=gemini._synthesized_id(0, "f", "{}"), name="f", arguments="{}")
    assert req.messages == [
        user("hi"),
        assistant(
            Reasoning(summary=["plan"], dialect="gemini"),
            "Hello",
            Reasoning(data="c2ln", dialect="gemini"),
            call,
        ),
        Message(role="tool", content=[ToolResult(call_id=call.id, name="f", content=[Text(text="ok")])]),
    ]
    merged = {"role": "model", "parts": [p for c in chunked for p in c["parts"]]}
    assert gemini.decode_request({"contents": [body["contents"][0], merged, answer]}, "m") == req
    # A user turn between model contents still ends the turn.
    apart = gemini.decode_request({"contents": [chunked[1], {"parts": [{"text": "?"}]}, chunked[2]]}, "m")
    assert apart.messages == [assistant("Hel"), user("?"), assistant("lo")]


def test_id_less_responses_answer_calls_by_name_in_order() -> None:
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "a", "args": {"n": 1}}},
                    {"functionCall": {"name": "b", "args": {}}},
                    {"functionCall": {"name": "a", "args": {"n": 2}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "b", "response": {"result": "B"}}},
                    {"functionResponse": {"name": "a", "response": {"result": "A1"}}},
                    {"functionResponse": {"name": "a", "response": {"result": "A2"}}},
                    {"text": "thanks"},
                ],
            },
        ]
    }
    req = gemini.decode_request(body, "m")
    calls = req.messages[1].tool_calls
    assert len({c.id for c in calls}) == 3
    results = req.messages[2].content
    assert [(r.call_id, r.text) for r in results if isinstance(r, ToolResult)] == [
        (calls[1].id, "B"),
        (calls[0].id, "A1"),
        (calls[2].id, "A2"),
    ]
    assert req.messages[3] == user("thanks")
    assert gemini.decode_request(body, "m") == req  # the made-up ids are stable


def test_media_parts_by_mime_type() -> None:
    parts = [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9g="}},
        {"inlineData": {"mimeType": "audio/mpeg", "data": "SUQz"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/a.png"}},
        {"fileData": {"fileUri": "gs://b/report.pdf"}},
        {"fileData": {"mimeType": "video/mp4", "fileUri": "https://youtu.be/x"}, "videoMetadata": {"fps": 1}},
    ]
    req = gemini.decode_request({"contents": [{"role": "user", "parts": parts}]}, "m")
    assert req.messages[0].content == [
        Image(data=b"\xff\xd8", media_type="image/jpeg"),
        Audio(data=b"ID3", format="mp3"),
        File(data=b"%PD", media_type="application/pdf"),
        Image(url="https://x.test/a.png", media_type="image/png"),
        File(url="gs://b/report.pdf", media_type="application/pdf"),
        File(url="https://youtu.be/x", media_type="video/mp4"),
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"contents": "hi"}, "contents"),
        ({"contents": []}, "contents"),
        ({}, "contents"),
        ({"contents": [{"role": "user", "parts": [{"foo": 1}]}]}, "contents[0].parts[0]"),
        ({"contents": [{"role": "user", "parts": [{}]}]}, "contents[0].parts[0]"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": [{"text": 5}]}]}, "contents[0].parts[0].text"),
        ({"contents": [{"role": "user", "parts": "x"}]}, "contents[0].parts"),
        ({"contents": [{"role": "user"}]}, "contents[0].parts"),
        (
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]},
            "contents[0].parts[0].inlineData.data",
        ),
        (
            {"contents": [{"parts": [{"functionCall": {"name": "f"}}]}]},
            "contents[0].parts[0].functionCall",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
            "contents[0].parts[0].functionCall.name",
        ),
        (
            {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": "{}"}}]}]},
            "contents[0].parts[0].functionCall.args",
        ),
        (
            {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": "ok"}}]}]},
            "contents[0].parts[0].functionResponse.response",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 2}},
            "generationConfig.candidateCount",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": "hot"}},
            "generationConfig.temperature",
        ),
        ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": []}, "generationConfig"),
        (
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"thinkingConfig": {"thinkingBudget": "lots"}},
            },
            "generationConfig.thinkingConfig.thinkingBudget",
        ),
        (
            {"contents": [{"parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [{}]}]},
            "tools[0].functionDeclarations[0].name",
        ),
        (
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}},
            },
            "toolConfig.functionCallingConfig.mode",
        ),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        gemini.decode_request(body, "m")
    assert caught.value.param == param
    assert caught.value.message.startswith(param)
    assert gemini.render_error(caught.value) == (
        400,
        {"error": {"code": 400, "message": caught.value.message, "status": "INVALID_ARGUMENT"}},
    )


# ========================================================================== responses, both ways


usages = st.builds(
    lambda i, c, o, r: Usage(
        input_tokens=i, cached_input_tokens=min(c, i), output_tokens=o, reasoning_tokens=min(r, o)
    ),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**5),
    st.integers(0, 10**5),
)


@st.composite
def reasonings(draw: Any) -> Reasoning:
    if draw(st.booleans()):  # Gemini's own: a thought summary, a signature, or both
        summary, data = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
        return Reasoning(
            summary=[draw(words)] if summary else [],
            data=draw(signatures) if data else None,
            dialect="gemini",
        )
    return Reasoning(  # another dialect's, carried in an envelope
        id="rs_" + draw(ids),
        summary=draw(st.lists(words, max_size=1)),
        data=draw(st.none() | words),
        dialect="openai_responses",
    )


@st.composite
def gemini_responses(draw: Any) -> Response:
    """Canonical responses: no two texts or reasonings in a row (Gemini would merge them), except
    that a signed call is a signed reasoning right before the call: when a thought of Gemini's own
    with no signature yet comes before it, the call's signature is that thought's (they merge)."""
    parts: list[Part] = []
    for kind in draw(st.lists(st.sampled_from(["text", "call", "reasoning"]), min_size=1, max_size=5)):
        last = parts[-1] if parts else None
        if kind == "text" and not isinstance(last, Text):
            parts.append(Text(text=draw(words)))
        elif kind == "reasoning" and not isinstance(last, Reasoning):
            parts.append(draw(reasonings()))
        elif kind == "call":
            call = ToolCall(id="call_" + draw(ids), name=draw(names), arguments=draw(args))
            if draw(st.booleans()):  # a signed call
                if isinstance(last, Reasoning) and last.dialect == "gemini" and last.data is None:
                    last.data = draw(signatures)
                else:
                    parts.append(Reasoning(data=draw(signatures), dialect="gemini"))
            parts.append(call)
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    stop = "tool_calls" if has_calls else draw(st.sampled_from(["stop", "length", "content_filter", "error"]))
    return Response(
        id="resp-" + draw(ids), model="gemini-2.5-pro", content=parts, stop_reason=stop, usage=draw(usages)
    )


THINKING = Request(model="gemini-2.5-pro", reasoning_summary="auto")


@settings(max_examples=200)
@given(gemini_responses())
def test_response_round_trip(resp: Response) -> None:
    doc = gemini.render_response(resp, THINKING)
    sdk = assert_sdk_response(doc)
    assert sdk.usage_metadata is not None
    assert sdk.usage_metadata.thoughts_token_count == (resp.usage.reasoning_tokens or None)
    assert sdk.usage_metadata.candidates_token_count == resp.usage.output_tokens - resp.usage.reasoning_tokens
    assert gemini.decode_response(wire(doc)) == resp


def parse_sse(payload: bytes) -> list[dict[str, Any]]:
    blocks = payload.split(b"\r\n\r\n")
    assert blocks[-1] == b""
    assert all(b.startswith(b"data: {") and b"\n" not in b for b in blocks[:-1])
    return [orjson.loads(b[len(b"data: ") :]) for b in blocks[:-1]]


def decode_stream(payload: bytes) -> Response:
    decoder = gemini.StreamDecoder()
    acc = ResponseAccumulator()
    parser = SSEParser()
    for sse in parser.feed(payload) + parser.flush():
        for event in decoder.feed(sse.data):
            acc.feed(event)
    for event in decoder.end():
        acc.feed(event)
    return acc.result()


def render_stream(resp: Response, renderer: gemini.StreamRenderer) -> bytes:
    return b"".join(renderer.feed(e) for e in events_from_response(resp)) + renderer.end()


@settings(max_examples=200)
@given(gemini_responses())
def test_stream_round_trip(resp: Response) -> None:
    payload = render_stream(resp, gemini.StreamRenderer(THINKING))
    chunks = parse_sse(payload)
    for chunk in chunks:
        assert_sdk_response(chunk)
        assert (chunk["responseId"], chunk["modelVersion"]) == (resp.id, resp.model)
    assert [("finishReason" in c["candidates"][0], "usageMetadata" in c) for c in chunks][-1] == (True, True)
    assert not any("finishReason" in c["candidates"][0] or "usageMetadata" in c for c in chunks[:-1])
    assert all(c["candidates"][0]["content"]["parts"] for c in chunks)  # google-genai drops a turn else
    back = decode_stream(payload)
    assert back == resp
    array = render_stream(resp, gemini.ArrayStreamRenderer(THINKING))
    assert orjson.loads(array) == chunks
    assert array.startswith(b"[{") and array.count(b",\r\n{") == len(chunks) - 1


foreign_signatures = st.builds(
    lambda i, d: gemini._signature_for_client(Reasoning(id="rs_" + i, data=d, dialect="openai_responses")),
    ids,
    st.none() | words,
)


def wire_call(draw: Any, *, with_id: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": draw(names), "args": orjson.loads(draw(args))}
    return {"functionCall": {"id": "call_" + draw(ids), **spec} if with_id else spec}


@st.composite
def wire_model_parts(draw: Any) -> list[dict[str, Any]]:
    """Any model turn's parts: texts (empty ones too), thoughts and calls, each maybe signed with
    a signature of Gemini's own or another dialect's envelope."""
    parts: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(["text", "empty", "thought", "call"]), min_size=1, max_size=6)):
        if kind == "call":
            part = wire_call(draw, with_id=draw(st.booleans()))
        else:
            part = {"text": "" if kind == "empty" else draw(words)}
            if kind == "thought":
                part["thought"] = True
        if draw(st.booleans()):
            part["thoughtSignature"] = draw(signatures | foreign_signatures)
        parts.append(part)
    return parts


@st.composite
def canonical_model_parts(draw: Any, *, thoughts: bool, foreign: bool) -> list[dict[str, Any]]:
    """A model turn's parts in the one form that comes back byte for byte: a thought is unsigned
    (a signature after thoughts rides on the next part) and never follows a thought; an empty text
    is there for its signature and is followed by a signed part, a thought or nothing; an unsigned
    text never follows a text; calls have ids."""
    sigs = signatures | foreign_signatures if foreign else signatures
    kinds = ["text", "empty", "call", *(["thought"] if thoughts else [])]
    parts: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=6)):
        last = parts[-1] if parts else {}
        if kind == "thought":
            if not last.get("thought"):
                parts.append({"text": draw(words), "thought": True})
            continue
        signed = draw(st.booleans()) or last.get("text") == ""
        if kind == "call":
            part = wire_call(draw)
        else:
            part = {"text": "" if kind == "empty" else draw(words)}
            signed = signed or kind == "empty" or ("text" in last and not last.get("thought"))
        if signed:
            part["thoughtSignature"] = draw(sigs)
        parts.append(part)
    return parts


def candidate_doc(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole response holding ``parts``, keys in the order :func:`gemini.render_response` writes."""
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": gemini.render_usage(Usage(input_tokens=3, output_tokens=5, reasoning_tokens=2)),
        "modelVersion": "m",
        "responseId": "r",
    }


@settings(max_examples=200)
@given(canonical_model_parts(thoughts=True, foreign=True))
def test_response_wire_round_trip(parts: list[dict[str, Any]]) -> None:
    """Gemini's bytes → neutral → the same bytes, for the response a Gemini client gets."""
    doc = candidate_doc(parts)
    assert orjson.dumps(gemini.render_response(gemini.decode_response(wire(doc)), THINKING)) == orjson.dumps(
        doc
    )


@settings(max_examples=200)
@given(canonical_model_parts(thoughts=False, foreign=False))
def test_request_wire_round_trip(parts: list[dict[str, Any]]) -> None:
    """A Gemini client's model turn → neutral → the same bytes to a Gemini upstream (which gets
    neither thoughts nor other dialects' signatures)."""
    body = {
        "contents": [
            {"role": "user", "parts": [{"text": "q"}]},
            {"role": "model", "parts": parts},
            {"role": "user", "parts": [{"text": "more"}]},
        ]
    }
    assert orjson.dumps(gemini.encode_request(gemini.decode_request(wire(body), "m"))) == orjson.dumps(body)


@settings(max_examples=200)
@given(wire_model_parts())
def test_any_model_parts_settle_after_one_trip(parts: list[dict[str, Any]]) -> None:
    """Parts in any form come back normalised, but meaning the same: decoding them again gives the
    same neutral parts, and another trip the same bytes."""
    first = gemini.decode_response(wire(candidate_doc(parts)))
    doc = gemini.render_response(first, THINKING)
    again = gemini.decode_response(wire(doc))
    assert again.content == first.content
    assert gemini.render_response(again, THINKING) == doc


def split(parts: list[Any], cuts: list[bool]) -> list[list[Any]]:
    """``parts`` cut in runs, after each part whose ``cuts`` entry is true."""
    runs: list[list[Any]] = [[]]
    for part, cut in zip(parts, [*cuts, False], strict=False):
        runs[-1].append(part)
        if cut:
            runs.append([])
    return [run for run in runs if run]


@settings(max_examples=200)
@given(
    wire_model_parts().flatmap(
        lambda ps: st.tuples(st.just(ps), st.lists(st.booleans(), min_size=len(ps), max_size=len(ps)))
    )
)
def test_model_parts_mean_the_same_however_chunked(case: tuple[list[dict[str, Any]], list[bool]]) -> None:
    """One model content, the same parts as consecutive model contents (a chat history), and the
    same parts as stream chunks all decode to the same assistant parts."""
    parts, cuts = case
    whole = gemini.decode_response(wire(candidate_doc(parts))).content
    runs = split(parts, cuts)
    contents = [{"role": "user", "parts": [{"text": "q"}]}, *({"role": "model", "parts": r} for r in runs)]
    (_, turn) = gemini.decode_request(wire({"contents": contents}), "m").messages
    assert turn == Message(role="assistant", content=whole)
    chunks: list[dict[str, Any]] = [
        {"candidates": [{"content": {"role": "model", "parts": r}}]} for r in runs
    ]
    chunks[-1]["candidates"][0]["finishReason"] = "STOP"
    acc = ResponseAccumulator()
    for event in stream_of(*chunks):
        acc.feed(event)
    assert acc.result().content == whole


def test_last_stream_chunk_always_has_parts() -> None:
    """google-genai's chat drops a streamed turn with a chunk without parts: the last chunk has an
    empty text part when nothing else is left, and only then."""
    cases: list[tuple[list[Part], list[dict[str, Any]]]] = [
        ([], [{"text": ""}]),
        ([Text(text="hi")], [{"text": ""}]),
        (
            [Text(text="hi"), Reasoning(data="c2ln", dialect="gemini")],
            [{"text": "", "thoughtSignature": "c2ln"}],
        ),
    ]
    for content, last in cases:
        resp = Response(id="r", model="m", content=content)
        chunks = parse_sse(render_stream(resp, gemini.StreamRenderer(Request(model="m"))))
        assert chunks[-1]["candidates"][0]["content"]["parts"] == last
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        assert orjson.loads(render_stream(resp, gemini.ArrayStreamRenderer(Request(model="m")))) == chunks
        assert (
            decode_stream(render_stream(resp, gemini.StreamRenderer(Request(model="m")))).content == content
        )


def test_thoughts_shown_only_when_asked() -> None:
    resp = Response(
        id="r",
        model="m",
        content=[Reasoning(summary=["plan"], data="c2ln", dialect="gemini"), Text(text="hi")],
        usage=Usage(input_tokens=10, cached_input_tokens=4, output_tokens=30, reasoning_tokens=20),
    )
    doc = gemini.render_response(resp, Request(model="m"))
    assert doc == {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "hi", "thoughtSignature": "c2ln"}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 10,
            "cachedContentTokenCount": 4,
            "thoughtsTokenCount": 20,
            "totalTokenCount": 40,
        },
        "modelVersion": "m",
        "responseId": "r",
    }
    shown = gemini.render_response(resp, THINKING)["candidates"][0]["content"]["parts"]
    assert shown == [{"text": "plan", "thought": True}, {"text": "hi", "thoughtSignature": "c2ln"}]
    streamed = parse_sse(render_stream(resp, gemini.StreamRenderer(Request(model="m"))))
    assert [c["candidates"][0]["content"]["parts"] for c in streamed] == [
        [{"text": "hi", "thoughtSignature": "c2ln"}],
        [{"text": ""}],  # the last chunk is never without parts
    ]


def test_stream_thoughts_join_summary_parts_and_skip_raw_text_after_them() -> None:
    resp = Response(id="r", model="m", content=[Reasoning(summary=["one", "two"], text="raw", id="x")])
    chunks = parse_sse(render_stream(resp, gemini.StreamRenderer(THINKING)))
    thoughts = [p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if p.get("thought")]
    assert "".join(thoughts) == "one\n\ntwo"
    whole = gemini.render_response(resp, THINKING)["candidates"][0]["content"]["parts"]
    assert whole[0] == {"text": "one\n\ntwo", "thought": True}


def test_foreign_reasoning_travels_as_a_base64_envelope() -> None:
    reasoning = Reasoning(id="rs_1", summary=["s"], data="gAAAA-encrypted", dialect="openai_responses")
    signature = gemini._signature_for_client(reasoning)
    assert signature is not None
    assert base64.b64decode(signature, validate=True).decode().startswith(replay.PREFIX)
    assert gemini._reasoning_from_signature(signature) == Reasoning(
        id="rs_1", data="gAAAA-encrypted", dialect="openai_responses"
    )
    raw = replay.wrap(reasoning)  # a client that kept the bare envelope is understood too
    assert raw is not None
    assert gemini._reasoning_from_signature(raw).data == "gAAAA-encrypted"


# ===================================================================================== the driver


def test_decode_response_blocked_prompt() -> None:
    doc = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abc",
    }
    assert gemini.decode_response(doc) == Response(
        id="abc", model="gemini-2.5-flash", stop_reason="content_filter", usage=Usage(input_tokens=7)
    )
    with pytest.raises(ProtocolError):
        gemini.decode_response({"modelVersion": "m"})


def test_decode_response_parallel_calls_without_ids() -> None:
    doc = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2ln",
                        },
                        {"functionCall": {"name": "get", "args": {"city": "Rome"}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 60,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 50,
            "toolUsePromptTokenCount": 5,
            "totalTokenCount": 175,
        },
    }
    resp = gemini.decode_response(doc)
    first, second = resp.tool_calls
    assert first.id.startswith("call_0_") and second.id.startswith("call_1_")
    assert resp.content == [Reasoning(data="c2ln", dialect="gemini"), first, second]
    assert (first.arguments, second.arguments) == ('{"city":"Paris"}', '{"city":"Rome"}')
    back = gemini.render_response(resp, Request(model="m"))["candidates"][0]["content"]["parts"]
    assert [(p["functionCall"]["args"], p.get("thoughtSignature")) for p in back] == [
        ({"city": "Paris"}, "c2ln"),  # the signature goes back on the first call only
        ({"city": "Rome"}, None),
    ]
    assert resp.stop_reason == "tool_calls"
    assert resp.usage == Usage(
        input_tokens=105, cached_input_tokens=60, output_tokens=70, reasoning_tokens=50
    )
    assert gemini.decode_response(doc).tool_calls == resp.tool_calls


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "error"),
        ("OTHER", "error"),
        (None, "stop"),
    ],
)
def test_finish_reasons(finish: str | None, stop: str) -> None:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": "x"}]}}
    if finish:
        candidate["finishReason"] = finish
    assert gemini.decode_response({"candidates": [candidate]}).stop_reason == stop


def test_decode_response_malformed_part_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"candidates\[0\].content.parts\[0\].text"):
        gemini.decode_response({"candidates": [{"content": {"parts": [{"text": 5}]}}]})


def stream_of(*chunks: dict[str, Any]) -> list[StreamEvent]:
    decoder = gemini.StreamDecoder()
    events: list[StreamEvent] = []
    for chunk in chunks:
        events += decoder.feed(orjson.dumps(chunk).decode())
    return events + decoder.end()


def test_stream_decoder_real_shape() -> None:
    """Thought deltas, text deltas, a trailing empty text part holding the signature (as Gemini 3
    streams end), then the usage on the last chunk."""

    def chunk(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        candidate = {"content": {"role": "model", "parts": list(parts)}, "index": 0, **extra}
        return {"candidates": [candidate], "modelVersion": "gemini-3-pro", "responseId": "rid"}

    events = stream_of(
        chunk({"text": "Think", "thought": True}),
        chunk({"text": "ing.", "thought": True}),
        chunk({"text": "Hel"}),
        chunk({"text": "lo"}),
        {
            **chunk({"text": "", "thoughtSignature": "c2ln"}, finishReason="STOP"),
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "thoughtsTokenCount": 4},
        },
    )
    assert events[0] == Start(id="rid", model="gemini-3-pro")
    assert [type(e).__name__ for e in events[1:]] == [
        "BlockStart", "BlockDelta", "BlockDelta", "BlockStop", "BlockStart", "BlockDelta", "BlockDelta",
        "BlockStop", "BlockStart", "BlockStop", "UsageUpdate", "Finish",
    ]  # fmt: skip
    acc = ResponseAccumulator()
    for e in events:
        acc.feed(e)
    assert acc.result() == Response(
        id="rid",
        model="gemini-3-pro",
        content=[
            Reasoning(summary=["Thinking."], dialect="gemini"),
            Text(text="Hello"),
            Reasoning(data="c2ln", dialect="gemini"),
        ],
        usage=Usage(input_tokens=3, output_tokens=6, reasoning_tokens=4),
    )


def test_stream_decoder_function_call_streams_its_arguments_once() -> None:
    part = {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"}
    events = stream_of({"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})
    call = ToolCall(id=gemini._synthesized_id(0, "f", '{"a":1}'), name="f", arguments='{"a":1}')
    assert events[1:] == [
        BlockStart(index=0, part=Reasoning()),  # the call's signature: reasoning before it
        BlockStop(index=0, part=Reasoning(data="c2ln", dialect="gemini")),
        BlockStart(index=1, part=ToolCall(id=call.id, name="f")),
        BlockDelta(index=1, text='{"a":1}'),
        BlockStop(index=1, part=call),
        Finish(stop_reason="tool_calls"),
    ]


def test_stream_decoder_failures() -> None:
    (cut,) = stream_of({"candidates": [{"content": {"parts": [{"text": "x"}]}}]})[-1:]
    assert isinstance(cut, StreamError) and isinstance(cut.error, ProtocolError)
    decoder = gemini.StreamDecoder()
    events = decoder.feed('{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}')
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, RateLimitError)
    assert events[-1].error.code == "RESOURCE_EXHAUSTED"
    assert decoder.end() == []
    (garbage,) = gemini.StreamDecoder().feed("not json")
    assert isinstance(garbage, StreamError) and isinstance(garbage.error, ProtocolError)


# =========================================================================== the SDK as the client


def sdk_tool_loop_response() -> Response:
    return Response(
        id="resp-1",
        model="gpt-5.1",
        content=[
            Reasoning(
                id="rs_1", summary=["Need the weather."], data="gAAAA-opaque", dialect="openai_responses"
            ),
            Text(text="Let me check."),
            ToolCall(id="call_a", name="get_weather", arguments='{"city":"Paris"}', item_id="fc_1"),
            ToolCall(id="call_b", name="get_time", arguments="{}", item_id="fc_2"),
        ],
        stop_reason="tool_calls",
        usage=Usage(input_tokens=50, cached_input_tokens=10, output_tokens=40, reasoning_tokens=25),
    )


def test_sdk_reads_a_stream(client: genai.Client, fake: FakeGemini) -> None:
    resp = sdk_tool_loop_response()
    fake.answer_stream(gemini.KEEPALIVE + render_stream(resp, gemini.StreamRenderer(THINKING)))
    chunks = list(client.models.generate_content_stream(model="gpt-5.1", contents="weather?"))
    parts = [p for c in chunks for p in (c.candidates[0].content.parts or ())]
    assert [p.text for p in parts if p.thought] == ["Need the weather."]
    assert "".join(p.text or "" for p in parts if not p.thought) == "Let me check."
    calls = [fc for c in chunks for fc in c.function_calls or ()]
    assert [(fc.id, fc.name, fc.args) for fc in calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {}),
    ]
    (signed,) = [p for p in parts if p.thought_signature]
    assert signed.text == "Let me check."  # the reasoning's envelope rides on the part after it
    assert signed.thought_signature.startswith(replay.PREFIX.encode())
    last = chunks[-1]
    assert last.candidates[0].finish_reason == gt.FinishReason.STOP
    assert last.usage_metadata is not None
    usage = last.usage_metadata
    assert (usage.prompt_token_count, usage.cached_content_token_count) == (50, 10)
    assert (usage.candidates_token_count, usage.thoughts_token_count, usage.total_token_count) == (15, 25, 90)
    assert all(c.response_id == "resp-1" and c.model_version == "gpt-5.1" for c in chunks)


def test_sdk_replays_foreign_reasoning_in_a_tool_loop(client: genai.Client, fake: FakeGemini) -> None:
    """The OpenAI reasoning behind a call reaches a Gemini client as a thought signature and comes
    back, through the SDK's own history, as the same reasoning before the same calls."""
    resp = sdk_tool_loop_response()
    fake.answer_json(gemini.render_response(resp, THINKING))
    answer = client.models.generate_content(model="gpt-5.1", contents="weather?")
    assert answer.text == "Let me check."
    assert [fc.name for fc in answer.function_calls or ()] == ["get_weather", "get_time"]
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.candidates_token_count, usage.thoughts_token_count, usage.total_token_count) == (15, 25, 90)
    history = [
        gt.Content(role="user", parts=[gt.Part(text="weather?")]),
        answer.candidates[0].content,
        gt.Content(
            role="user",
            parts=[
                gt.Part.from_function_response(name="get_weather", response={"result": "sunny"}),
                gt.Part.from_function_response(name="get_time", response={"result": "noon"}),
            ],
        ),
    ]
    client.models.generate_content(model="gpt-5.1", contents=history)
    req = gemini.decode_request(fake.last_request()[1], "gpt-5.1")
    assert req.messages == [
        user("weather?"),
        assistant(
            Reasoning(
                id="rs_1", summary=["Need the weather."], data="gAAAA-opaque", dialect="openai_responses"
            ),
            "Let me check.",
            ToolCall(id="call_a", name="get_weather", arguments='{"city":"Paris"}'),
            ToolCall(id="call_b", name="get_time", arguments="{}"),
        ),
        Message(
            role="tool",
            content=[
                ToolResult(call_id="call_a", name="get_weather", content=[Text(text="sunny")]),
                ToolResult(call_id="call_b", name="get_time", content=[Text(text="noon")]),
            ],
        ),
    ]


def test_sdk_chat_keeps_a_streamed_turn(client: genai.Client, fake: FakeGemini) -> None:
    """google-genai's chat keeps a streamed answer (one model content per chunk) only when every
    chunk has parts; the next request sends those contents back, and they are one assistant turn
    whose calls the id-less function responses answer."""
    fake.answer_stream(render_stream(sdk_tool_loop_response(), gemini.StreamRenderer(THINKING)))
    chat = client.chats.create(model="gpt-5.1")
    chunks = list(chat.send_message_stream("weather?"))
    (last,) = chunks[-1].candidates or []
    assert last.content is not None and last.content.parts == [gt.Part(text="")]
    history = chat.get_history(curated=True)
    assert [c.role for c in history] == ["user"] + ["model"] * len(chunks)
    fake.answer_json(
        gemini.render_response(Response(id="r2", model="m", content=[Text(text="ok")]), Request(model="m"))
    )
    chat.send_message(
        [
            gt.Part.from_function_response(name="get_weather", response={"result": "sunny"}),
            gt.Part.from_function_response(name="get_time", response={"result": "noon"}),
        ]
    )
    req = gemini.decode_request(fake.last_request()[1], "gpt-5.1")
    assert req.messages == [
        user("weather?"),
        assistant(
            Reasoning(
                id="rs_1", summary=["Need the weather."], data="gAAAA-opaque", dialect="openai_responses"
            ),
            "Let me check.",
            ToolCall(id="call_a", name="get_weather", arguments='{"city":"Paris"}'),
            ToolCall(id="call_b", name="get_time", arguments="{}"),
        ),
        Message(
            role="tool",
            content=[
                ToolResult(call_id="call_a", name="get_weather", content=[Text(text="sunny")]),
                ToolResult(call_id="call_b", name="get_time", content=[Text(text="noon")]),
            ],
        ),
    ]


def test_sdk_reads_an_error_mid_stream(client: genai.Client, fake: FakeGemini) -> None:
    renderer = gemini.StreamRenderer(Request(model="m"))
    payload = b"".join(
        renderer.feed(e)
        for e in [
            Start(id="r", model="m"),
            BlockStart(index=0, part=Text(text="")),
            BlockDelta(index=0, text="partial"),
            StreamError(error=UpstreamUnavailableError("upstream went away")),
        ]
    )
    assert payload.endswith(
        b'data: {"error":{"code":502,"message":"upstream went away","status":"UNAVAILABLE"}}\r\n\r\n'
    )
    fake.answer_stream(payload)
    seen: list[str | None] = []
    with pytest.raises(genai_errors.ServerError) as caught:
        for chunk in client.models.generate_content_stream(model="m", contents="hi"):
            seen.append(chunk.text)
    assert seen == ["partial"]
    assert (caught.value.code, caught.value.status, caught.value.message) == (
        502,
        "UNAVAILABLE",
        "upstream went away",
    )


def test_shared_sse_keepalive_would_break_the_sdk(client: genai.Client, fake: FakeGemini) -> None:
    """Why Gemini has its own keep-alive: google-genai parses a comment line as JSON."""
    stream = render_stream(
        Response(id="r", model="m", content=[Text(text="ok")]), gemini.StreamRenderer(Request(model="m"))
    )
    fake.answer_stream(SHARED_KEEPALIVE + stream)
    with pytest.raises(genai_errors.UnknownApiResponseError):
        list(client.models.generate_content_stream(model="m", contents="hi"))
    fake.answer_stream(gemini.KEEPALIVE + stream + gemini.KEEPALIVE)
    assert [c.text for c in client.models.generate_content_stream(model="m", contents="hi")] == ["ok", ""]


@pytest.mark.parametrize(
    ("error", "status", "name", "sdk_error"),
    [
        (InvalidRequestError("bad"), 400, "INVALID_ARGUMENT", genai_errors.ClientError),
        (AuthenticationError("no key"), 401, "UNAUTHENTICATED", genai_errors.ClientError),
        (PermissionDeniedError("nope"), 403, "PERMISSION_DENIED", genai_errors.ClientError),
        (NotFoundError("no model"), 404, "NOT_FOUND", genai_errors.ClientError),
        (InvalidRequestError("too big", status=413), 413, "INVALID_ARGUMENT", genai_errors.ClientError),
        (RateLimitError("slow down", retry_after=2.5), 429, "RESOURCE_EXHAUSTED", genai_errors.ClientError),
        (ModelwireError("oops"), 500, "INTERNAL", genai_errors.ServerError),
        (UpstreamUnavailableError("down"), 502, "UNAVAILABLE", genai_errors.ServerError),
        (UpstreamUnavailableError("busy", status=503), 503, "UNAVAILABLE", genai_errors.ServerError),
        (UpstreamUnavailableError("overloaded", status=529), 503, "UNAVAILABLE", genai_errors.ServerError),
        (ModelwireError("slow", status=504), 504, "DEADLINE_EXCEEDED", genai_errors.ServerError),
    ],
)
def test_errors_reach_the_sdk(
    client: genai.Client,
    fake: FakeGemini,
    error: ModelwireError,
    status: int,
    name: str,
    sdk_error: type[Exception],
) -> None:
    code, doc = gemini.render_error(error)
    assert (code, doc["error"]["code"], doc["error"]["status"]) == (status, status, name)
    fake.answer_json(doc, status=code)
    with pytest.raises(sdk_error) as caught:
        client.models.generate_content(model="m", contents="hi")
    assert (caught.value.code, caught.value.status, caught.value.message) == (status, name, error.message)
    if error.retry_after:
        assert doc["error"]["details"] == [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}
        ]
