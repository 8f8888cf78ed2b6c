"""The gateway's configuration: ``modelwire.yaml``, the contract users and tests rely on.

Every key is optional. ``${VAR}`` and ``${VAR:-default}`` expand from the environment in each
string value before the YAML is validated; ``${VAR}`` with ``VAR`` unset is an error (``${VAR:-}``
asks for an empty default on purpose), and so is a client or upstream key that expands to nothing:
a forgotten secret must stop the gateway, never open it. With no file at all the gateway serves one
backend named ``openai`` built from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` and keeps its state in
SQLite. A bad file fails at start-up with an error naming the file, the key and the problem.

Relative paths in a file (a SQLite store, the capture file) are relative to the file's own
directory, so the gateway and the CLI find the same state from wherever they are run.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..providers.hosts import PROFILES, HostKind, WireAPI
from ..types import Dialect
from ..wires import OPENAI_APIS

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_STORE = "sqlite:///.modelwire/state.db"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
MediaKind = Literal["images", "speech", "transcription", "video"]


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
    workers: int = Field(1, ge=1, le=64, description="worker processes; `auto` is one per core")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    grace_seconds: float = Field(30.0, ge=0)
    keepalive_seconds: float = Field(10.0, gt=0, description="SSE keep-alive interval while a stream waits")
    allow_private_urls: bool = False
    websocket_sockets_per_key: int = Field(
        32, ge=1, description="Responses WebSockets one client key may hold open (across replicas with redis)"
    )
    websocket_lanes: int = Field(16, ge=1, le=256, description="stream_id lanes per Responses WebSocket")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    trusted_proxies: list[str] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For / Forwarded headers are believed"
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        """``auto``: one per core this process may run on (a container's cpuset, taskset)."""
        return min(len(os.sched_getaffinity(0)) or 1, 64) if value == "auto" else value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR range") from None
        return value


class BackendConfig(_Model):
    type: HostKind = "openai"
    api: WireAPI | None = Field(None, description="the OpenAI wire of an OpenAI host: responses | chat")
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
    context_cap: int | None = Field(
        None, ge=1024, description="tokens of context any model may use here (default: the host's cap)"
    )
    media_base_urls: dict[MediaKind, str] = Field(
        default_factory=dict, description="a base URL per modality (images, speech, transcription, video)"
    )

    @property
    def wire(self) -> Dialect:
        """The wire this backend's upstream speaks: ``api:`` when the host speaks it, else the
        host's own default."""
        wires = PROFILES[self.type].wires
        chosen = OPENAI_APIS.get(self.api or "")
        return chosen if chosen in wires else wires[0]

    @model_validator(mode="after")
    def _known_wire(self) -> BackendConfig:
        wires = PROFILES[self.type].wires
        if self.api is not None and OPENAI_APIS[self.api] not in wires:
            raise _Located("api", f"a {self.type} backend speaks {' and '.join(wires)} only; remove `api:`")
        return self

    @model_validator(mode="after")
    def _no_empty_keys(self) -> BackendConfig:
        """An upstream key that expanded to nothing is a forgotten secret, not "no key"."""
        if self.api_key is not None and not self.api_key.strip():
            raise _Located("api_key", "is empty (an unset or empty secret?); remove it or give a key")
        for i, key in enumerate(self.api_keys):
            if not key.strip():
                raise _Located(f"api_keys[{i}]", "is empty (an unset or empty secret?)")
        if self.api_keys_env and not numbered_env(self.api_keys_env):
            raise _Located("api_keys_env", f"${self.api_keys_env} is not set, so this backend has no key")
        return self

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
    realtime_secrets: bool = False  # may mint ephemeral Realtime client secrets (docs/realtime.md)
    admin: bool = Field(False, description="an operator's key: the admin API and /ui only, never the proxy")

    @field_validator("key", "name")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty (an unset or empty secret?); a client key needs both")
        return value


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


class MediaConfig(_Model):
    """Upload limits per media endpoint, each under ``server.max_body_bytes``."""

    images_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="images/edits: all files together")
    audio_max_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="an audio upload (OpenAI's own cap)")
    video_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="a video's input_reference")


