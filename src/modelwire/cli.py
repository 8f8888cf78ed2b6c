"""The ``modelwire`` command line: serve, chat, models, keys, usage, login."""

from __future__ import annotations

import asyncio
import csv
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from .errors import AuthenticationError, ModelwireError, UpstreamUnavailableError
from .providers.hosts import CODEX_REF, PROFILES, HostKind, WireAPI
from .providers.openai import OpenAI
from .types import BlockDelta, BlockStart, Finish, Message, Reasoning, Text, Usage

if TYPE_CHECKING:
    from rich.console import Console

    from .admin_client import AdminClient
    from .gateway.config import Config
    from .gateway.listing import ServedModels
    from .gateway.routing import Router
    from .gateway.store import KeyRecord, Store, UsageRow
    from .providers.catalog import Catalog
    from .providers.codex import Tokens, TokenStore
    from .providers.codex_login import DeviceCode

app = typer.Typer(
    name="modelwire",
    help="An OpenAI provider library and LLM gateway: one URL for OpenAI, Anthropic and Gemini clients.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console(*, stderr: bool = False) -> Console:
    """Rich output that does not cut lines or table cells short when piped to a file or program.
    rich is imported here, not with the module: `serve` prints nothing through it, and importing it
    would leave ~2 MiB of modules resident in every gateway process."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 10_000
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


@functools.cache
def err() -> Console:
    """The console on stderr: progress, notes and errors."""
    return _console(stderr=True)


def escape(text: str) -> str:
    """``text`` shown as is inside rich markup."""
    from rich.markup import escape

    return escape(text)


def main() -> None:
    app()


def _show_version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"modelwire {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """modelwire: serve the gateway, chat with a model, manage keys, read usage, upgrade the store."""


@app.command()
def chat(
    prompt: Annotated[
        str | None, typer.Argument(help="The prompt; read from stdin when omitted or '-'.")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to ask.")] = "gpt-5.1",
    api: Annotated[str, typer.Option(help="Upstream wire API: responses or chat.")] = "responses",
    reasoning: Annotated[
        str | None, typer.Option(help="Reasoning effort: none, minimal, low, medium, high.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="A system prompt.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default: $OPENAI_API_KEY).")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Base URL (default: $OPENAI_BASE_URL or OpenAI).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Host kind: openai, azure, codex, openai-compatible.")
    ] = None,
    max_output_tokens: Annotated[int | None, typer.Option(help="Cap on output tokens.")] = None,
) -> None:
    """Stream one reply to the terminal, then show usage and cost."""
    if api not in ("responses", "chat"):
        _fail("--api must be 'responses' or 'chat'", code=2)
    text = prompt if prompt not in (None, "-") else sys.stdin.read()
    if not text or not text.strip():
        _fail("nothing to ask: give a prompt or pipe one on stdin", code=2)
    kind = _host(host)
    signs_in = model.startswith(CODEX_REF) or (kind is not None and PROFILES[kind].signs_in)
    # A signed-in route takes only a key given here: one from the environment is for the API.
    key = api_key or (
        None if signs_in else os.environ.get("OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_API_KEY")
    )
    if not key and not signs_in:
        _fail("no API key: set OPENAI_API_KEY or pass --api-key", code=2)
    client = OpenAI(api_key=key, base_url=base_url, host=kind, api=_api(api), max_retries=2)
    messages = [Message(role="system", content=[Text(text=system)])] if system else []
    messages.append(Message(role="user", content=[Text(text=text)]))
    try:
        usage = asyncio.run(_stream(client, model, messages, reasoning, max_output_tokens))
    except AuthenticationError as exc:
        _fail(f"the upstream refused the key: {exc.message}")
    except UpstreamUnavailableError as exc:
        _fail(f"cannot reach {client.host.base_url}: {exc.message}")
    except ModelwireError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    cost = f" · ${usage.cost:.6f}" if usage.cost is not None else ""
    err().print(
        f"[dim]{model} · in {usage.input_tokens} (cached {usage.cached_input_tokens}) · "
        f"out {usage.output_tokens} (reasoning {usage.reasoning_tokens}){cost}[/dim]"
    )


async def _stream(
    client: OpenAI, model: str, messages: list[Message], effort: str | None, limit: int | None
) -> Usage:
    usage = Usage()
    kinds: dict[int, type] = {}
    try:
        stream = client.stream(
            model=model,
            messages=messages,
            reasoning_effort=effort,
            reasoning_summary="auto" if effort else None,
            max_output_tokens=limit,
        )
        async for event in stream:
            if isinstance(event, BlockStart):
                kinds[event.index] = type(event.part)
            elif isinstance(event, BlockDelta) and kinds.get(event.index) is Text:
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, BlockDelta) and kinds.get(event.index) is Reasoning:
                err().print(event.text, style="dim italic", end="")
            elif isinstance(event, Finish):
                usage = event.usage or usage
        sys.stdout.write("\n")
    finally:
        await client.aclose()
    return usage


def _host(value: str | None) -> HostKind | None:
    if value in (None, "openai", "azure", "codex", "openai-compatible"):
        return value  # type: ignore[return-value]
    _fail("--host must be openai, azure, codex or openai-compatible", code=2)


def _api(value: str) -> WireAPI:
    return "chat" if value == "chat" else "responses"


def _fail(message: str, *, code: int = 1) -> NoReturn:
    err().print(f"[bold red]error:[/bold red] {escape(message)}")
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------------- serve

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MODELWIRE_CONFIG",
        help="Config file (default: ./modelwire.yaml when present).",
    ),
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (config: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (config: server.port).")] = None,
    workers: Annotated[
        str | None, typer.Option(help="Worker processes, or auto for one per core (config: server.workers).")
    ] = None,
    force_model: Annotated[
        str | None,
        typer.Option("--force-model", help="Send every request to this model or backend/model ref."),
    ] = None,
    default_backend: Annotated[
        str | None, typer.Option("--default-backend", help="Backend for model names no rule matches.")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option("--log-level", help="debug, info, warning or error (config: server.log_level)."),
    ] = None,
) -> None:
    """Run the gateway: one URL for OpenAI, Anthropic and Gemini clients."""
    from .gateway.config import ConfigError
    from .gateway.server import serve as run

    overrides = {
        "host": host,
        "port": port,
        "workers": workers,
        "force_model": force_model,
        "default_backend": default_backend,
        "log_level": log_level,
    }
    try:
        run(config, {k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        _fail(str(exc), code=2)


# ---------------------------------------------------------------------------------------- the store

StateConfig = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MODELWIRE_CONFIG",
        help="The gateway's config file, whose store: is used (default: ./modelwire.yaml when present).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="A JSON list of objects with raw numbers.")]
CsvOption = Annotated[bool, typer.Option("--csv", help="CSV with a header row and raw numbers.")]
DEFAULT_SQLITE = Path(".modelwire") / "state.db"


@dataclass(frozen=True, slots=True)
class _Location:
    """Where a command's store is: its URL and, for a SQLite file, the absolute path."""

    url: str
    file: Path | None

    @classmethod
    def of(cls, url: str) -> _Location:
        from .gateway.database import parse_target

        try:
            target = parse_target(url)
        except ValueError as exc:
            _fail(str(exc), code=2)
        if target.dialect != "sqlite" or target.where is None:
            return cls(url, None)
        return cls(url, Path(target.where).absolute())

    @property
    def default(self) -> bool:
        return self.file == Path.cwd() / DEFAULT_SQLITE

    def shown(self) -> str:
        """The path of a SQLite file; a database URL with its password masked."""
        from .gateway.database import parse_target

        if self.file is not None:
            return str(self.file)
        return parse_target(self.url).display


def _locate(config: str | None) -> _Location:
    """The store the gateway with this config uses, named on stderr unless it is the default one.

    Naming it is what makes a wrong guess visible: run from another directory without the
    config, the CLI would otherwise quietly read (or create) a different store.
    """
    from .gateway.config import ConfigError, load_store

    try:
        location = _Location.of(load_store(config))
    except ConfigError as exc:
        _fail(str(exc), code=2)
    if not location.default:
        err().print(f"[dim]store: {escape(location.shown())}[/dim]")
    return location


def _existing(config: str | None) -> _Location:
    """As :func:`_locate`, for commands that must not create a store: no SQLite file is an error."""
    location = _locate(config)
    if location.file is not None and not location.file.exists():
        _fail(
            f"no store at {location.file} (nothing was created there): pass --config with the "
            "gateway's config file, or set MODELWIRE_CONFIG to it"
        )
    return location


def _config(path: str | None) -> Config:
    from .gateway.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc), code=2)


