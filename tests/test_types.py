"""The neutral model's helpers."""

from __future__ import annotations

import dataclasses

from modelwire.types import Request, ResponseFormat, Tool, ToolName, copy_request, user


def test_copy_request_copies_every_field_and_shares_nothing_it_sets() -> None:
    original = Request(
        model="m",
        messages=[user("hi")],
        tools=[Tool(name="t")],
        tool_choice=ToolName("t"),
        parallel_tool_calls=False,
        max_output_tokens=5,
        temperature=0.5,
        top_p=0.9,
        stop=["x"],
        seed=1,
        response_format=ResponseFormat(type="json_object"),
        reasoning_effort="low",
        reasoning_summary="auto",
        verbosity="low",
        service_tier="flex",
        metadata={"a": "b"},
        user="u",
        stream=True,
        previous_response_id="resp_1",
        store=False,
        prompt_cache_key="k",
        prompt_cache_retention="24h",
        extra={"x": 1},
        dialect="gemini",
    )
    defaults = Request(model="")
    assert all(getattr(original, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(Request))
    copy = copy_request(original)
    assert copy == original and copy is not original
    copy.model, copy.temperature = "other", None
    assert (original.model, original.temperature) == ("m", 0.5)