class LimitsConfig(_Model):
    on_shared_error: Literal["local", "deny"] = Field(
        "local", description="Redis unreachable: count per replica (local) or refuse limited keys (deny)"
    )


class TelemetryConfig(_Model):
    """OpenTelemetry traces over OTLP/HTTP; unset fields fall back to the standard OTEL_* variables."""

    endpoint: str | None = Field(None, description="OTLP/HTTP base URL; /v1/traces is appended")
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every export")
    service_name: str | None = None
    sample_ratio: float | None = Field(None, ge=0, le=1, description="parent-based ratio sampler")
    capture_content: bool = Field(False, description="prompts and completions on spans, redacted")


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
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    telemetry: TelemetryConfig | None = None
    source: str = Field("<defaults>", exclude=True)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("store must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        check_references(self)
        return self


def check_references(config: Config) -> None:
    """Every backend a rule or setting names exists; key names are unique."""
    from .routing import CODEX_ALIAS, NO_CODEX_BACKEND, parse_ref, resolve_alias  # routing validates refs

    names = set(config.backends)
    if config.default_backend is not None and config.default_backend not in names:
        raise _located("default_backend", f"unknown backend {config.default_backend!r}", names)
    for i, rule in enumerate(config.models):
        for j, entry in enumerate(rule.route):
            ref = entry if isinstance(entry, str) else entry.to
            try:
                target = resolve_alias(parse_ref(ref), config)
            except ValueError as exc:
                raise _located(f"models[{i}].route[{j}]", str(exc), names) from None
            if target.backend == CODEX_ALIAS and target.backend not in names:
                raise _located(
                    f"models[{i}].route[{j}]", f"{NO_CODEX_BACKEND} (add one: `type: codex`)", set()
                )
            if target.backend not in names:
                raise _located(f"models[{i}].route[{j}]", f"unknown backend {target.backend!r}", names)
    seen: set[str] = set()
    for i, key in enumerate(config.keys):
        if key.name in seen:
            raise _located(f"keys[{i}].name", f"duplicate key name {key.name!r}", set())
        seen.add(key.name)


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


class UnsetVariable(ValueError):
    """``${VAR}`` with ``VAR`` unset and no default."""

    def __init__(self, name: str) -> None:
        super().__init__(f"${{{name}}} is not set (set it, or write ${{{name}:-}} for an empty default)")
        self.name = name


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment, shell-style: the default replaces an
    unset or empty variable. An unset ``${VAR}`` without a default raises :class:`UnsetVariable`."""
    values: Mapping[str, str] = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = values.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise UnsetVariable(name)
        return value

    return ENV_PATTERN.sub(sub, text)


def expand_tree(doc: Any, source: str, path: str = "") -> Any:
    """Every string value of a parsed document expanded, an unset variable located by its key."""
    if isinstance(doc, dict):
        return {k: expand_tree(v, source, f"{path}.{k}" if path else str(k)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [expand_tree(v, source, f"{path}[{i}]") for i, v in enumerate(doc)]
    if isinstance(doc, str) and "${" in doc:
        try:
            return expand_env(doc)
        except UnsetVariable as exc:
            raise ConfigError(source, path, str(exc)) from None
    return doc


def default_config() -> Config:
    """No file: one ``openai`` backend from the environment, SQLite state.

    Built without validation: this backend alone may lack its key (``make run`` on a fresh machine);
    the gateway then says so at start-up and answers each request with an error naming the variable.
    """
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    kind: HostKind = "openai-compatible" if base_url and "api.openai.com" not in base_url else "openai"
    backend = BackendConfig.model_construct(type=kind, base_url=base_url, api_keys_env=DEFAULT_KEY_ENV)
    return Config().model_copy(update={"backends": {"openai": backend}, "default_backend": "openai"})


def missing_key(backend: BackendConfig) -> str | None:
    """The variable to set when ``backend`` is the keyless default one, else None."""
    if backend.api_keys_env and not backend.keys() and not PROFILES[backend.type].signs_in:
        return backend.api_keys_env
    return None


def load_config(path: str | Path | None = None) -> Config:
    """The config from ``path``, else ``./modelwire.yaml`` when present, else the defaults."""
    found = _read(path)
    if found is None:
        return default_config()
    text, file = found
    doc = _parse_yaml(text, str(file))
    if not isinstance(doc, dict):
        raise ConfigError(str(file), "", "the top level must be a mapping")
    return parse_config(_relative_to(doc, file.resolve().parent), str(file))


def load_store(path: str | Path | None = None) -> str:
    """Only the ``store:`` URL of a config, as the gateway would resolve it.

    What the state commands need: an operator listing keys or usage must not have to set every
    upstream secret the gateway itself needs.
    """
    found = _read(path)
    if found is None:
        return DEFAULT_STORE
    text, file = found
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        doc = _parse_yaml(text, str(file))
    store = doc.get("store", DEFAULT_STORE) if isinstance(doc, dict) else DEFAULT_STORE
    if not isinstance(store, str):
        raise ConfigError(str(file), "store", "must be a sqlite:/// or postgresql:// URL")
    store = expand_tree(store, str(file), "store")
    return str(_relative_to({"store": store}, file.resolve().parent)["store"])


def _read(path: str | Path | None) -> tuple[str, Path] | None:
    """The text of the config file and its path; None when no file is given and none is here."""
    if path is None:
        path = Path("modelwire.yaml")
        if not path.exists():
            return None
    path = Path(path)
    try:
        return path.read_text(), path
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None


def _parse_yaml(text: str, source: str) -> Any:
    """The document with the environment expanded in its values.

    Expanding after parsing keeps a secret's characters (``#``, ``: ``) from ever being read as YAML.
    An unquoted ``${VAR}`` inside a flow mapping (``{key: ${VAR}}``) is not YAML until expanded, so
    such a file is expanded as text first; an unset variable is then located by its line.
    """
    try:
        return expand_tree(yaml.safe_load(text) or {}, source)
    except yaml.YAMLError:
        pass
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(expand_env(line))
        except UnsetVariable as exc:
            raise ConfigError(source, f"line {number}", str(exc)) from None
    try:
        return yaml.safe_load("\n".join(lines)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from None


def _relative_to(doc: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Relative SQLite and capture paths made absolute against the config file's directory."""
    store = doc.get("store")
    if isinstance(store, str) and store.startswith("sqlite:///") and store != "sqlite:///:memory:":
        file = store.removeprefix("sqlite:///")
        if file and not Path(file).is_absolute():
            doc = {**doc, "store": f"sqlite:///{directory / file}"}
    capture = doc.get("capture")
    path = capture.get("path") if isinstance(capture, dict) else None
    if isinstance(capture, dict) and isinstance(path, str) and not Path(path).is_absolute():
        doc = {**doc, "capture": {**capture, "path": str(directory / path)}}
    return doc


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """The config with command-line overrides (host, port, workers, log level, force_model,
    default_backend), each validated as if it were in the file; backends are left as loaded."""
    server = {k: v for k, v in overrides.items() if k in ServerConfig.model_fields and v is not None}
    top = {k: overrides[k] for k in ("force_model", "default_backend") if overrides.get(k) is not None}
    try:
        updated = config.model_copy(
            update={"server": ServerConfig.model_validate({**config.server.model_dump(), **server}), **top}
        )
        check_references(updated)
    except _Located as exc:
        raise ConfigError(config.source, exc.key, str(exc)) from None
    except ValidationError as exc:
        located = _config_error(config.source, exc)
        raise ConfigError(config.source, f"server.{located.key}", located.problem) from None
    return updated


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
        return ConfigError(source, f"{key}.{located.key}" if key else located.key, str(located))
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling; see the README's configuration reference)"
    return ConfigError(source, key, message)