@contextmanager
def _store_errors(location: _Location) -> Iterator[None]:
    """A store a newer modelwire upgraded, or one out of reach, as a one-line error and exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from .gateway.database import StoreError
    from .gateway.store import SchemaError, error_cause

    try:
        yield
    except SchemaError as exc:
        _fail(str(exc))
    except (SQLAlchemyError, StoreError) as exc:
        _fail(f"cannot use the store {location.shown()}: {error_cause(exc)}")


@contextmanager
def _opened(location: _Location) -> Iterator[Store]:
    from .gateway.store import Store

    with _store_errors(location), Store(location.url) as store:
        yield store


# --------------------------------------------------------------------------------------- output


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _usd(value: float | None) -> str:
    """US dollars to 6 decimals, trailing zeros trimmed to 2: 0.000042, 12.50; `<0.000001` for a
    positive amount that would print as zero."""
    if value is None:
        return "-"
    if 0 < value < 0.0000005:
        return "<0.000001"
    whole, _, decimals = f"{value:.6f}".partition(".")
    return f"{whole}.{decimals.rstrip('0').ljust(2, '0')}"


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@dataclass(frozen=True, slots=True)
class _Field:
    """An output column: its JSON and CSV name and, when shown in tables, its header and cell."""

    name: str
    header: str | None = None
    cell: Callable[[Any], str] = _text


def _format(as_json: bool, as_csv: bool) -> str:
    if as_json and as_csv:
        _fail("choose one of --json and --csv", code=2)
    return "json" if as_json else "csv" if as_csv else "table"


def _emit(rows: list[dict[str, Any]], fields: Sequence[_Field], fmt: str) -> None:
    """Rows as JSON, CSV or a table; an empty table is "no records" on stderr (JSON: ``[]``,
    CSV: the header alone), so a script reading stdout gets well-formed output either way."""
    if fmt == "json":
        ordered = [{f.name: row[f.name] for f in fields} for row in rows]  # CSV's column order
        sys.stdout.write(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(f.name for f in fields)
        writer.writerows([_csv_cell(row[f.name]) for f in fields] for row in rows)
    elif not rows:
        err().print("no records")
    else:
        from rich.table import Table

        shown = [f for f in fields if f.header is not None]
        table = Table(*(f.header or "" for f in shown))
        for row in rows:
            table.add_row(*(f.cell(row[f.name]) for f in shown))
        _console().print(table)


def _csv_cell(value: Any) -> str:
    """Raw values, never in exponent form (a float keeps its shortest exact digits: 0.000042)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# -------------------------------------------------------------------------------------------- keys

