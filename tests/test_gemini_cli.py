"""Gemini CLI against the gateway, pointed the way the README says: ``GOOGLE_GEMINI_BASE_URL`` and
the client key in ``GEMINI_API_KEY``, headless (``gemini -p``). Headless runs refuse the auth type
that the base URL alone selects, so the CLI's settings pick the API-key one (which still takes
the base URL from the environment).

The client is the real Gemini CLI (``tests/clients``, installed by ``make test``), its upstream the
fake, which validates every request against the vendors' specs. A preloaded module notes every
``fetch`` and every TCP connection the CLI makes, so each test also shows it reached nothing but
the gateway (no Google host, no telemetry, no update check) and got no failing answer there.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, start_gateway

GEMINI = Path(__file__).parent / "clients" / "node_modules" / ".bin" / "gemini"
GEMINI_UPSTREAM_KEY = "AIza-up-gemini-cli-00000001"
# A 1x1 PNG, for a prompt that references an image.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="

# Loaded into the CLI with --import: a line per fetch (method, URL, status) and per connection.
TRACER = """
import fs from "node:fs";
import net from "node:net";
const note = (line) => fs.appendFileSync(process.env.MODELWIRE_TRACE, line + "\\n");
const realFetch = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  if (url.startsWith("data:")) return realFetch(input, init);
  const method = (init && init.method) || (input && input.method) || "GET";
  try {
    const reply = await realFetch(input, init);
    note(`fetch ${method} ${url} ${reply.status}`);
    return reply;
  } catch (err) {
    note(`fetch ${method} ${url} failed`);
    throw err;
  }
};
const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0];
  const options = typeof first === "object" && first !== null ? first : { port: first, host: args[1] };
  note(`connect ${options.host ?? options.path}:${options.port ?? ""}`);
  return realConnect.apply(this, args);
};
"""

# No telemetry, usage statistics (Clearcut), update checks, IDE companion or sandbox; the API-key
# auth type (what the base URL alone picks, "gateway", is refused headless).
SETTINGS = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "ide": {"enabled": False},
    "tools": {"sandbox": False},
}


# What the CLI must not take from the environment the tests run in: Google credentials, projects
# and endpoints, its own settings, telemetry exporters, proxies (the gateway is on loopback).
INHERITED_NOT = (
    "GOOGLE_",
    "GEMINI_",
    "CLOUD_SHELL",
    "OTEL_",
    "NODE_OPTIONS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The shared routes plus a Gemini backend, and Gemini CLI's own model names sent to Chat."""
    tmp = tmp_path_factory.mktemp("gateway")
    config = base_config(upstream_server, tmp)
    # Keep-alives only after 5 s: the first answer to the CLI's large request can take over a
    # second here, and an upstream error must reach the CLI as a status, not inside a 200 stream
    # (which the CLI takes for a broken stream and sends again).
    config["server"]["keepalive_seconds"] = 5
    config["backends"]["gem"] = {
        "type": "gemini",
        "base_url": upstream_server.root,
        "api_keys": [GEMINI_UPSTREAM_KEY],
    }
    config["models"] = [
        {"name": "gem-model", "route": "gem/gemini-2.5-flash"},
        {"match": "^gemini-", "route": "compat/gpt-4.1"},
        *config["models"],
    ]
    running = start_gateway(config, tmp, name="gemini-cli-gateway")
    try:
        yield running
    finally:
        running.stop()


