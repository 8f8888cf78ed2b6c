"""The driver's Responses over WebSocket (issue 9, section 2), against the fake upstream's
WebSocket mode over real loopback sockets.

What must hold: ``auto`` speaks WebSocket on native OpenAI, Azure ``/openai/v1`` and Codex
hosts and SSE elsewhere; follow-up turns on a live socket send only their new items plus
``previous_response_id`` (``store: false`` included), a new socket replays the whole transcript;
an early failure is retried once, then the call goes over SSE and the host stays on SSE for the
cool-down; events, usage and errors come out the same as over SSE.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

import modelwire as mw
from modelwire.observe import ChainInvalidated, FellBack, SocketOpened
from modelwire.providers.websocket import ATTEMPT_KEY, BETA, TURN_KEY
from modelwire.types import BlockDelta, Start

from .driver_fixtures import Recorder, collect, driver
from .fake_upstream import FakeUpstream, Recorded, Reply

KEY = "sk-test-key-123456"
WEATHER = mw.Tool(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL = ("get_weather", '{"city":"Paris"}')


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ws_driver(upstream: FakeUpstream, clock: Clock | None = None, **kw: Any) -> mw.OpenAI:
    kw.setdefault("transport", "auto")
    if clock is not None:
        kw["sockets"] = mw.SocketPolicy(clock=clock)
    return driver(upstream, **kw)


def frames(upstream: FakeUpstream) -> list[Recorded]:
    return [r for r in upstream.requests if r.websocket]


def kinds(record: Recorded) -> list[str]:
    return [item["type"] for item in record.body["input"]]


async def tool_loop(client: mw.OpenAI | mw.Session, turns: int = 3, **kw: Any) -> list[mw.Response]:
    """An agent's loop: each answer calls the tool, the tool answers, until a last plain answer."""
    messages = [mw.system("Use the tool."), mw.user("Weather in Paris, three times?")]
    replies = []
    if isinstance(client, mw.OpenAI):
        kw = {"model": "gpt-5.1", "tools": [WEATHER], **kw}
    for _ in range(turns):
        reply = await client.complete(messages=messages, **kw)
        replies.append(reply)
        messages += [reply.message(), *[mw.tool_result(c.id, "sunny") for c in reply.tool_calls]]
    return replies


def script_loop(upstream: FakeUpstream, turns: int = 3) -> None:
    upstream.script(
        *[Reply.tool_calls([CALL], summary=[f"thought {i}"], encrypted=f"enc-{i}") for i in range(turns - 1)],
        Reply.text("Sunny all week."),
    )


# ------------------------------------------------------------------------------ choosing a transport


async def test_auto_is_the_default_and_means_websocket_on_native_hosts(upstream: FakeUpstream) -> None:
    client = mw.OpenAI(api_key=KEY, base_url=upstream.url, host="openai")
    upstream.script(Reply.text("over a socket"))
    reply = await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert client.mode == "auto" and reply.text == "over a socket"
    frame = upstream.last
    assert frame.websocket and frame.path == "/v1/responses"
    assert frame.body["type"] == "response.create" and "stream" not in frame.body
    assert frame.headers["authorization"] == f"Bearer {KEY}"
    assert frame.headers["openai-beta"] == BETA == "responses_websockets=2026-02-06"
    assert frame.headers["user-agent"].startswith("modelwire/")
    metadata = frame.body["metadata"]
    assert len(metadata[TURN_KEY]) == 32 and metadata[ATTEMPT_KEY] == "1"
    await client.aclose()


async def test_auto_means_sse_on_compatible_hosts(upstream: FakeUpstream) -> None:
    client = driver(upstream, host="openai-compatible", transport="auto")
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert not upstream.last.websocket and upstream.last.method == "POST"
    assert "metadata" not in upstream.last.body  # no turn identity where no socket is involved
    await client.aclose()