keys_app = typer.Typer(
    help="Client keys kept in the store (hashed; a new key is shown once).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")

KEY_FIELDS = (
    _Field("name", "name"),
    _Field("id", "id"),
    _Field("prefix", "prefix", lambda p: f"{p}…"),
    _Field("models", "models", ", ".join),
    _Field("rpm", "rpm"),
    _Field("tpm", "tpm"),
    _Field("budget_usd", "budget $", _usd),
    _Field("spent_usd", "spent $", _usd),
    _Field("created_at"),
    _Field("expires_at", "expires", _when),
    _Field("state", "state"),
    _Field("admin"),
)
RemoteUrl = Annotated[
    str | None,
    typer.Option("--url", envvar="MODELWIRE_URL", help="A remote gateway: use its admin API, not a store."),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key", envvar="MODELWIRE_ADMIN_KEY", show_default=False, help="An admin key, with --url."
    ),
]


def _remote(url: str, admin_key: str | None) -> AdminClient:
    from .admin_client import AdminClient, AdminError

    try:
        return AdminClient(url, admin_key or "")
    except AdminError as exc:
        _fail(str(exc), code=2)


@contextmanager
def _admin_errors() -> Iterator[None]:
    """The gateway's own words for a refusal, or why it could not be reached, and exit 1."""
    from .admin_client import AdminError

    try:
        yield
    except AdminError as exc:
        _fail(str(exc))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the key.")],
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Glob of allowed models; repeat for several.")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="Spending cap in US dollars.")
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d, 12h, 90m.")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An operator's key: admin API and /ui only.")
    ] = False,
    config: StateConfig = None,
    url: RemoteUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Create a client key and print it once (alone on stdout)."""
    if url:
        body = {"name": name, "models": _patterns(models), "rpm": rpm, "tpm": tpm, "budget_usd": budget_usd}
        body |= {"expires_in_seconds": _duration(expires) if expires else None, "admin": admin}
        with _admin_errors():
            created = _remote(url, admin_key).create_key(body)
        _console().print(created["secret"])
        err().print(
            f"[dim]key {created['key']['name']!r} ({created['key']['id']}) created; "
            "it is shown only now, so keep it safe.[/dim]"
        )
        return
    expires_at = time.time() + _duration(expires) if expires else None
    location = _locate(config)
    new = location.file is not None and not location.file.exists()
    with _opened(location) as store:
        try:
            secret, record = store.create_key(
                name=name,
                models=_patterns(models),
                rpm=rpm,
                tpm=tpm,
                budget_usd=budget_usd,
                expires_at=expires_at,
                admin=admin,
            )
        except ValueError as exc:
            _fail(str(exc), code=2)
    if new:
        err().print(f"[dim]created a new store at {escape(location.shown())}[/dim]")
    _console().print(secret)
    err().print(
        f"[dim]key {record.name!r} ({record.id}) created; it is shown only now, so keep it safe.[/dim]"
    )


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonOption = False,
    as_csv: CsvOption = False,
    config: StateConfig = None,
    url: RemoteUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """List client keys (never their secrets) and what each has spent, all time, in US dollars."""
    fmt = _format(as_json, as_csv)
    if url:
        with _admin_errors():
            views = _remote(url, admin_key).keys(include_revoked=all_keys)
        _emit([{f.name: view.get(f.name) for f in KEY_FIELDS} for view in views], KEY_FIELDS, fmt)
        return
    with _opened(_existing(config)) as store:
        records = store.list_keys(include_revoked=all_keys)
        spent = store.spent_by_key()
    now = time.time()
    _emit([_key_row(r, spent.get(r.name, 0.0), now) for r in records], KEY_FIELDS, fmt)


def _key_row(record: KeyRecord, spent: float, now: float) -> dict[str, Any]:
    state = "revoked" if record.revoked else "expired" if record.expired(now) else "active"
    return {
        "name": record.name,
        "id": record.id,
        "prefix": record.prefix,
        "models": list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": record.budget_usd,
        "spent_usd": spent,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "state": state,
        "admin": record.admin,
    }


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name or id.")],
    config: StateConfig = None,
    url: RemoteUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Revoke a client key; running gateways refuse it within a second."""
    if url:
        from .admin_client import AdminError

        try:
            _remote(url, admin_key).revoke_key(name)
        except AdminError as exc:
            _fail(f"no active key named {name!r}" if exc.status == 404 else str(exc))
        err().print(f"key {name!r} revoked")
        return
    with _opened(_existing(config)) as store:
        if not store.revoke_key(name):
            _fail(f"no active key named {name!r}", code=1)
    err().print(f"key {name!r} revoked")


