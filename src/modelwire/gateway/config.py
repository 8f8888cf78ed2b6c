"""The gateway's configuration: ``modelwire.yaml``, the contract users and tests rely on.

Every key is optional. ``${VAR}`` and ``${VAR:-default}`` expand from the environment before the
YAML is validated. With no file at all the gateway serves one backend named ``openai`` built from
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` and keeps its state in SQLite. A bad file fails at start-up
with an error naming the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_STORE = "sqlite:///.modelwire/state.db"
BackendType = Literal["openai", "azure", "codex", "openai-compatible"]


class ConfigError(Exception):
    """A configuration problem, located: ``file: key: problem``."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source, self.key, self.problem = source, key, problem


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    grace_seconds: float = Field(30.0, ge=0)
    keepalive_seconds: float = Field(10.0, gt=0, description="SSE keep-alive interval while a stream waits")
    allow_private_urls: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class BackendConfig(_Model):
    type: BackendType = "openai"
    api: Literal["responses", "chat"] | None = None
    base_url: str | None = None
    api_key: str | None = None
    api_keys: list[str] = Field(default_factory=list)
    api_keys_env: str | None = Field(None, description="gather NAME, NAME_1 … NAME_N from the environment")
    api_version: str | None = None
    timeout: float = Field(600.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(1.0, gt=0)
    inline_media: bool = Field(False, description="fetch image and file URLs and send their bytes")

    @property
    def wire_api(self) -> Literal["responses", "chat"]:
        if self.api is not None:
            return self.api
        return "responses" if self.type in ("openai", "codex", "azure") else "chat"

    def keys(self) -> list[str]:
        """Every upstream key, deduplicated, in order: api_key, api_keys, then the environment."""
        found = [k for k in [self.api_key, *self.api_keys] if k]
        if self.api_keys_env:
            found += numbered_env(self.api_keys_env)
        return list(dict.fromkeys(found))


class RouteTarget(_Model):
    to: str
    weight: float = Field(1.0, gt=0)


RouteEntry = Annotated[str | RouteTarget, Field(union_mode="left_to_right")]


class ModelRule(_Model):
    name: str | None = None
    match: str | None = None
    route: list[RouteEntry]
    aliases: list[str] = Field(default_factory=list)

    @field_validator("route", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | dict) else value

    @model_validator(mode="after")
    def _named(self) -> ModelRule:
        if (self.name is None) == (self.match is None):
            raise ValueError("give exactly one of 'name' or 'match'")
        if not self.route:
            raise ValueError("route must name at least one backend/model")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match is not a valid regular expression: {exc}") from None
        return self


class KeyConfig(_Model):
    key: str
    name: str
    models: list[str] = Field(default_factory=lambda: ["*"])
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)


class FailoverConfig(_Model):
    budget_seconds: float = Field(90.0, gt=0)
    max_hops: int = Field(5, ge=1)
    wait_retry_after_max: float = Field(30.0, ge=0, description="wait out a 429 this long, else move on")
    key_cooldown_seconds: float = Field(60.0, ge=0, description="cool-down of an upstream key after 401/403")


class LockoutConfig(_Model):
    failures: int = Field(5, ge=1)
    first_seconds: float = Field(30.0, gt=0)
    max_seconds: float = Field(3600.0, gt=0)


class CaptureConfig(_Model):
    path: str
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    backups: int = Field(5, ge=0)


class UsageConfig(_Model):
    flush_seconds: float = Field(1.0, gt=0)
    batch: int = Field(500, ge=1)


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    store: str = DEFAULT_STORE
    redis: str | None = None
    backends: dict[str, BackendConfig] = Field(default_factory=dict)
    models: list[ModelRule] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    default_backend: str | None = None
    force_model: str | None = None
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    lockout: LockoutConfig = Field(default_factory=LockoutConfig)
    capture: CaptureConfig | None = None
    usage: UsageConfig = Field(default_factory=UsageConfig)
    source: str = Field("<defaults>", exclude=True)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("store must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        from .routing import parse_ref  # routing validates refs; config only locates the problem

        names = set(self.backends)
        if self.default_backend is not None and self.default_backend not in names:
            raise _located("default_backend", f"unknown backend {self.default_backend!r}", names)
        for i, rule in enumerate(self.models):
            for j, entry in enumerate(rule.route):
                ref = entry if isinstance(entry, str) else entry.to
                try:
                    target = parse_ref(ref)
                except ValueError as exc:
                    raise _located(f"models[{i}].route[{j}]", str(exc), names) from None
                if target.backend not in names:
                    raise _located(f"models[{i}].route[{j}]", f"unknown backend {target.backend!r}", names)
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.name in seen:
                raise _located(f"keys[{i}].name", f"duplicate key name {key.name!r}", set())
            seen.add(key.name)
        return self


class _Located(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _located(key: str, problem: str, names: set[str]) -> _Located:
    if names and "unknown backend" in problem:
        problem += f" (configured: {', '.join(sorted(names))})"
    return _Located(key, problem)


def numbered_env(name: str) -> list[str]:
    """``NAME``, then ``NAME_1``, ``NAME_2`` … up to the first gap."""
    keys = [os.environ[name]] if os.environ.get(name) else []
    n = 1
    while os.environ.get(f"{name}_{n}"):
        keys.append(os.environ[f"{name}_{n}"])
        n += 1
    return keys


def expand_env(text: str, env: dict[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment; an unset ``${VAR}`` becomes empty."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None

    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        return value if value else (m.group(2) or "")

    return ENV_PATTERN.sub(sub, text)


def default_config() -> Config:
    """No file: one ``openai`` backend from the environment, SQLite state."""
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    kind = "openai-compatible" if base_url and "api.openai.com" not in base_url else "openai"
    backend = BackendConfig(type=kind, base_url=base_url, api_keys_env="OPENAI_API_KEY")
    return Config(backends={"openai": backend}, default_backend="openai")


def load_config(path: str | Path | None = None) -> Config:
    """The config from ``path``, else ``./modelwire.yaml`` when present, else the defaults."""
    if path is None:
        path = Path("modelwire.yaml")
        if not path.exists():
            return default_config()
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(expand_env(text)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(source, "", "the top level must be a mapping")
    return parse_config(doc, source)


def parse_config(doc: dict[str, Any], source: str = "<config>") -> Config:
    try:
        config = Config.model_validate({**doc, "source": source})
    except _Located as exc:
        raise ConfigError(source, exc.key, str(exc)) from None
    except ValidationError as exc:
        raise _config_error(source, exc) from None
    if not config.backends:
        config = config.model_copy(
            update={"backends": default_config().backends, "default_backend": "openai"}
        )
    if config.default_backend is None and len(config.backends) == 1:
        config = config.model_copy(update={"default_backend": next(iter(config.backends))})
    return config


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in error["loc"]).replace(".[", "[")
    message = error["msg"].removeprefix("Value error, ")
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), _Located):
        located = ctx["error"]
        return ConfigError(source, located.key, str(located))
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling; see the README's configuration reference)"
    return ConfigError(source, key, message)
