"""Which upstreams serve a model name: rules, direct refs, URI parameters, weights.

A route target is written ``backend/model`` (or ``backend:model``), optionally followed by URI
parameters that override what the client sent: ``openai/gpt-5.4-mini?reasoning_effort=low``.
Parameters are typed and checked when the config loads, so a typo fails at start-up, not on the
thousandth request.

``openai-codex/<model>`` names the Codex subscription route, as the same ref does in the library:
it goes to the backend named ``openai-codex`` if there is one, else to the first backend of
``type: codex``. With none configured such a ref is a config error in a rule and "not found" in a
request, never a name some other upstream is asked about.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..errors import InvalidRequestError, NotFoundError
from ..providers.catalog import EFFORT_ORDER
from ..providers.hosts import CODEX_REF

if TYPE_CHECKING:
    from .config import Config


def _number(low: float, high: float | None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be ≥ {low}")
        return value

    return parse


def _integer(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return parse


URI_PARAMS: dict[str, Callable[[str], Any]] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_output_tokens": _integer,
    "reasoning_effort": _choice(*EFFORT_ORDER),
    "verbosity": _choice("low", "medium", "high"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream for a request: a backend, the model name it knows, overrides, a weight."""

    backend: str
    model: str
    params: tuple[tuple[str, Any], ...] = ()
    weight: float = 1.0

    @property
    def ref(self) -> str:
        return f"{self.backend}/{self.model}"

    @property
    def spec(self) -> str:
        """The ref with its URI parameters, as written in the config."""
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.ref}?{query}" if query else self.ref

    def overrides(self) -> dict[str, Any]:
        return dict(self.params)


def parse_ref(ref: str, weight: float = 1.0) -> Target:
    """``backend/model?param=value`` (or ``backend:model``) as a :class:`Target`; a bare ``backend``
    is that backend with the model the client asked for (``model`` empty until a request fills it)."""
    base, _, query = ref.partition("?")
    slash, colon = base.find("/"), base.find(":")
    cut = slash if slash != -1 and (colon == -1 or slash < colon) else colon
    if cut == -1 and base:
        cut = len(base)
    elif cut <= 0 or cut == len(base) - 1:
        raise ValueError(f"{ref!r} is not a backend/model reference")
    params: list[tuple[str, Any]] = []
    for name, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        parser = URI_PARAMS.get(name)
        if parser is None:
            raise ValueError(f"unknown URI parameter {name!r} (known: {', '.join(URI_PARAMS)})")
        try:
            params.append((name, parser(raw)))
        except ValueError as exc:
            raise ValueError(f"URI parameter {name}={raw!r}: {exc}") from None
    return Target(backend=base[:cut], model=base[cut + 1 :], params=tuple(params), weight=weight)


CODEX_ALIAS = CODEX_REF.rstrip("/")


def codex_backend(config: Config) -> str | None:
    """The backend ``openai-codex/`` refs go to: one so named, else the first of type codex."""
    if CODEX_ALIAS in config.backends:
        return CODEX_ALIAS
    return next((name for name, b in config.backends.items() if b.type == "codex"), None)


def resolve_alias(target: Target, config: Config) -> Target:
    """``target`` with an ``openai-codex`` ref pointed at the Codex backend (unchanged without one)."""
    if target.backend != CODEX_ALIAS:
        return target
    backend = codex_backend(config)
    return dataclasses.replace(target, backend=backend) if backend else target


NO_CODEX_BACKEND = "openai-codex/… refs need a backend of type codex, and none is configured"
_rng = random.Random()


@dataclass(frozen=True, slots=True)
class Route:
    """The failover chain for a public model name, in order."""

    public: str
    targets: tuple[Target, ...]
    weighted: bool = False

    def order(self, rng: random.Random | None = None) -> list[Target]:
        """The targets to try, first to last: as configured, or a weighted draw when weights differ."""
        if not self.weighted:
            return list(self.targets)
        choices = (rng or _rng).choices
        pool, out = list(self.targets), []
        while pool:
            pick = choices(range(len(pool)), weights=[t.weight for t in pool])[0]
            out.append(pool.pop(pick))
        return out


@dataclass(slots=True)
class Router:
    """Resolves model names per the config; results are cached since names repeat."""

    config: Config
    _cache: dict[str, Route] = field(default_factory=dict)
    _rules: list[tuple[str | None, re.Pattern[str] | None, frozenset[str], tuple[Target, ...]]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        for rule in self.config.models:
            targets = tuple(
                resolve_alias(parse_ref(e) if isinstance(e, str) else parse_ref(e.to, e.weight), self.config)
                for e in rule.route
            )
            names = frozenset([rule.name, *rule.aliases]) if rule.name else frozenset(rule.aliases)
            pattern = re.compile(rule.match) if rule.match else None
            self._rules.append((rule.name, pattern, names, targets))

    def resolve(self, model: str) -> Route:
        route = self._cache.get(model)
        if route is None:
            route = self._resolve(model)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[model] = route
        return route

    def _resolve(self, model: str) -> Route:
        forced = self.config.force_model
        if forced is not None and forced != model:
            route = self._resolve(forced)
            return Route(public=model, targets=route.targets, weighted=route.weighted)
        for _, pattern, names, targets in self._rules:
            if model in names or (pattern is not None and pattern.search(model)):
                kept = tuple(t if t.model else dataclasses.replace(t, model=model) for t in targets)
                return _route(model, kept)
        direct = self._direct(model)
        if direct is not None:
            return Route(public=model, targets=(direct,))
        if self.config.default_backend is not None and model:
            return Route(public=model, targets=(Target(backend=self.config.default_backend, model=model),))
        available = ", ".join(self.public_models()) or "none configured"
        raise NotFoundError(
            f"The model {model!r} does not exist on this gateway. Available: {available}",
            code="model_not_found",
            param="model",
        )

    def _direct(self, model: str) -> Target | None:
        try:
            target = resolve_alias(parse_ref(model), self.config)
        except ValueError as exc:
            if "URI parameter" in str(exc):
                raise InvalidRequestError(str(exc), code="invalid_value", param="model") from None
            return None
        if target.backend == CODEX_ALIAS and CODEX_ALIAS not in self.config.backends:
            raise NotFoundError(
                f"The model {model!r} does not exist on this gateway: {NO_CODEX_BACKEND}",
                code="model_not_found",
                param="model",
            )
        return target if target.model and target.backend in self.config.backends else None

    def public_models(self) -> list[str]:
        names = [
            n for name, _, names, _ in self._rules for n in ([name] if name else []) + sorted(names - {name})
        ]
        return list(dict.fromkeys(names))

    def is_direct(self, model: str) -> bool:
        return self._direct(model) is not None and not any(
            model in names or (p is not None and p.search(model)) for _, p, names, _ in self._rules
        )


def _route(public: str, targets: tuple[Target, ...]) -> Route:
    weighted = len({t.weight for t in targets}) > 1
    return Route(public=public, targets=targets, weighted=weighted)
