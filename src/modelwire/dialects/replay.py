"""Carry one dialect's opaque reasoning data through another dialect's opaque field.

When a client speaks one dialect and the upstream another, the upstream's replay data (Responses
``encrypted_content``, an Anthropic signature, a Gemini thought signature) has to travel to the
client in the client's own field and come back intact on the next turn. We wrap it in a small,
recognisable envelope; a token without the envelope belongs to the client's own dialect.
"""

from __future__ import annotations

import base64
import binascii
from typing import cast, get_args

import orjson

from ..types import Dialect, Reasoning

PREFIX = "mw1."
_DIALECTS = frozenset(get_args(Dialect))


def wrap(reasoning: Reasoning) -> str | None:
    """The envelope for ``reasoning``'s replay data, or None when it has none."""
    if reasoning.data is None and reasoning.id is None:
        return None
    doc = {"d": reasoning.dialect, "v": reasoning.data, "i": reasoning.id, "r": reasoning.redacted}
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(doc)).decode()


def unwrap(token: str | None, own: Dialect) -> tuple[str | None, Dialect, str | None, bool]:
    """``(data, dialect, id, redacted)`` from a token a client sent back in ``own`` dialect's field."""
    if not token or not token.startswith(PREFIX):
        return token, own, None, False
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token[len(PREFIX) :]))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return token, own, None, False
    dialect = doc.get("d") if doc.get("d") in _DIALECTS else own
    return doc.get("v"), cast(Dialect, dialect), doc.get("i"), bool(doc.get("r"))


def token_for(reasoning: Reasoning, own: Dialect) -> str | None:
    """What to put in ``own`` dialect's opaque field: the raw data when ``own`` minted it."""
    if reasoning.dialect in (None, own):
        return reasoning.data
    return wrap(reasoning)
