"""Driver behaviour 3: host kinds (native OpenAI, OpenAI-compatible, Azure, Codex)."""

from __future__ import annotations

import pytest

import modelwire as mw
from modelwire.providers.hosts import Host, detect_kind
from modelwire.providers.planning import prompt_cache_key
from modelwire.providers.strict import strict_schema

from .driver_fixtures import driver
from .fake_upstream import FakeUpstream, Reply

TOOLS = [mw.Tool(name="search", parameters={"type": "object", "properties": {"q": {"type": "string"}}})]


async def test_native_openai_fields(upstream: FakeUpstream) -> None:
    client = driver(upstream, host="openai")
    await client.complete(
        model="gpt-5.1",
        messages=[mw.system("Be brief."), mw.user("hi")],
        tools=TOOLS,
        service_tier="fast",
        prompt_cache_retention="24h",
    )
    body = upstream.last.body
    assert body["store"] is False  # the library replays transcripts unless asked to store
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["service_tier"] == "priority"  # "fast" means the priority tier
    assert body["prompt_cache_key"].startswith("mw-") and len(body["prompt_cache_key"]) <= 64
    assert body["prompt_cache_retention"] == "24h"
    assert body["instructions"] == "Be brief."
    assert body["context_management"] == [{"type": "compaction", "compact_threshold": 280_000}]  # 70% of 400k
    await client.aclose()


def test_prompt_cache_key_is_derived_from_stable_inputs() -> None:
    base = mw.Request(model="gpt-5.1", messages=[mw.system("rules"), mw.user("question one")], tools=TOOLS)
    same = mw.Request(
        model="gpt-5.1", messages=[mw.system("rules"), mw.user("another question")], tools=TOOLS
    )
    other_tools = mw.Request(model="gpt-5.1", messages=[mw.system("rules"), mw.user("q")], tools=[])
    other_model = mw.Request(model="gpt-5.2", messages=[mw.system("rules"), mw.user("q")], tools=TOOLS)
    assert prompt_cache_key(base) == prompt_cache_key(same)
    assert len({prompt_cache_key(base), prompt_cache_key(other_tools), prompt_cache_key(other_model)}) == 3


async def test_callers_cache_key_wins_and_compaction_can_be_off(upstream: FakeUpstream) -> None:
    client = driver(upstream, compaction=False)
    await client.complete(model="my-new-model", messages=[mw.user("hi")], prompt_cache_key="mine")
    body = upstream.last.body
    assert body["prompt_cache_key"] == "mine"
    assert "context_management" not in body
    client = driver(upstream)
    await client.complete(model="my-new-model", messages=[mw.user("hi")])
    assert upstream.last.body["context_management"][0]["compact_threshold"] == 80_000  # unknown window
    await client.aclose()


async def test_effort_none_only_where_accepted(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    await client.complete(model="gpt-5.1", messages=[mw.user("q")], reasoning_effort="none")
    assert upstream.last.body["reasoning"] == {"effort": "none"}
    await client.complete(model="gpt-5", messages=[mw.user("q")], reasoning_effort="none")
    assert upstream.last.body["reasoning"] == {"effort": "minimal"}
    await client.aclose()


async def test_strict_tool_schemas_on_native_hosts(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    tool = mw.Tool(
        name="book",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "nights": {"type": "integer"}},
            "required": ["city"],
        },
        strict=True,
    )
    await client.complete(model="gpt-4.1", messages=[mw.user("q")], tools=[tool])
    sent = upstream.last.body["tools"][0]
    assert sent["strict"] is True
    assert sent["parameters"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "nights": {"type": ["integer", "null"]}},
        "required": ["city", "nights"],
        "additionalProperties": False,
    }
    assert (
        tool.strict is True and tool.parameters is not None and "additionalProperties" not in tool.parameters
    )
    await client.aclose()


def test_schemas_that_cannot_be_strict() -> None:
    assert strict_schema({"type": "object", "additionalProperties": {"type": "string"}}) is None
    nested = strict_schema(
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"n": {"type": "number"}}},
                }
            },
        }
    )
    assert nested is not None
    inner = (
        nested["properties"]["items"]["anyOf"][0]["items"]
        if "anyOf" in nested["properties"]["items"]
        else (nested["properties"]["items"]["items"])
    )
    assert inner["additionalProperties"] is False and inner["required"] == ["n"]


async def test_openai_compatible_is_stateless_and_plain(upstream: FakeUpstream) -> None:
    upstream.extra_fields.add("top_k")  # a vLLM-style extension the official schema lacks
    client = driver(upstream, host="openai-compatible", api="chat", extra_body={"top_k": 20})
    await client.complete(
        model="qwen3",
        messages=[mw.developer("rules"), mw.user("q")],
        max_output_tokens=50,
        service_tier="priority",
        user="u1",
        store=True,
        prompt_cache_key="k",
    )
    body = upstream.last.body
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body
    assert not {"service_tier", "store", "prompt_cache_key", "safety_identifier"} & set(body)
    assert body["user"] == "u1"
    assert body["messages"][0]["role"] == "system"  # compatible servers often lack "developer"
    assert body["top_k"] == 20  # extra_body passes through
    client = driver(upstream, host="openai-compatible", api="responses")
    await client.complete(model="qwen3", messages=[mw.user("q")])
    body = upstream.last.body
    assert not {"store", "include", "context_management", "prompt_cache_key"} & set(body)
    await client.aclose()


