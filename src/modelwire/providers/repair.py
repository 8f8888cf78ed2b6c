"""Repair of broken tool sequences before they reach an upstream that would reject them.

Every API we speak requires each tool call to be answered by its result right after the
assistant turn that made it. Interrupted agents leave calls unanswered, and transcripts edited by
hand leave results that answer nothing. We give an unanswered call a synthetic error result, move
a misplaced result next to its call, and drop a result that answers no call. A transcript that is
already well formed comes back unchanged, so repairs never stack up.
"""

from __future__ import annotations

from ..errors import InvalidRequestError
from ..observe import Repaired
from ..types import Message, Part, Text, ToolCall, ToolResult

MISSING = (
    "[SYSTEM ERROR: Tool result missing for tool '{name}' (call id {id}). The call was interrupted "
    "or its result was lost; do not assume it ran.]"
)


def _results_follow(messages: list[Message], start: int, calls: list[ToolCall]) -> bool:
    """Whether the messages after ``start`` open with exactly the results for ``calls``."""
    wanted = {c.id for c in calls}
    seen: set[str] = set()
    for msg in messages[start:]:
        results = [p for p in msg.content if isinstance(p, ToolResult)]
        if not results:
            break
        seen.update(r.call_id for r in results)
        if msg.role != "tool" and len(results) != len(msg.content):
            break
    return wanted <= seen


def needs_repair(messages: list[Message]) -> bool:
    calls_before: set[str] = set()
    for i, msg in enumerate(messages):
        for part in msg.content:
            if isinstance(part, ToolResult) and part.call_id not in calls_before:
                return True
        calls = msg.tool_calls if msg.role == "assistant" else []
        if calls:
            if not _results_follow(messages, i + 1, calls):
                return True
            calls_before.update(c.id for c in calls)
    return False


def repair(messages: list[Message]) -> tuple[list[Message], Repaired | None]:
    """A well-formed copy of ``messages`` and what was changed, or the list itself and None."""
    if not needs_repair(messages):
        return messages, None
    results: dict[str, tuple[int, ToolResult]] = {}
    for i, msg in enumerate(messages):
        for part in msg.content:
            if isinstance(part, ToolResult):
                results.setdefault(part.call_id, (i, part))
    report = Repaired()
    placed: set[str] = set()
    out: list[Message] = []
    for i, msg in enumerate(messages):
        kept: list[Part] = [p for p in msg.content if not isinstance(p, ToolResult)]
        if msg.role == "assistant":
            out.append(msg)
            out.extend(_answers(msg.tool_calls, (i, _run_end(messages, i)), results, placed, report))
        elif kept or not msg.content:
            out.append(Message(role=msg.role, content=kept, name=msg.name, id=msg.id))
    report.dropped = [cid for cid in results if cid not in placed]
    if report.dropped and all(m.role in ("system", "developer") for m in out):
        raise InvalidRequestError(
            "messages: the conversation holds only tool results answering calls it does not contain; "
            "send them after the assistant turn that made the calls",
            param="messages",
        )
    return out, report


def _run_end(messages: list[Message], at: int) -> int:
    """The index after the run of result-bearing messages that follows message ``at``."""
    end = at + 1
    while end < len(messages) and any(isinstance(p, ToolResult) for p in messages[end].content):
        end += 1
    return end


def _answers(
    calls: list[ToolCall],
    run: tuple[int, int],
    results: dict[str, tuple[int, ToolResult]],
    placed: set[str],
    report: Repaired,
) -> list[Message]:
    """Tool messages answering ``calls``, which sit at ``run[0]`` followed by results up to ``run[1]``."""
    at, end = run
    answers: list[Message] = []
    for call in calls:
        found = results.get(call.id)
        if found is None or found[0] <= at or call.id in placed:
            text = MISSING.format(name=call.name, id=call.id)
            result = ToolResult(call_id=call.id, content=[Text(text=text)], is_error=True, name=call.name)
            report.missing.append((call.id, call.name))
        else:
            result = found[1]
            placed.add(call.id)
            if not at < found[0] < end:
                report.moved.append(call.id)
        answers.append(Message(role="tool", content=[result]))
    return answers