class Cli:
    """Runs ``gemini -p`` in an isolated home against the gateway."""

    def __init__(self, root: Path, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.home = root / "home"
        (self.home / ".gemini").mkdir(parents=True)
        (self.home / ".gemini" / "settings.json").write_text(json.dumps(SETTINGS))
        self.workdir = root / "work"
        self.workdir.mkdir()
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.tracer = root / "tracer.mjs"
        self.tracer.write_text(TRACER)
        self.trace_path = root / "trace.txt"

    def run(
        self, prompt: str, *args: str, key: str = CLIENT_KEY, output: str = "json"
    ) -> subprocess.CompletedProcess[str]:
        env = {
            name: value for name, value in os.environ.items() if not name.upper().startswith(INHERITED_NOT)
        }
        env.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmp),
            GEMINI_API_KEY=key,
            GOOGLE_GEMINI_BASE_URL=self.gateway.url,
            GEMINI_CLI_TRUST_WORKSPACE="true",
            NO_COLOR="1",
            NODE_OPTIONS=f"--import={self.tracer.as_uri()}",
            MODELWIRE_TRACE=str(self.trace_path),
        )
        command = [str(GEMINI), "-p", prompt, "--output-format", output, *args]
        return subprocess.run(command, env=env, cwd=self.workdir, capture_output=True, text=True, timeout=90)

    def trace(self) -> list[str]:
        return self.trace_path.read_text().splitlines() if self.trace_path.exists() else []

    def fetches(self) -> list[tuple[str, str, str]]:
        """(method, path and query, status) of each fetch, all of them to the gateway."""
        found = []
        for line in self.trace():
            if line.startswith("fetch "):
                _, method, url, status = line.split(" ")
                assert url.startswith(self.gateway.url + "/"), line
                found.append((method, url[len(self.gateway.url) :], status))
        return found

    def assert_only_the_gateway_was_reached(self) -> None:
        port = self.gateway.url.rsplit(":", 1)[1]
        connections = [line for line in self.trace() if line.startswith("connect ")]
        assert connections and set(connections) == {f"connect 127.0.0.1:{port}"}, self.trace()
        log = self.gateway.log()
        assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture
def cli(tmp_path: Path, gateway: RunningGateway, upstream: FakeUpstream) -> Cli:
    return Cli(tmp_path, gateway)


