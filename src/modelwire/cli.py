"""The ``modelwire`` command line: serve, chat, models, keys, usage, login."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from .errors import AuthenticationError, ModelwireError, UpstreamUnavailableError
from .providers.hosts import HostKind, WireAPI
from .providers.openai import OpenAI
from .types import BlockDelta, BlockStart, Finish, Message, Reasoning, Text, Usage

app = typer.Typer(
    name="modelwire",
    help="An OpenAI provider library and LLM gateway: one URL for OpenAI, Anthropic and Gemini clients.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(*, stderr: bool = False) -> Console:
    """Rich output that does not cut lines or table cells short when piped to a file or program."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 10_000
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


err = _console(stderr=True)


def main() -> None:
    app()


@app.callback()
def _root() -> None:
    """modelwire: serve the gateway, chat with a model, manage keys and read usage."""


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
    key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_API_KEY")
    if not key and host != "codex":
        _fail("no API key: set OPENAI_API_KEY or pass --api-key", code=2)
    client = OpenAI(api_key=key, base_url=base_url, host=_host(host), api=_api(api), max_retries=2)
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
    err.print(
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
                err.print(event.text, style="dim italic", end="")
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
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------------- serve

ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="Config file (default: ./modelwire.yaml when present).")
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (config: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (config: server.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (config: server.workers).")] = None,
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


# -------------------------------------------------------------------------------------------- keys

keys_app = typer.Typer(
    help="Client keys kept in the store (hashed; a new key is shown once).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _store(config: str | None) -> Any:
    from .gateway.config import ConfigError, load_config
    from .gateway.store import Store

    try:
        return Store(load_config(config).store)
    except ConfigError as exc:
        _fail(str(exc), code=2)


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
    config: ConfigOption = None,
) -> None:
    """Create a client key and print it once."""
    expires_at = time.time() + _duration(expires) if expires else None
    with _store(config) as store:
        try:
            secret, record = store.create_key(
                name=name,
                models=_patterns(models),
                rpm=rpm,
                tpm=tpm,
                budget_usd=budget_usd,
                expires_at=expires_at,
            )
        except ValueError as exc:
            _fail(str(exc), code=2)
    out = _console()
    out.print(secret)
    err.print(f"[dim]key {record.name!r} ({record.id}) created; it is shown only now, so keep it safe.[/dim]")


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    config: ConfigOption = None,
) -> None:
    """List client keys (never their secrets)."""
    from rich.table import Table

    with _store(config) as store:
        records = store.list_keys(include_revoked=all_keys)
    table = Table("name", "id", "prefix", "models", "rpm", "tpm", "budget $", "expires", "state")
    now = time.time()
    for r in records:
        state = "revoked" if r.revoked else ("expired" if r.expires_at and r.expires_at <= now else "active")
        table.add_row(
            r.name,
            r.id,
            r.prefix + "…",
            ", ".join(r.models),
            _opt(r.rpm),
            _opt(r.tpm),
            _opt(r.budget_usd),
            _when(r.expires_at),
            state,
        )
    _console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name or id.")], config: ConfigOption = None
) -> None:
    """Revoke a client key (within 30 s on running gateways)."""
    with _store(config) as store:
        if not store.revoke_key(name):
            _fail(f"no active key named {name!r}", code=1)
    err.print(f"key {name!r} revoked")


# ------------------------------------------------------------------------------------------- usage


@app.command()
def usage(
    since: Annotated[str, typer.Option(help="Window, e.g. 7d, 24h, 30m.")] = "7d",
    by: Annotated[str, typer.Option(help="Group by key, model or backend.")] = "model",
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, cost, error rate and latency from the usage records."""
    from rich.table import Table

    if by not in ("key", "model", "backend"):
        _fail("--by must be key, model or backend", code=2)
    with _store(config) as store:
        rows = store.usage_summary(since=time.time() - _duration(since), by=by)
    table = Table(
        by, "requests", "input", "cached", "output", "reasoning", "cost $", "errors", "p50 ms", "p95 ms"
    )
    for r in rows:
        table.add_row(
            r.group or "-",
            str(r.requests),
            str(r.input_tokens),
            str(r.cached_tokens),
            str(r.output_tokens),
            str(r.reasoning_tokens),
            f"{r.cost:.4f}",
            f"{r.error_rate:.1%}",
            _ms(r.p50_ms),
            _ms(r.p95_ms),
        )
    _console().print(table)


# ------------------------------------------------------------------------------------------ models


@app.command()
def models(config: ConfigOption = None) -> None:
    """The model names the gateway serves, and the catalog's prices."""
    from rich.table import Table

    from .gateway.config import ConfigError, load_config
    from .gateway.routing import Router
    from .providers.catalog import Catalog

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), code=2)
    router, catalog = Router(cfg), Catalog()
    table = Table("model", "route", "context", "$ in / 1M", "$ out / 1M")
    names = router.public_models() or catalog.models()
    for name in names:
        route = router.resolve(name)
        profile = catalog.profile(route.targets[0].model)
        price = profile.price
        table.add_row(
            name,
            " → ".join(t.spec for t in route.targets),
            _opt(profile.context_window),
            _opt(price.input if price else None),
            _opt(price.output if price else None),
        )
    _console().print(table)


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


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


# ------------------------------------------------------------------------------------------- login


@app.command()
def login(
    issuer: Annotated[str, typer.Option(help="The OAuth issuer.")] = "https://auth.openai.com",
    port: Annotated[int, typer.Option(help="Local port for the sign-in redirect.")] = 1455,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the link instead of opening it.")
    ] = False,
) -> None:
    """Sign in with a ChatGPT plan for the Codex route (backends of type codex)."""
    import webbrowser

    from .errors import ModelwireError
    from .providers.codex import codex_home
    from .providers.codex import login as run_login

    def show(url: str) -> None:
        err.print(f"Open this link to sign in:\n{url}")
        if not no_browser:
            webbrowser.open(url)

    try:
        tokens = asyncio.run(run_login(issuer=issuer, port=port, show=show))
    except TimeoutError:
        _fail("no sign-in arrived within 5 minutes")
    except (ModelwireError, OSError) as exc:
        _fail(str(exc))
    account = f" (account {tokens.account_id})" if tokens.account_id else ""
    err.print(f"Signed in{account}; tokens saved to {codex_home() / 'auth.json'}")