# ------------------------------------------------------------------------------------------- usage

GROUPINGS = ("day", "hour", "key", "model", "backend")


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="Window, e.g. 7d, 24h, 30m.")] = "7d",
    by: Annotated[
        str, typer.Option(help="Group by day or hour (UTC, oldest first), key, model or backend.")
    ] = "model",
    as_json: JsonOption = False,
    as_csv: CsvOption = False,
    config: StateConfig = None,
    url: RemoteUrl = None,
    admin_key: AdminKey = None,
) -> None:
    """Requests, tokens, cost (US dollars), error rate and latency from the usage records."""
    fmt = _format(as_json, as_csv)
    if by not in GROUPINGS:
        _fail(f"--by must be one of {', '.join(GROUPINGS)}", code=2)
    start = time.time() - _duration(since)
    if url:
        with _admin_errors():
            views = _remote(url, admin_key).usage(by=by, since=start)
        _emit([{by: v["group"], **_remote_totals(v)} for v in views], _usage_fields(by), fmt)
        return
    with _opened(_existing(config)) as store:
        rows = store.usage_summary(since=start, by=by)
    _emit([{by: r.group, **_usage_totals(r)} for r in rows], _usage_fields(by), fmt)


def _usage_totals(row: UsageRow) -> dict[str, Any]:
    return {
        "requests": row.requests,
        "errors": row.errors,
        "error_rate": row.error_rate,
        "input_tokens": row.input_tokens,
        "cached_tokens": row.cached_tokens,
        "output_tokens": row.output_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "cost_usd": row.cost,
        "p50_ms": row.p50_ms,
        "p95_ms": row.p95_ms,
    }


def _remote_totals(view: dict[str, Any]) -> dict[str, Any]:
    """An admin API usage row as the local one's columns."""
    requests, errors = int(view["requests"]), int(view["errors"])
    totals = {
        name: view[name] for name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
    }
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        **totals,
        "cost_usd": view["cost_usd"],
        "p50_ms": view["p50_ms"],
        "p95_ms": view["p95_ms"],
    }


