"""What an encoder needs to know about the host it is writing for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WireOptions:
    """Host facts that change the bytes an encoder writes, derived once per backend.

    ``native``: OpenAI's own semantics (``store``, ``service_tier``, prompt-cache fields,
    ``include``, ``safety_identifier``); off for OpenAI-compatible servers, which reject them.
    ``developer_role``: the host knows the ``developer`` role (otherwise it is sent as ``system``).
    ``max_tokens_field``: Chat's output limit field; compatible servers want ``max_tokens``.
    """

    native: bool = True
    developer_role: bool = True
    max_tokens_field: str = "max_completion_tokens"


NATIVE = WireOptions()
COMPATIBLE = WireOptions(native=False, developer_role=False, max_tokens_field="max_tokens")