def answer(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr + result.stdout
    document: dict[str, Any] = json.loads(result.stdout)
    assert "error" not in document, document
    return document


def generations(upstream: FakeUpstream) -> list[Any]:
    return [r for r in upstream.requests if r.body is not None]


def test_gemini_upstream_passthrough(cli: Cli, upstream: FakeUpstream) -> None:
    """A Gemini route: the CLI's streamed generateContent reaches the Gemini upstream as such, with
    the gateway's upstream key, and the scripted answer comes back."""
    upstream.script(Reply.text("Straight through to Gemini."))
    result = cli.run("say hello", "-m", "gem-model")
    assert answer(result)["response"] == "Straight through to Gemini."
    (sent,) = generations(upstream)
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert sent.query.get("alt") == "sse"
    assert sent.headers.get("x-goog-api-key") == GEMINI_UPSTREAM_KEY
    assert sent.body["contents"][-1]["parts"][-1]["text"].endswith("say hello")
    assert cli.fetches() == [("POST", "/v1beta/models/gem-model:streamGenerateContent?alt=sse", "200")]
    cli.assert_only_the_gateway_was_reached()


@pytest.mark.parametrize("model", ["chat-model", "resp-model"])
def test_translated_upstream_streams_the_answer(cli: Cli, upstream: FakeUpstream, model: str) -> None:
    """A Chat route and a Responses route: the CLI's streamGenerateContent goes out as a streamed
    Chat Completions / Responses request, and the answer comes back to the CLI word by word."""
    upstream.script(Reply.text("one two three four five six", usage=(21, 6)))
    result = cli.run("count to six", "-m", model, output="stream-json")
    assert result.returncode == 0, result.stderr + result.stdout
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    deltas = [e["content"] for e in events if e["type"] == "message" and e.get("delta")]
    assert "".join(deltas) == "one two three four five six" and len(deltas) >= 3, events
    (done,) = [e for e in events if e["type"] == "result"]
    assert done["status"] == "success" and done["stats"]["input_tokens"] == 21, done
    (sent,) = generations(upstream)
    assert sent.body["stream"] is True
    if model == "chat-model":
        assert sent.path == "/v1/chat/completions"
        assert (
            sent.body["messages"][0]["role"] == "system"
            and "Gemini CLI" in sent.body["messages"][0]["content"]
        )
        assert sent.body["messages"][-1]["role"] == "user"
    else:
        assert sent.path == "/v1/responses"
        assert "Gemini CLI" in sent.body["instructions"]
    tools = {
        t["function"]["name"] if "function" in t else t["name"]: t.get("function", t)
        for t in sent.body["tools"]
    }
    assert "file_path" in tools["read_file"]["parameters"]["properties"], tools.get("read_file")
    assert cli.fetches() == [("POST", f"/v1beta/models/{model}:streamGenerateContent?alt=sse", "200")]
    cli.assert_only_the_gateway_was_reached()


@pytest.mark.parametrize("model", ["chat-model", "reasoner", "gem-model"])
def test_tool_round_trip(cli: Cli, upstream: FakeUpstream, model: str) -> None:
    """The model asks the CLI to read a file in its work dir; the CLI runs its read_file tool and
    sends the file's content back as a function response, which reaches the upstream answering
    that call; the final answer is printed. Over Chat; over Responses with encrypted reasoning
    (replayed on the second turn from the thought signature the CLI kept); over Gemini with a
    thought signature, which the fake accepts back only byte for byte."""
    (cli.workdir / "marker.txt").write_text("tool-output-marker-7781\n")
    path = json.dumps({"file_path": "marker.txt"})
    thinking: dict[str, Any] = {} if model == "chat-model" else {"summary": ["Read it first."]}
    if model == "reasoner":
        thinking["encrypted"] = "enc-gemini-cli-1"
    upstream.script(
        Reply.tool_calls([("read_file", path)], **thinking), Reply.text("The file holds the marker.")
    )
    document = answer(cli.run("read marker.txt", "-m", model))
    assert document["response"] == "The file holds the marker."
    assert document["stats"]["tools"]["byName"]["read_file"]["success"] == 1, document["stats"]["tools"]
    first, second = generations(upstream)
    assert first.path == second.path  # both turns on the route's own wire
    if model == "chat-model":
        messages = second.body["messages"]
        (call,) = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
        assert call["tool_calls"][0]["function"]["name"] == "read_file"
        assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"file_path": "marker.txt"}
        (output,) = [m for m in messages if m["role"] == "tool"]
        assert output["tool_call_id"] == call["tool_calls"][0]["id"]
        assert "tool-output-marker-7781" in output["content"]
    elif model == "reasoner":
        items = second.body["input"]
        (called,) = [i for i in items if i.get("type") == "function_call"]
        (output,) = [i for i in items if i.get("type") == "function_call_output"]
        assert called["name"] == "read_file" and output["call_id"] == called["call_id"]
        assert "tool-output-marker-7781" in json.dumps(output["output"])
        replayed = [i["encrypted_content"] for i in items if i.get("type") == "reasoning"]
        assert replayed == ["enc-gemini-cli-1"]
    else:
        parts = [p for content in second.body["contents"] for p in content["parts"]]
        (called,) = [p for p in parts if "functionCall" in p]
        (output,) = [p for p in parts if "functionResponse" in p]
        assert called["functionCall"]["name"] == "read_file"
        assert called["functionCall"]["args"] == {"file_path": "marker.txt"}
        assert called.get("thoughtSignature"), called  # minted by the fake: checked by the upstream fixture
        assert output["functionResponse"]["name"] == "read_file"
        assert output["functionResponse"].get("id") == called["functionCall"].get("id")
        assert "tool-output-marker-7781" in json.dumps(output["functionResponse"]["response"])
    assert len(cli.fetches()) == 2 and {status for _, _, status in cli.fetches()} == {"200"}
    cli.assert_only_the_gateway_was_reached()