def _usage_fields(by: str) -> tuple[_Field, ...]:
    return (
        _Field(by, by),
        _Field("requests", "requests"),
        _Field("input_tokens", "input"),
        _Field("cached_tokens", "cached"),
        _Field("output_tokens", "output"),
        _Field("reasoning_tokens", "reasoning"),
        _Field("cost_usd", "cost $", _usd),
        _Field("errors"),
        _Field("error_rate", "errors", _percent),
        _Field("p50_ms", "p50 ms", _ms),
        _Field("p95_ms", "p95 ms", _ms),
    )


# ------------------------------------------------------------------------------------------ models

LIST_TIMEOUT = 10.0  # seconds to wait for the upstream's model list
MODEL_FIELDS = (
    _Field("model", "model"),
    _Field("source", "from"),
    _Field("route", "route", " → ".join),
    _Field("context_window", "context"),
    _Field("max_output_tokens"),
    _Field("input_usd_per_1m", "$ in / 1M"),
    _Field("cached_input_usd_per_1m"),
    _Field("output_usd_per_1m", "$ out / 1M"),
)


@app.command()
def models(as_json: JsonOption = False, as_csv: CsvOption = False, config: StateConfig = None) -> None:
    """The models the gateway serves: its models: rules, then those the default backend's
    upstream lists, each with its route and the catalog's context window and prices."""
    from .gateway.routing import Router
    from .providers.catalog import Catalog

    fmt = _format(as_json, as_csv)
    cfg = _config(config)
    router, catalog = Router(cfg), Catalog()
    served = asyncio.run(_served(cfg, router, catalog))
    if served.error is not None:
        reason = (served.error.strip().splitlines() or ["no reason given"])[0]
        err().print(
            f"cannot list the models of backend {cfg.default_backend!r} ({escape(reason)}); "
            "showing the configured ones only"
        )
    listed = [(m, "config") for m in served.configured] + [(m, "upstream") for m in served.discovered]
    rows = [_model_row(name, source, router, catalog) for name, source in listed]
    _emit([row for row in rows if row is not None], MODEL_FIELDS, fmt)


async def _served(cfg: Config, router: Router, catalog: Catalog) -> ServedModels:
    """The gateway's own listing (``served_models``), bounded by :data:`LIST_TIMEOUT`."""
    from .gateway.listing import ServedModels, served_models
    from .gateway.upstream import Backend
    from .providers.transport import AiohttpTransport

    transport = AiohttpTransport()
    name = cfg.default_backend
    backend = Backend(name, cfg.backends[name], catalog, transport) if name else None
    try:
        async with asyncio.timeout(LIST_TIMEOUT):
            return await served_models(router, backend)
    except TimeoutError:
        return ServedModels(router.public_models(), [], f"no answer within {LIST_TIMEOUT:g} s")
    finally:
        await transport.aclose()


def _model_row(name: str, source: str, router: Router, catalog: Catalog) -> dict[str, Any] | None:
    """A model's route and catalog facts; None for an upstream id no route can take."""
    try:
        route = router.resolve(name)
    except ModelwireError:
        return None
    profile = catalog.profile(route.targets[0].model)
    price = profile.price
    return {
        "model": name,
        "source": source,
        "route": [t.spec for t in route.targets],
        "context_window": profile.context_window,
        "max_output_tokens": profile.max_output,
        "input_usd_per_1m": price.input if price else None,
        "cached_input_usd_per_1m": price.cached_input if price else None,
        "output_usd_per_1m": price.output if price else None,
    }


# ---------------------------------------------------------------------------------------------- db

