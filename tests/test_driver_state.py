"""Driver behaviours 4, 5 and 6: reasoning across turns, continuation of cut-off answers,
repair of broken tool sequences."""

from __future__ import annotations

import pytest

import modelwire as mw
from modelwire.observe import ChainInvalidated, Continued, Repaired
from modelwire.types import BlockDelta, Finish

from .driver_fixtures import Recorder, collect, driver
from .fake_upstream import FakeUpstream, Reply

WEATHER = mw.Tool(
    name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}}
)


# ------------------------------------------------------------------------------ 4. reasoning survives


async def test_stateless_reasoning_is_replayed_before_the_assistant_message(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(
        Reply.tool_calls(
            [("get_weather", '{"city":"Paris"}')], summary=["thinking about weather"], encrypted="enc-1"
        )
    )
    messages = [mw.user("Weather in Paris?")]
    first = await client.complete(model="gpt-5.1", messages=messages, tools=[WEATHER])
    assert upstream.requests[0].body["include"] == ["reasoning.encrypted_content"]
    (reasoning,) = first.reasoning
    assert reasoning.data == "enc-1" and reasoning.id and reasoning.summary == ["thinking about weather"]
    assert reasoning.dialect == "openai_responses"
    messages.append(first.message())
    messages += [mw.tool_result(c.id, "sunny") for c in first.tool_calls]
    await client.complete(model="gpt-5.1", messages=messages, tools=[WEATHER])
    items = upstream.last.body["input"]
    kinds = [i.get("type") for i in items]
    assert kinds == ["message", "reasoning", "function_call", "function_call_output"]
    assert items[1] == {
        "type": "reasoning",
        "id": reasoning.id,
        "encrypted_content": "enc-1",
        "summary": [{"type": "summary_text", "text": "thinking about weather"}],
    }
    await client.aclose()


async def test_orphan_reasoning_is_dropped(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    orphan = mw.Reasoning(id="rs_orphan", data="enc", dialect="openai_responses")
    foreign = mw.Reasoning(id="x", data="sig", dialect="anthropic_messages")
    messages = [mw.user("a"), mw.assistant("answer", orphan), mw.assistant(foreign, "b"), mw.user("c")]
    await client.complete(model="gpt-5.1", messages=messages)
    sent = upstream.last.body["input"]
    assert all(i.get("type") != "reasoning" for i in sent)
    await client.aclose()


async def test_stateful_chaining_sends_only_new_input(upstream: FakeUpstream) -> None:
    client = driver(upstream, store=True)
    messages = [mw.system("Be terse."), mw.user("first")]
    first = await client.complete(model="gpt-5.1", messages=messages)
    assert upstream.last.body["store"] is True and "include" not in upstream.last.body
    messages += [first.message(), mw.user("second")]
    await client.complete(model="gpt-5.1", messages=messages)
    body = upstream.last.body
    assert body["previous_response_id"] == first.id
    assert body["instructions"] == "Be terse."  # instructions are not inherited through a chain
    assert body["input"] == [{"type": "message", "role": "user", "content": "second"}]
    await client.aclose()


async def test_lost_chain_is_replayed_once_with_an_event(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = driver(upstream, store=True, on_event=events)
    stale = mw.Message(role="assistant", content=[mw.Text(text="old answer")], id="resp_gone")
    messages = [mw.user("first"), stale, mw.user("second")]
    reply = await client.complete(model="gpt-5.1", messages=messages)
    assert reply.text
    chained, replayed = upstream.requests[-2].body, upstream.requests[-1].body
    assert chained["previous_response_id"] == "resp_gone"
    assert "previous_response_id" not in replayed
    assert [i["content"] for i in replayed["input"]] == ["first", "old answer", "second"]
    assert [e.previous_response_id for e in events.of(ChainInvalidated)] == ["resp_gone"]
    await client.aclose()


async def test_lost_chain_in_a_stream_is_replayed_too(upstream: FakeUpstream) -> None:
    client = driver(upstream, store=True)
    messages = [
        mw.user("first"),
        mw.Message(role="assistant", content=[mw.Text(text="x")], id="resp_gone"),
        mw.user("second"),
    ]
    upstream.script(Reply.error(404, "gone", code="previous_response_not_found"), Reply.text("fresh"))
    events = await collect(client.stream(model="gpt-5.1", messages=messages))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "fresh"
    await client.aclose()


# ---------------------------------------------------------------------------------- 5. continuation


async def test_cut_off_answer_is_continued_and_merged(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = driver(upstream, on_event=events)
    upstream.script(
        Reply.incomplete("The first half, ", usage=(10, 100)),
        Reply.incomplete("the second half, ", usage=(30, 100)),
        Reply.text("and the end.", usage=(50, 20)),
    )
    reply = await client.complete(model="gpt-4.1", messages=[mw.user("long story")])
    assert reply.text == "The first half, the second half, and the end."
    assert reply.stop_reason == "stop"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (90, 220)
    assert [e.count for e in events.of(Continued)] == [1, 2]
    second = upstream.requests[1].body["input"]
    assert second[-1] == {"type": "message", "role": "assistant", "content": "The first half, "}
    await client.aclose()


async def test_continuation_carries_reasoning_forward(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.incomplete("partial"), Reply.text(" done"))
    reasoning = mw.Reasoning(id="rs_1", data="enc", summary=["s"], dialect="openai_responses")
    # A reasoning item in the cut-off output must travel forward with its message.
    first = mw.Response(
        id="resp_1", model="gpt-5.1", content=[reasoning, mw.Text(text="partial")], stop_reason="length"
    )
    planner = client.planner
    plan = planner.plan(mw.Request(model="gpt-5.1", messages=[mw.user("q")]), {}, stream=False)
    items = planner.body(planner.continuation(plan, first))["input"]
    assert [i["type"] for i in items] == ["message", "reasoning", "message"]
    await client.aclose()


async def test_continuation_is_bounded_and_configurable(upstream: FakeUpstream) -> None:
    client = driver(upstream, continuations=2)
    upstream.script(*[Reply.incomplete(f"part{i} ") for i in range(5)])
    reply = await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert reply.text == "part0 part1 part2 " and reply.stop_reason == "length"
    assert len(upstream.requests) == 3
    upstream.reset()
    off = driver(upstream, continuations=0)
    upstream.script(Reply.incomplete("cut"))
    assert (await off.complete(model="gpt-4.1", messages=[mw.user("q")])).stop_reason == "length"
    assert len(upstream.requests) == 1
    await client.aclose()
    await off.aclose()


async def test_continuation_chains_by_id_when_stored(upstream: FakeUpstream) -> None:
    client = driver(upstream, store=True)
    upstream.script(Reply.incomplete("one "), Reply.text("two"))
    reply = await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert reply.text == "one two"
    second = upstream.requests[1].body
    assert second["previous_response_id"].startswith("resp_")
    assert second["input"] == []
    await client.aclose()


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_streamed_continuation(upstream: FakeUpstream, api: str) -> None:
    events_seen = Recorder()
    client = driver(upstream, api=api, on_event=events_seen)
    upstream.script(Reply.incomplete("alpha beta ", usage=(5, 7)), Reply.text("gamma", usage=(9, 2)))
    events = await collect(client.stream(model="gpt-4.1", messages=[mw.user("q")]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "alpha beta gamma"
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.stop_reason == "stop"
    assert finish.usage is not None and (finish.usage.input_tokens, finish.usage.output_tokens) == (14, 9)
    assert len(events_seen.of(Continued)) == 1
    indices = [e.index for e in events if isinstance(e, BlockDelta)]
    assert indices == sorted(indices) and len(set(indices)) == 2  # the continuation opens a new block
    await client.aclose()


async def test_cut_off_tool_calls_are_not_continued(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    cut = mw.Response(
        id="r", model="m", content=[mw.ToolCall(id="c", name="f", arguments="{}")], stop_reason="length"
    )
    assert not client.planner.should_continue(cut, 0)
    await client.aclose()


# ---------------------------------------------------------------------------------------- 6. repair


@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_missing_tool_result_is_repaired_on_the_wire(upstream: FakeUpstream, api: str) -> None:
    events = Recorder()
    client = driver(upstream, api=api, on_event=events)
    messages = [
        mw.user("weather?"),
        mw.assistant(
            mw.ToolCall(id="call_a", name="get_weather", arguments="{}"),
            mw.ToolCall(id="call_b", name="get_time", arguments="{}"),
        ),
        mw.tool_result("call_b", "noon"),
        mw.user("well?"),
    ]
    await client.complete(model="gpt-4.1", messages=messages, tools=[WEATHER])
    body = upstream.last.body
    if api == "responses":
        outputs = [i for i in body["input"] if i.get("type") == "function_call_output"]
        assert [o["call_id"] for o in outputs] == ["call_a", "call_b"]
        text = outputs[0]["output"]
    else:
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        assert [t["tool_call_id"] for t in tools] == ["call_a", "call_b"]
        text = tools[0]["content"]
    assert "[SYSTEM ERROR: Tool result missing for tool 'get_weather' (call id call_a)" in text
    (report,) = events.of(Repaired)
    assert report.missing == [("call_a", "get_weather")]
    assert len(messages) == 4  # the caller's transcript is not changed
    await client.complete(model="gpt-4.1", messages=messages, tools=[WEATHER])
    assert len(events.of(Repaired)) == 1  # the same repair is not reported twice
    await client.aclose()
