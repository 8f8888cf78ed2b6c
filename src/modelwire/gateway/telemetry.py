"""Whether the gateway traces its requests, and where the traces go: the ``telemetry:`` section of
the config and the standard ``OTEL_*`` variables.

Nothing here imports the tracer. With tracing off the gateway never loads it, and the request
path pays one ``None`` check per hook; :mod:`.tracing` (with :mod:`.spans` and :mod:`.otlp`) is
imported only once tracing is on.

Tracing is on when the config has a ``telemetry:`` section or an OTLP endpoint variable is set,
unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. A setting in the section wins
over its variable; a setting left out is the variable's (read by :mod:`.otlp`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Config, ConfigError

if TYPE_CHECKING:
    from .tracing import Tracer

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
PROTOCOLS = ("http/protobuf", "http/json")  # the first is OTLP's default


@dataclass(frozen=True, slots=True)
class TraceSettings:
    endpoint: str | None  # the traces URL; None: the variables' (else localhost:4318)
    headers: dict[str, str] | None  # None: $OTEL_EXPORTER_OTLP_HEADERS
    service_name: str
    sample_ratio: float  # of the requests that come without a sampled/unsampled client context
    follow_parent: bool  # a client's traceparent decides whether its request is sampled
    capture_content: bool
    protocol: str = PROTOCOLS[0]


def settings(config: Config, env: Mapping[str, str] = os.environ) -> TraceSettings | None:
    """How to trace, or None when tracing is off."""
    if _true(env.get("OTEL_SDK_DISABLED")) or env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    section = config.telemetry
    if section is None and not any(env.get(name) for name in ENDPOINT_VARIABLES):
        return None
    protocol = next((env[name] for name in PROTOCOL_VARIABLES if env.get(name)), PROTOCOLS[0]).strip()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            config.source,
            "telemetry",
            f"OTLP protocol {protocol!r} is not supported: the gateway exports traces over "
            f"{' or '.join(PROTOCOLS)} (unset OTEL_EXPORTER_OTLP_PROTOCOL or set it to one of them)",
        )
    endpoint = headers = ratio = None
    capture = False
    service = None
    if section is not None:
        endpoint = section.endpoint.rstrip("/") + "/v1/traces" if section.endpoint else None
        headers = dict(section.headers) or None
        service, ratio, capture = section.service_name, section.sample_ratio, section.capture_content
    ratio, follow = (ratio, True) if ratio is not None else _sampler(env)
    return TraceSettings(
        endpoint=endpoint,
        headers=headers,
        service_name=service or env.get("OTEL_SERVICE_NAME") or "modelwire",
        sample_ratio=ratio,
        follow_parent=follow,
        capture_content=capture or _true(env.get(CAPTURE_VARIABLE)),
        protocol=protocol,
    )


def _sampler(env: Mapping[str, str]) -> tuple[float, bool]:
    """``OTEL_TRACES_SAMPLER`` (and ``_ARG``) as a ratio, and whether a client's context decides.
    The gateway samples itself (a request left out then costs next to nothing), so it reads the
    standard samplers here: ``[parentbased_]always_on``, ``…always_off``, ``…traceidratio``."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    kind = name.removeprefix("parentbased_")
    follow = kind != name
    if kind == "always_off":
        return 0.0, follow
    if kind == "traceidratio":
        try:
            return min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")))), follow
        except ValueError:
            return 1.0, follow
    return 1.0, follow


def tracer(config: Config) -> Tracer | None:
    """The gateway's tracer, or None when tracing is off (then the tracer is never imported)."""
    found = settings(config)
    if found is None:
        return None
    from .tracing import Tracer

    return Tracer(found)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"