async def test_per_call_transport_overrides_the_clients(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")], transport="sse")
    assert not upstream.last.websocket
    sse_client = driver(upstream, transport="sse")
    await collect(sse_client.stream(model="gpt-4.1", messages=[mw.user("hi")], transport="websocket"))
    assert upstream.last.websocket
    compatible = driver(upstream, host="openai-compatible")
    await compatible.complete(model="gpt-4.1", messages=[mw.user("hi")], transport="websocket")
    assert upstream.last.websocket  # asked for, so tried even where the profile does not offer it
    with pytest.raises(mw.InvalidRequestError, match="transport must be one of auto, sse, websocket"):
        await client.complete(model="gpt-4.1", messages=[mw.user("hi")], transport="pigeon")
    chat = ws_driver(upstream, api="chat")
    with pytest.raises(mw.InvalidRequestError, match="needs the Responses API"):
        await chat.complete(model="gpt-4.1", messages=[mw.user("hi")], transport="websocket")
    for each in (client, sse_client, compatible, chat):
        await each.aclose()


# ------------------------------------------------------------------------------- the same answers


async def test_websocket_and_sse_give_the_same_response_and_usage(upstream: FakeUpstream) -> None:
    reply = Reply.tool_calls(
        [CALL], text="Checking.", summary=["plan"], usage=(40, 12), cached=8, reasoning_tokens=5
    )
    upstream.script(reply, reply)
    client = ws_driver(upstream)
    over_socket = await client.complete(model="gpt-5.1", messages=[mw.user("q")], tools=[WEATHER])
    over_sse = await client.complete(
        model="gpt-5.1", messages=[mw.user("q")], tools=[WEATHER], transport="sse"
    )
    await client.aclose()
    assert [r.websocket for r in upstream.requests] == [True, False]
    assert over_socket.usage == over_sse.usage
    assert (over_socket.usage.input_tokens, over_socket.usage.cached_input_tokens) == (40, 8)
    assert over_socket.usage.reasoning_tokens == 5 and over_socket.usage.cost is not None

    def parts(response: mw.Response) -> list[Any]:  # ids differ between two responses
        return [
            (type(p).__name__, getattr(p, "text", None), getattr(p, "arguments", None))
            for p in response.content
        ]

    assert parts(over_socket) == parts(over_sse) and len(over_socket.content) == 3
    assert over_socket.stop_reason == over_sse.stop_reason == "tool_calls"


async def test_streamed_events_are_those_of_sse(upstream: FakeUpstream) -> None:
    reply = Reply.reasoning(["first", "second"], text="The answer is 42.")
    upstream.script(reply, reply)
    client = ws_driver(upstream)
    over_socket = await collect(client.stream(model="gpt-5.1", messages=[mw.user("q")]))
    over_sse = await collect(client.stream(model="gpt-5.1", messages=[mw.user("q")], transport="sse"))

    def shape(events: list[Any]) -> list[Any]:
        return [(type(e).__name__, getattr(e, "index", None), getattr(e, "text", None)) for e in events]

    assert shape(over_socket) == shape(over_sse) and len(over_socket) > 8
    assert isinstance(over_socket[0], Start) and over_socket[0].id.startswith("resp_")
    text = "".join(e.text for e in over_socket if isinstance(e, BlockDelta) and e.summary_index is None)
    assert text == "The answer is 42."
    await client.aclose()


# ---------------------------------------------------------------------------- a conversation's turns


async def test_tool_loop_follow_ups_send_only_new_items(upstream: FakeUpstream) -> None:
    script_loop(upstream)
    client = ws_driver(upstream)
    replies = await tool_loop(client)
    assert replies[-1].text == "Sunny all week."
    first, second, third = frames(upstream)
    assert first.socket == second.socket == third.socket and len(upstream.sockets) == 1
    assert first.body["store"] is False and "previous_response_id" not in first.body
    for frame, previous in ((second, replies[0]), (third, replies[1])):
        assert frame.body["previous_response_id"] == previous.id
        assert kinds(frame) == ["function_call_output"]
        assert frame.body["instructions"] == "Use the tool."  # never inherited through a chain
        assert frame.body["input"][0]["call_id"] == previous.tool_calls[0].id
    # Over SSE the same loop replays everything so far every turn.
    script_loop(upstream)
    await tool_loop(client, transport="sse")
    sse_third = upstream.requests[-1]
    assert kinds(sse_third) == [
        "message", "reasoning", "function_call", "function_call_output",
        "reasoning", "function_call", "function_call_output",
    ]  # fmt: skip
    assert len(third.raw) < 0.6 * len(sse_third.raw)
    assert len(third.raw) - len(second.raw) < 40  # a turn's frame does not grow with the transcript
    await client.aclose()


async def test_dropped_socket_is_replaced_by_a_new_one_with_the_whole_transcript(
    upstream: FakeUpstream,
) -> None:
    events = Recorder()
    script_loop(upstream, turns=2)
    client = ws_driver(upstream, on_event=events)
    messages = [mw.user("Weather?")]
    first = await client.complete(model="gpt-5.1", messages=messages, tools=[WEATHER])
    assert upstream.drop_sockets() == 1
    messages += [first.message(), mw.tool_result(first.tool_calls[0].id, "sunny")]
    second = await client.complete(model="gpt-5.1", messages=messages, tools=[WEATHER])
    assert second.text == "Sunny all week."
    replayed = upstream.last
    assert replayed.socket != upstream.requests[0].socket and len(events.of(SocketOpened)) == 2
    assert "previous_response_id" not in replayed.body
    assert kinds(replayed) == ["message", "reasoning", "function_call", "function_call_output"]
    reasoning, call = replayed.body["input"][1:3]
    assert reasoning["encrypted_content"] == "enc-0" and reasoning["id"] == first.reasoning[0].id
    assert call["call_id"] == first.tool_calls[0].id
    assert replayed.body["metadata"][ATTEMPT_KEY] == "2"  # the dead socket's try was the first
    assert not events.of(FellBack) and not client.sockets.cooldown.active
    await client.aclose()


async def test_a_session_keeps_its_socket_while_other_calls_run(upstream: FakeUpstream) -> None:
    script_loop(upstream, turns=2)
    client = ws_driver(upstream)
    async with client.session(model="gpt-5.1", tools=[WEATHER]) as session:
        messages = [mw.user("Weather?")]
        first = await session.complete(messages=messages)
        upstream.for_model("gpt-4.1", Reply.text("an unrelated answer"))
        other = await client.complete(model="gpt-4.1", messages=[mw.user("something else")])
        messages += [first.message(), mw.tool_result(first.tool_calls[0].id, "sunny")]
        streamed = await collect(session.stream(messages=messages))
    assert "".join(e.text for e in streamed if isinstance(e, BlockDelta)) == "Sunny all week."
    assert other.text == "an unrelated answer"
    turn_one, elsewhere, turn_two = frames(upstream)
    assert turn_one.socket == turn_two.socket != elsewhere.socket
    assert turn_two.body["previous_response_id"] == first.id and kinds(turn_two) == ["function_call_output"]
    assert turn_two.body["tools"][0]["name"] == "get_weather"  # the session's default
    await client.aclose()


async def test_a_session_turn_abandoned_mid_stream_leaves_the_session_usable(upstream: FakeUpstream) -> None:
    upstream.script(
        Reply.text("a long answer that nobody reads to the end", chunk_delay=0.01), Reply.text("ok")
    )
    client = ws_driver(upstream)
    async with client.session(model="gpt-4.1") as session:
        messages = [mw.user("talk")]
        async for event in session.stream(messages=messages):
            if isinstance(event, BlockDelta):
                break
        reply = await session.complete(messages=[*messages, mw.user("shorter, please")])
    assert reply.text == "ok"
    abandoned, next_turn = frames(upstream)
    assert abandoned.socket != next_turn.socket and "previous_response_id" not in next_turn.body
    await client.aclose()


async def test_a_session_runs_over_sse_where_there_is_no_socket(upstream: FakeUpstream) -> None:
    script_loop(upstream, turns=2)
    client = driver(upstream, host="openai-compatible", transport="auto")
    async with client.session(model="gpt-5.1", tools=[WEATHER]) as session:
        replies = await tool_loop(session, turns=2)
    assert replies[-1].text == "Sunny all week." and not frames(upstream)
    assert kinds(upstream.last) == ["message", "function_call", "function_call_output"]  # replayed whole
    await client.aclose()


async def test_plain_calls_continue_on_the_socket_that_remembers_them(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    talks = [[mw.user("first conversation")], [mw.user("second conversation")]]
    answers = await asyncio.gather(*[client.complete(model="gpt-4.1", messages=m) for m in talks])
    sockets = {r.body["input"][0]["content"]: r.socket for r in frames(upstream)}
    assert len(set(sockets.values())) == 2  # side by side: two sockets, both idle in the pool now
    for talk, answer in reversed(list(zip(talks, answers, strict=True))):
        await client.complete(model="gpt-4.1", messages=[*talk, answer.message(), mw.user("more")])
        frame = upstream.last
        assert frame.socket == sockets[talk[0].text] and frame.body["previous_response_id"] == answer.id
        assert frame.body["input"] == [{"type": "message", "role": "user", "content": "more"}]
    await client.aclose()


async def test_turn_identity_leaves_the_callers_metadata_alone_when_full(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")], metadata={"run": "7"})
    assert upstream.last.body["metadata"].keys() == {"run", TURN_KEY, ATTEMPT_KEY}
    full = {f"k{i}": "v" for i in range(15)}  # two more keys would pass the spec's 16
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")], metadata=full)
    assert upstream.last.body["metadata"] == full
    await client.aclose()


async def test_a_stream_cut_short_gives_its_socket_up(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.script(Reply.text("one two three four five", chunk_delay=0.01), Reply.text("next"))
    events = await collect(client.stream(model="gpt-5.1", messages=[mw.user("count")], stop=["three"]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "one two "
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    cut, fresh = frames(upstream)
    assert cut.socket != fresh.socket  # frames of the cut answer were still coming on the first
    await client.aclose()


# ------------------------------------------------------------------------------------- failures


async def test_early_failure_is_retried_once_then_sse_and_the_host_cools_down(upstream: FakeUpstream) -> None:
    clock, events = Clock(), Recorder()
    client = ws_driver(upstream, clock, on_event=events)
    upstream.refuse_upgrades(Reply.error(503), Reply.html(502))
    upstream.script(Reply.text("over SSE"))
    reply = await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert reply.text == "over SSE" and not upstream.last.websocket
    (fell,) = events.of(FellBack)
    assert isinstance(fell.error, mw.UpstreamUnavailableError) and "refused the WebSocket upgrade" in str(
        fell.error
    )
    assert fell.cooldown == 60.0 and KEY not in str(fell.error)
    assert upstream.last.body["metadata"][ATTEMPT_KEY] == "3"  # the turn's third try, same turn id
    # Degraded: SSE without trying a socket, until the cool-down ends.
    clock.now += 59
    await collect(client.stream(model="gpt-4.1", messages=[mw.user("hi")]))
    assert not upstream.last.websocket and len(events.of(SocketOpened)) == 0
    assert "metadata" not in upstream.last.body
    clock.now += 2
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert upstream.last.websocket and len(events.of(FellBack)) == 1
    await client.aclose()


async def test_an_error_before_output_is_retried_on_a_new_socket(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.script(Reply.error(500, "hiccup"), Reply.text("second time lucky"))
    events = await collect(client.stream(model="gpt-4.1", messages=[mw.user("hi")]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "second time lucky"
    failed, retried = frames(upstream)
    assert failed.socket != retried.socket and failed.body["input"] == retried.body["input"]
    assert failed.body["metadata"][TURN_KEY] == retried.body["metadata"][TURN_KEY]
    assert [failed.body["metadata"][ATTEMPT_KEY], retried.body["metadata"][ATTEMPT_KEY]] == ["1", "2"]
    assert not client.sockets.cooldown.active
    await client.aclose()


async def test_errors_of_the_request_itself_are_raised_at_once(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.script(Reply.error(400, "Invalid value for 'reasoning.effort'.", type="invalid_request_error"))
    with pytest.raises(mw.InvalidRequestError, match=r"reasoning\.effort") as caught:
        await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert caught.value.status == 400 and len(upstream.requests) == 1
    assert not client.sockets.cooldown.active
    await client.aclose()


async def test_rate_limit_event_keeps_its_retry_after(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream, transport="websocket")
    upstream.script(*[Reply.error(429, "slow down", headers={"retry-after-ms": "1500"})] * 2)
    with pytest.raises(mw.RateLimitError) as caught:
        await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert caught.value.retry_after == 1.5 and len(frames(upstream)) == 2
    await client.aclose()


async def test_forced_websocket_never_falls_back(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream, transport="websocket")
    upstream.refuse_upgrades(Reply.error(401), Reply.error(401))
    with pytest.raises(
        mw.UpstreamUnavailableError, match=r"refused the WebSocket upgrade \(HTTP 401\)"
    ) as caught:
        await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert upstream.requests == [] and KEY not in repr(caught.value)
    await client.aclose()


async def test_failure_after_output_is_a_stream_error_not_a_retry(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.script(Reply.truncated("one two three four five six", after=6))
    seen = []
    with pytest.raises(mw.UpstreamUnavailableError, match="closed the WebSocket"):
        async for event in client.stream(model="gpt-4.1", messages=[mw.user("hi")]):
            seen.append(event)
    assert any(isinstance(e, BlockDelta) for e in seen) and len(upstream.requests) == 1
    await client.aclose()


async def test_lost_chain_is_replayed_whole_on_a_new_socket(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = ws_driver(upstream, store=True, on_event=events)
    stale = mw.Message(role="assistant", content=[mw.Text(text="old answer")], id="resp_gone")
    reply = await client.complete(model="gpt-5.1", messages=[mw.user("first"), stale, mw.user("second")])
    assert reply.text
    chained, replayed = frames(upstream)
    assert chained.body["previous_response_id"] == "resp_gone"
    assert "previous_response_id" not in replayed.body and len(replayed.body["input"]) == 3
    assert replayed.socket != chained.socket
    assert [e.previous_response_id for e in events.of(ChainInvalidated)] == ["resp_gone"]
    await client.aclose()


async def test_an_old_socket_is_replaced_before_the_servers_hour_is_up(upstream: FakeUpstream) -> None:
    clock = Clock()
    client = ws_driver(upstream, clock)
    messages = [mw.user("hi")]
    first = await client.complete(model="gpt-4.1", messages=messages)
    clock.now += 55 * 60
    messages += [first.message(), mw.user("still there?")]
    await client.complete(model="gpt-4.1", messages=messages)
    old, new = frames(upstream)
    assert old.socket != new.socket and len(new.body["input"]) == 3
    assert "previous_response_id" not in new.body and new.body["metadata"][ATTEMPT_KEY] == "1"
    await client.aclose()


async def test_the_servers_connection_limit_is_met_with_a_new_socket(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    messages = [mw.user("hi")]
    first = await client.complete(model="gpt-4.1", messages=messages)
    upstream.script(
        Reply.error(400, "Connection is 60 minutes old.", code="websocket_connection_limit_reached")
    )
    messages += [first.message(), mw.user("again")]
    reply = await client.complete(model="gpt-4.1", messages=messages)
    assert reply.text
    _, limited, replayed = frames(upstream)
    assert limited.body["previous_response_id"] == first.id and "previous_response_id" not in replayed.body
    assert replayed.socket not in (limited.socket,) and len(replayed.body["input"]) == 3
    await client.aclose()


# ------------------------------------------------------------------------------------- warm-up


async def test_warm_up_primes_the_socket_the_first_turn_chains_onto(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("warm answer"))
    client = ws_driver(upstream)
    defaults = {"model": "gpt-5.1", "tools": [WEATHER], "messages": [mw.system("Be brief.")]}
    async with client.session(warmup=True, **defaults) as session:
        reply = await session.complete(messages=[mw.system("Be brief."), mw.user("hi")])
    assert reply.text == "warm answer"
    warm, turn = frames(upstream)
    assert warm.socket == turn.socket
    assert warm.body["generate"] is False and warm.body["input"] == []
    assert warm.body["instructions"] == "Be brief." and warm.body["tools"][0]["name"] == "get_weather"
    assert turn.body["previous_response_id"] and turn.body["previous_response_id"] != reply.id
    assert turn.body["input"] == [{"type": "message", "role": "user", "content": "hi"}]
    await client.aclose()


async def test_a_failed_or_slow_warm_up_is_no_error(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.refuse_upgrades(Reply.error(503))
    assert await client.warmup(model="gpt-4.1") is False
    slow = driver(upstream, transport="auto", sockets=mw.SocketPolicy(warmup_timeout=1e-6))
    assert await slow.warmup(model="gpt-4.1") is False
    assert not client.sockets.cooldown.active and not slow.sockets.cooldown.active
    assert await client.warmup(model="gpt-4.1") is True
    await client.complete(model="gpt-4.1", messages=[mw.user("hi")])
    assert [r.socket for r in frames(upstream)] == [upstream.sockets[-1]] * 2
    for each in (client, slow):
        await each.aclose()


# -------------------------------------------------------------------------------- Azure and Codex


async def test_azure_v1_speaks_websocket_and_classic_azure_sse(upstream: FakeUpstream) -> None:
    v1 = mw.OpenAI(api_key="azure-key", base_url=upstream.root + "/openai/v1", host="azure")
    await v1.complete(model="my-deployment", messages=[mw.user("hi")])
    frame = upstream.last
    assert (
        frame.websocket and frame.path == "/openai/v1/responses" and frame.headers["api-key"] == "azure-key"
    )
    classic = mw.OpenAI(
        api_key="azure-key", base_url=upstream.root, host="azure", api_version="2025-04-01-preview"
    )
    await classic.complete(model="my-deployment", messages=[mw.user("hi")])
    assert not upstream.last.websocket and upstream.last.path == "/openai/responses"
    await classic.complete(model="my-deployment", messages=[mw.user("hi")], transport="websocket")
    assert upstream.last.websocket and upstream.last.query == {"api-version": "2025-04-01-preview"}
    for each in (v1, classic):
        await each.aclose()


async def test_codex_speaks_websocket_with_its_own_headers(
    upstream: FakeUpstream, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    access = _jwt(
        {"https://api.openai.com/auth": {"chatgpt_account_id": "acct-9"}, "exp": int(time.time()) + 3600}
    )
    tokens = {"access_token": access, "refresh_token": "rt", "id_token": access}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (home / "auth.json").write_text(json.dumps({"tokens": tokens, "last_refresh": stamp}))
    monkeypatch.setenv("CODEX_HOME", str(home))
    client = mw.OpenAI(host="codex", base_url=upstream.url, api_key="")
    upstream.script(Reply.text("from codex"))
    reply = await client.complete(
        model="gpt-5.5", messages=[mw.user("q")], temperature=0.2, metadata={"run": "1"}
    )
    assert reply.text == "from codex"
    frame = upstream.last
    assert frame.websocket
    assert frame.headers["authorization"] == f"Bearer {access}"
    assert frame.headers["chatgpt-account-id"] == "acct-9" and frame.headers["openai-beta"] == BETA
    assert frame.body["store"] is False and frame.body["instructions"]
    assert not {"temperature", "metadata", "stream"} & set(frame.body)  # Codex refuses metadata
    await client.aclose()


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


# ----------------------------------------------------------------------------- without a loop


def test_sync_calls_open_and_close_their_sockets(upstream: FakeUpstream) -> None:
    client = ws_driver(upstream)
    upstream.script(Reply.text("one"), Reply.text("two"))
    assert client.complete_sync(model="gpt-4.1", messages="hi").text == "one"
    events = list(client.stream_sync(model="gpt-4.1", messages=[mw.user("hi")]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "two"
    assert all(r.websocket for r in upstream.requests) and len(upstream.sockets) == 2
