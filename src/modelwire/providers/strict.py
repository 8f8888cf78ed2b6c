"""Fitting JSON Schemas to OpenAI's strict mode, and stop sequences where an API has none.

Strict mode (function tools and structured output with ``strict: true``) guarantees the model's
arguments match the schema, but only accepts schemas where every object forbids extra properties
and lists every property as required. A caller's ordinary schema is rewritten to that form:
optional properties become required-but-nullable, which keeps their meaning.
"""

from __future__ import annotations

import copy
from typing import Any

_NESTED_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


class NotStrictable(ValueError):
    """The schema needs something strict mode cannot express (e.g. free-form extra properties)."""


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """A strict-mode copy of ``schema``, or None when it cannot be made strict."""
    try:
        fitted: dict[str, Any] = _strict(copy.deepcopy(schema), top=True)
    except NotStrictable:
        return None
    return fitted


def _strict(node: Any, *, top: bool = False) -> Any:
    if not isinstance(node, dict):
        return node
    if node.get("type") == "object" or "properties" in node:
        _strict_object(node, top=top)
    for key in _NESTED_LISTS:
        if isinstance(node.get(key), list):
            node[key] = [_strict(item) for item in node[key]]
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            node[key] = {name: _strict(sub) for name, sub in node[key].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    return node


def _strict_object(node: dict[str, Any], *, top: bool) -> None:
    extra = node.get("additionalProperties", False)
    if extra not in (False, None) or node.get("patternProperties"):
        raise NotStrictable("free-form object properties")
    node["additionalProperties"] = False
    properties: dict[str, Any] = node.setdefault("properties", {})
    required = set(node.get("required") or ())
    for name, prop in list(properties.items()):
        prop = _strict(prop)
        properties[name] = prop if name in required else _nullable(prop)
    node["required"] = list(properties)
    if top:
        node.setdefault("type", "object")


def _nullable(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    kind = prop.get("type")
    if isinstance(kind, str) and "enum" not in prop:
        return {**prop, "type": [kind, "null"]} if kind != "null" else prop
    if isinstance(kind, list):
        return prop if "null" in kind else {**prop, "type": [*kind, "null"]}
    return {"anyOf": [prop, {"type": "null"}]}


class StopScanner:
    """Cuts streamed text at the first stop sequence, holding back only what could start one."""

    __slots__ = ("_held", "_keep", "hit", "stops")

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._keep = max((len(s) for s in self.stops), default=1) - 1
        self._held = ""
        self.hit: str | None = None

    def feed(self, text: str) -> str:
        """The text safe to show now; sets :attr:`hit` when a stop sequence appears."""
        if self.hit is not None:
            return ""
        buffer = self._held + text
        cut, found = _first_stop(buffer, self.stops)
        if found is not None:
            self.hit, self._held = found, ""
            return buffer[:cut]
        if self._keep == 0:
            self._held = ""
            return buffer
        self._held = buffer[-self._keep :]
        return buffer[: -self._keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """``text`` up to the first stop sequence, and which one it was."""
    cut, found = _first_stop(text, [s for s in stops if s])
    return (text[:cut], found) if found is not None else (text, None)


def _first_stop(text: str, stops: list[str]) -> tuple[int, str | None]:
    best, found = len(text), None
    for stop in stops:
        at = text.find(stop)
        if at != -1 and at < best:
            best, found = at, stop
    return best, found