def test_wrong_client_key(cli: Cli, upstream: FakeUpstream) -> None:
    """A key the gateway does not know: the CLI fails with the gateway's 401, and nothing reaches
    the upstream (nor is retried)."""
    upstream.script(Reply.text("must not be used"))
    result = cli.run("say hello", "-m", "chat-model", key="sk-not-a-client-key-000")
    assert result.returncode != 0
    report = json.loads(result.stderr[result.stderr.rindex("\n{\n") + 1 :])
    assert report["error"]["code"] == 401, report
    assert json.loads(report["error"]["message"])["error"]["status"] == "UNAUTHENTICATED"
    assert upstream.requests == []
    assert cli.fetches() == [("POST", "/v1beta/models/chat-model:streamGenerateContent?alt=sse", "401")]
    cli.assert_only_the_gateway_was_reached()


def test_default_model_routing(cli: Cli, upstream: FakeUpstream) -> None:
    """No ``-m``: the CLI first asks a flash-lite model to rate the prompt's complexity, with a
    JSON schema in Google's upper-case types (which the gateway makes standard for OpenAI), then
    sends the prompt to the model its router picked. Both are Gemini model names, routed to Chat."""
    rating = json.dumps({"complexity_reasoning": "A greeting.", "complexity_score": 5})
    upstream.script(Reply.text(rating), Reply.text("Hello from the routed model."))
    assert answer(cli.run("say hello"))["response"] == "Hello from the routed model."
    classify, main = generations(upstream)
    schema = classify.body["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "object" and schema["properties"]["complexity_score"]["type"] == "integer"
    assert "stream" not in classify.body and main.body["stream"] is True
    (rated, routed) = cli.fetches()
    assert rated[0] == "POST" and rated[2] == "200"
    assert rated[1].startswith("/v1beta/models/gemini-") and rated[1].endswith("flash-lite:generateContent")
    assert routed[1].startswith("/v1beta/models/gemini-") and routed[1].endswith(
        ":streamGenerateContent?alt=sse"
    )
    assert routed[2] == "200"
    cli.assert_only_the_gateway_was_reached()


def test_image_reference_counts_tokens_then_reaches_chat(cli: Cli, upstream: FakeUpstream) -> None:
    """``@dot.png`` in the prompt: the CLI inlines the image and, since the request has media, first
    asks the gateway's countTokens (answered by the gateway, nothing upstream), then streams the
    request, whose image reaches the Chat upstream as a data URL."""
    (cli.workdir / "dot.png").write_bytes(base64.b64decode(PNG))
    upstream.script(Reply.text("A single dot."))
    assert answer(cli.run("describe @dot.png", "-m", "chat-model"))["response"] == "A single dot."
    assert cli.fetches() == [
        ("POST", "/v1beta/models/chat-model:countTokens", "200"),
        ("POST", "/v1beta/models/chat-model:streamGenerateContent?alt=sse", "200"),
    ]
    (sent,) = generations(upstream)
    assert sent.path == "/v1/chat/completions"
    parts = [p for m in sent.body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert images == [f"data:image/png;base64,{PNG}"]
    cli.assert_only_the_gateway_was_reached()


def test_upstream_error_reaches_the_cli(cli: Cli, upstream: FakeUpstream) -> None:
    """The Responses upstream refuses the request (400): the CLI gets it as the status of its
    stream request, in Google's error shape with the upstream's message, reports it and does not
    send it again."""
    upstream.script(Reply.error(400, "context too long for this model"))
    result = cli.run("say hello", "-m", "resp-model")
    assert result.returncode != 0
    report = json.loads(result.stderr[result.stderr.rindex("\n{\n") + 1 :])
    assert report["error"]["code"] == 400, report
    error = json.loads(report["error"]["message"])["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "context too long" in error["message"], error
    assert [r.path for r in upstream.requests] == ["/v1/responses"]
    assert cli.fetches() == [("POST", "/v1beta/models/resp-model:streamGenerateContent?alt=sse", "400")]
    cli.assert_only_the_gateway_was_reached()