db_app = typer.Typer(help="The store's schema revision, and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: StateConfig = None) -> None:
    """Bring the store's schema to this modelwire's newest revision (the gateway does so on start)."""
    from .gateway.store import upgrade_schema

    location = _existing(config)
    with _store_errors(location):
        done = upgrade_schema(location.url)
    _console().print(done.describe())


@db_app.command("current")
def db_current(config: StateConfig = None) -> None:
    """The store's schema revision, and the newest this modelwire knows."""
    from .gateway.migrations import HEAD, REVISIONS
    from .gateway.store import schema_revision

    location = _existing(config)
    with _store_errors(location):
        revision, legacy = schema_revision(location.url)
    out = _console()
    out.print(f"store revision: {_revision_label(revision, legacy)}")
    out.print(f"modelwire head: {HEAD}")
    if revision is not None and revision not in REVISIONS:
        err().print("the store is newer than this modelwire: upgrade modelwire to use it")
    elif revision != HEAD:
        err().print("run `modelwire db upgrade` (or start the gateway) to upgrade the store")


def _revision_label(revision: str | None, legacy: bool) -> str:
    if revision is not None:
        return revision
    return "none (made before schema versioning)" if legacy else "none (empty database)"


# ----------------------------------------------------------------------------------------- helpers

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    unit = text[-1:].lower()
    try:
        return float(text[:-1]) * _UNITS[unit] if unit in _UNITS else float(text)
    except ValueError:
        _fail(f"cannot read {text!r} as a duration (use e.g. 30d, 12h, 90m)", code=2)


def _patterns(models: list[str] | None) -> list[str]:
    found = [p.strip() for m in models or ["*"] for p in m.split(",") if p.strip()]
    return found or ["*"]


# ------------------------------------------------------------------------------------------- login


@app.command()
def login(
    device_code: Annotated[
        bool,
        typer.Option(
            "--device-code", help="Sign in on any other device with a one-time code (no browser here)."
        ),
    ] = False,
    config: StateConfig = None,
    issuer: Annotated[str, typer.Option(help="The OAuth issuer.")] = "https://auth.openai.com",
    port: Annotated[int, typer.Option(help="Local port for the browser sign-in's redirect.")] = 1455,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the link instead of opening it.")
    ] = False,
) -> None:
    """Sign in with a ChatGPT plan for the Codex route (backends of type codex).

    The tokens go to $CODEX_HOME/auth.json (mode 0600), where the Codex CLI keeps them too; when
    the config's store is PostgreSQL, into that store instead, encrypted with
    MODELWIRE_CREDENTIALS_KEY, for every replica of the gateway to share.
    """
    from .errors import ModelwireError

    with _token_store(config) as store:
        try:
            tokens = asyncio.run(_sign_in(store, device_code, issuer, port, no_browser))
        except TimeoutError:
            _fail("no sign-in arrived within 5 minutes")
        except (ModelwireError, OSError) as exc:
            _fail(str(exc))
    account = f" (account {tokens.account_id})" if tokens.account_id else ""
    err().print(f"Signed in{account}; tokens saved to {escape(store.where)}")


async def _sign_in(store: TokenStore, device_code: bool, issuer: str, port: int, no_browser: bool) -> Tokens:
    from .providers import codex_login

    if device_code:
        return await codex_login.device_login(store=store, issuer=issuer, show=_show_device_code)

    def show(url: str) -> None:
        err().print(f"Open this link to sign in:\n{escape(url)}")
        if not no_browser:
            import webbrowser

            webbrowser.open(url)

    return await codex_login.login(store=store, issuer=issuer, port=port, show=show)


def _show_device_code(code: DeviceCode) -> None:
    from .providers.codex_login import DEVICE_WAIT

    minutes = f"{DEVICE_WAIT / 60:g}"
    err().print(
        f"To sign in, open this link on any device:\n  {escape(code.verification_url)}\n"
        f"and enter this one-time code (it expires in {minutes} minutes):\n  "
        f"[bold]{escape(code.user_code)}[/bold]\n"
        "Never share this code: device codes are a phishing target. Waiting for the sign-in…"
    )


@contextmanager
def _token_store(config: str | None) -> Iterator[TokenStore]:
    """Where a sign-in goes: the gateway's PostgreSQL store (sealed), else the Codex CLI's file."""
    from .gateway.config import ConfigError, load_store
    from .gateway.database import parse_target
    from .providers.codex import FileTokenStore

    try:
        url = load_store(config)
        shared = parse_target(url).dialect == "postgresql"
    except (ConfigError, ValueError) as exc:
        _fail(str(exc), code=2)
    if not shared:
        yield FileTokenStore()
        return
    from .gateway.credentials import Cipher, CredentialsKeyError
    from .gateway.signin_store import DatabaseTokenStore

    try:
        cipher = Cipher.from_env()
    except CredentialsKeyError as exc:
        _fail(str(exc), code=2)
    location = _Location.of(url)
    err().print(f"[dim]store: {escape(location.shown())}[/dim]")
    with _opened(location) as store:
        yield DatabaseTokenStore(store.engine, cipher)


from . import cli_media  # noqa: E402, F401 - registers image, speak, transcribe and video
