"""Repair of broken tool sequences (driver behaviour 6)."""

from __future__ import annotations

from modelwire.providers.repair import needs_repair, repair
from modelwire.types import Message, Text, ToolCall, ToolResult, assistant, tool_result, user


def call(id: str, name: str = "lookup") -> ToolCall:
    return ToolCall(id=id, name=name, arguments="{}")


def test_well_formed_transcript_is_returned_unchanged() -> None:
    messages = [
        user("hi"),
        assistant(call("a"), call("b")),
        tool_result("a", "1"),
        tool_result("b", "2"),
        user("ok"),
    ]
    fixed, report = repair(messages)
    assert fixed is messages
    assert report is None


def test_missing_result_gets_a_synthetic_error_right_after_its_call() -> None:
    messages = [
        user("hi"),
        assistant(call("a", "get_weather"), call("b")),
        tool_result("b", "2"),
        user("next"),
    ]
    fixed, report = repair(messages)
    assert report is not None and report.missing == [("a", "get_weather")]
    assert [m.role for m in fixed] == ["user", "assistant", "tool", "tool", "user"]
    synthetic = fixed[2].content[0]
    assert isinstance(synthetic, ToolResult) and synthetic.is_error
    assert synthetic.call_id == "a"
    assert "[SYSTEM ERROR: Tool result missing" in synthetic.text and "get_weather" in synthetic.text
    assert "a" in synthetic.text
    assert fixed[3].content[0] == ToolResult(call_id="b", content=[Text(text="2")])


def test_repair_is_not_repeated() -> None:
    fixed, report = repair([user("hi"), assistant(call("a"))])
    assert report is not None
    again, second = repair(fixed)
    assert again is fixed and second is None
    assert not needs_repair(fixed)


def test_result_answering_no_call_is_dropped() -> None:
    messages = [user("hi"), tool_result("ghost", "boo"), assistant("hello")]
    fixed, report = repair(messages)
    assert report is not None and report.dropped == ["ghost"]
    assert [m.role for m in fixed] == ["user", "assistant"]


def test_misplaced_result_moves_next_to_its_call() -> None:
    messages = [user("hi"), assistant(call("a")), user("are you there?"), tool_result("a", "late")]
    fixed, report = repair(messages)
    assert report is not None and report.moved == ["a"] and not report.missing
    assert [m.role for m in fixed] == ["user", "assistant", "tool", "user"]
    assert fixed[2].content[0].call_id == "a"  # type: ignore[union-attr]


def test_anthropic_style_results_in_a_user_turn_are_valid() -> None:
    result = ToolResult(call_id="a", content=[Text(text="1")])
    messages = [user("hi"), assistant(call("a")), Message(role="user", content=[result])]
    assert not needs_repair(messages)
