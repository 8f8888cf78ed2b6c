"""Typed reads of inbound JSON that fail with an error naming the field.

Decoders use these instead of bare indexing so that a wrong type becomes a 400 the client can act
on ("messages[2].content: expected a string or an array") rather than a traceback.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NoReturn, TypeVar

from ..errors import InvalidRequestError

T = TypeVar("T")

_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def fail(path: str, problem: str) -> NoReturn:
    raise InvalidRequestError(f"{path}: {problem}", param=path, code="invalid_value")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in _KIND_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def get(obj: dict[str, Any], key: str, kind: type[T], path: str, *, required: bool = False) -> T | None:
    """``obj[key]`` if present and of ``kind`` (ints accepted for floats); ``None`` if absent or null."""
    value = obj.get(key)
    if value is None:
        if required:
            fail(path + key, "is required")
        return None
    if kind is float and type(value) is int:
        return float(value)  # type: ignore[return-value]
    if type(value) is not kind:
        fail(path + key, f"expected {_KIND_NAMES.get(kind, kind.__name__)}, got {_describe(value)}")
    return value


def need(obj: dict[str, Any], key: str, kind: type[T], path: str) -> T:
    value = get(obj, key, kind, path, required=True)
    assert value is not None
    return value


def require(body: dict[str, Any], names: tuple[str, ...]) -> None:
    """Each of ``names`` is in ``body`` and not null."""
    for name in names:
        if body.get(name) is None:
            fail(name, "is required")


def to_float(value: float | None) -> float | None:
    """A number already checked (an int or a float, or None) as a float, as ``get`` gives it."""
    return float(value) if type(value) is int else value


def as_dict(value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        fail(path, f"expected an object, got {_describe(value)}")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    if type(value) is not list:
        fail(path, f"expected an array, got {_describe(value)}")
    return value


def str_list(obj: dict[str, Any], key: str, path: str) -> list[str] | None:
    """A string or an array of strings, as ``stop`` takes."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if type(value) is list and all(isinstance(v, str) for v in value):
        return value
    fail(path + key, "expected a string or an array of strings")


def b64decode(data: str, path: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        fail(path, "is not valid base64")


def parse_data_url(url: str, path: str) -> tuple[str, bytes] | None:
    """``(media_type, bytes)`` for a ``data:`` URL with base64 payload, else ``None``."""
    if not url.startswith("data:"):
        return None
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        fail(path, "data URLs must be base64-encoded (data:<type>;base64,<data>)")
    return header[: -len(";base64")] or "application/octet-stream", b64decode(payload, path)


def data_url(media_type: str | None, data: bytes) -> str:
    return f"data:{media_type or 'application/octet-stream'};base64,{base64.b64encode(data).decode()}"


NUMBER = (int, float)


def numbers(value: Any) -> bool:
    """Whether ``value`` is an array of numbers (an embedding); a predicate, for an upstream's answer."""
    return type(value) is list and all(type(x) is float or type(x) is int for x in value)


def check_types(body: dict[str, Any], table: dict[str, tuple[type, ...]]) -> None:
    """Top-level fields of ``body`` have the types ``table`` allows (null is always allowed).

    The passthrough path forwards bodies it never decodes; this keeps a wrong type a 400 that
    names the field, as on the translated path, for the price of a few dict lookups.
    """
    for name, value in body.items():  # a body has a few fields, the table a few dozen
        kinds = table.get(name)
        if kinds is None or value is None:
            continue
        if (type(value) is bool and bool not in kinds) or not isinstance(value, kinds):
            allowed = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            fail(name, f"expected {allowed}, got {_describe(value)}")
