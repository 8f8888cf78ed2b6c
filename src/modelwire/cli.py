"""The ``modelwire`` command line: serve, chat, models, keys, usage, login."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

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
err = Console(stderr=True, highlight=False)


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
    err.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code)