async def test_azure_classic_deployment_paths(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_VERSION", raising=False)
    client = driver(upstream, host="azure", api="chat", base_url=upstream.root)
    await client.complete(model="my-gpt41", messages=[mw.user("q")])
    last = upstream.last
    assert last.path == "/openai/deployments/my-gpt41/chat/completions"
    assert last.query == {"api-version": "2024-12-01-preview"}
    assert last.headers["api-key"] == "sk-test-key-123456" and "authorization" not in last.headers
    client = driver(upstream, host="azure", api="responses", base_url=upstream.root + "/openai")
    await client.complete(model="my-gpt41", messages=[mw.user("q")])
    assert upstream.last.path == "/openai/responses"
    assert upstream.last.query["api-version"] >= "2025-03-01"  # Responses needs a newer api-version
    await client.aclose()


async def test_azure_api_version_from_environment(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2025-04-01-preview")
    client = driver(upstream, host="azure", api="chat", base_url=upstream.root)
    await client.complete(model="dep", messages=[mw.user("q")])
    assert upstream.last.query == {"api-version": "2025-04-01-preview"}
    await client.aclose()


async def test_a_key_changed_on_the_client_goes_with_its_next_call(upstream: FakeUpstream) -> None:
    """Each call's headers are made once per key, not once per client: a key rotated by setting
    ``api_key`` is the one the next call sends, and each model keeps its own URL."""
    client = driver(upstream, api="chat")
    await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert upstream.last.headers["authorization"] == "Bearer sk-test-key-123456"
    client.api_key = "sk-rotated-key-654321"
    await client.complete(model="gpt-4.1-mini", messages=[mw.user("q")])
    assert upstream.last.headers["authorization"] == "Bearer sk-rotated-key-654321"
    assert upstream.last.body["model"] == "gpt-4.1-mini"
    await client.aclose()


async def test_azure_v1_path(upstream: FakeUpstream) -> None:
    client = driver(upstream, host="azure", api="responses", base_url=upstream.root + "/openai/v1")
    await client.complete(model="dep", messages=[mw.user("q")])
    assert upstream.last.path == "/openai/v1/responses" and upstream.last.query == {}
    assert upstream.last.headers["api-key"] == "sk-test-key-123456"
    await client.aclose()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://contoso.openai.azure.com", "azure"),
        ("https://contoso.services.ai.azure.com/openai/v1", "azure"),
        ("https://contoso.cognitiveservices.azure.com", "azure"),
        ("https://chatgpt.com/backend-api/codex", "codex"),
        ("http://127.0.0.1:11434/v1", "openai-compatible"),
    ],
)
def test_host_kind_is_recognised(url: str, kind: str) -> None:
    assert detect_kind(url) == kind
    assert Host.create(None, url).kind == kind


async def test_chat_falls_back_to_responses_for_responses_only_models(upstream: FakeUpstream) -> None:
    client = driver(upstream, api="chat")
    await client.complete(model="gpt-5.1-codex", messages=[mw.user("q")])
    assert upstream.last.path == "/v1/responses"
    await client.complete(model="gpt-5.4", messages=[mw.user("q")], tools=TOOLS, reasoning_effort="high")
    assert upstream.last.path == "/v1/responses"  # gpt-5.4 takes tools on Chat only with effort none
    await client.complete(model="gpt-5.4", messages=[mw.user("q")], tools=TOOLS, reasoning_effort="none")
    assert upstream.last.path == "/v1/chat/completions"
    await client.aclose()


async def test_codex_route_uses_chatgpt_tokens(
    upstream: FakeUpstream, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import json
    import time
    from pathlib import Path

    def jwt(claims: dict[str, object]) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJub25lIn0.{raw}.sig"

    home = Path(str(tmp_path))
    access = jwt({"exp": time.time() + 3600})
    id_token = jwt({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-123"}})
    (home / "auth.json").write_text(
        json.dumps(
            {
                "tokens": {"access_token": access, "refresh_token": "rt", "id_token": id_token},
                "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    monkeypatch.setenv("CODEX_HOME", str(home))
    client = mw.OpenAI(host="codex", base_url=upstream.url, api_key="", transport="sse")
    upstream.script(Reply.text("from codex"))
    reply = await client.complete(
        model="gpt-5.5", messages=[mw.user("q")], temperature=0.2, max_output_tokens=99
    )
    assert reply.text == "from codex"
    last = upstream.last
    assert last.headers["authorization"] == f"Bearer {access}"
    assert last.headers["chatgpt-account-id"] == "acct-123"
    assert last.headers["originator"] == "codex_cli_rs"
    body = last.body
    assert body["stream"] is True and body["store"] is False
    assert not {"temperature", "max_output_tokens", "context_management"} & set(body)
    assert body["instructions"]
    await client.aclose()
