"""The ``modelwire`` CLI against a running gateway: keys, usage, models, and ``serve``'s routing flags.

Key and usage tests run on both stores: a SQLite file, and the local PostgreSQL server with a schema of
their own (``?options=-csearch_path=…`` in the ``store:`` URL, so the CLI and the gateway share it
exactly as configured), dropped afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml
from sqlalchemy import create_engine, select, text

from modelwire.gateway.store import Store, keys_table, parse_store_url, usage_table

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, MODELWIRE, RunningGateway, base_config, start_gateway

PG_URL = os.environ.get("MODELWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
USAGE_KEY = "sk-client-usage-0000000000"
USER = [{"role": "user", "content": "q"}]
SECRET = re.compile(r"mw-[A-Za-z0-9_-]{40,}")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def cli(config: Path, *args: str, wide: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``modelwire <args> --config <config>``; ``wide`` gives the tables a wide terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if wide:
        env["COLUMNS"] = "250"
    return subprocess.run(
        [MODELWIRE, *args, "--config", str(config)], capture_output=True, text=True, timeout=60, env=env
    )


def parse_table(output: str) -> list[dict[str, str]]:
    """The rows of a rich table as dicts keyed by the header cells."""
    header: list[str] | None = None
    rows = []
    for line in output.splitlines():
        if line.startswith("┃"):
            header = [cell.strip() for cell in line.strip().strip("┃").split("┃")]
        elif line.startswith("│") and header is not None:
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def row_for(rows: list[dict[str, str]], column: str, value: str) -> dict[str, str]:
    found = [row for row in rows if row[column] == value]
    assert len(found) == 1, (value, rows)
    return found[0]


def sdk(gateway: RunningGateway, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def ask(gateway: RunningGateway, key: str, model: str) -> str | None:
    with sdk(gateway, key) as client:
        completion = client.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]
    return completion.choices[0].message.content


def refused(gateway: RunningGateway, key: str) -> None:
    """The key is refused with 401; then a good key clears this address's failure count (lockout)."""
    with sdk(gateway, key) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=USER)  # type: ignore[arg-type]
    ask(gateway, CLIENT_KEY, "chat-model")


def create_key(gateway: RunningGateway, name: str, *options: str) -> str:
    result = cli(gateway.config_path, "keys", "create", "--name", name, *options)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n" and SECRET.fullmatch(secret), result.stdout
    return secret


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------------------------
# A gateway per store kind
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('cli-sqlite')}/state.db"
        return
    schema = f"mw_cli_{uuid.uuid4().hex[:16]}"
    engine = create_engine(parse_store_url(PG_URL))
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, store_url: str
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("cli")
    config = base_config(upstream_server, tmp)
    config["store"] = store_url
    config["backends"]["usage_be"] = {
        "type": "openai-compatible",
        "api": "chat",
        "base_url": upstream_server.url,
        "api_key": "sk-up-usage",
    }
    config["models"] = [
        {"name": "gpt-test", "route": "compat/gpt-4.1"},
        {"name": "usage-model", "route": "usage_be/gpt-usage-upstream"},
        *config["models"],
    ]
    config["keys"] = [*config["keys"], {"key": USAGE_KEY, "name": "usage-only"}]
    running = start_gateway(config, tmp, name="cli-gateway")
    try:
        yield running
    finally:
        running.stop()


# ----------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------


def test_keys_create_list_and_use(upstream: FakeUpstream, gateway: RunningGateway, store_url: str) -> None:
    name = unique("alice")
    options = [
        "--models",
        "gpt-*",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--budget-usd",
        "20",
        "--expires",
        "30d",
    ]
    created = time.time()
    result = cli(gateway.config_path, "keys", "create", "--name", name, *options)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n" and SECRET.fullmatch(secret), result.stdout  # the key, only
    assert secret not in result.stderr and name in result.stderr

    listed = cli(gateway.config_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    row = row_for(parse_table(listed.stdout), "name", name)
    assert row["prefix"] == secret[:8] + "…"
    assert (row["models"], row["rpm"], row["tpm"], row["budget $"], row["state"]) == (
        "gpt-*",
        "60",
        "100000",
        "20.0",
        "active",
    )
    with Store(store_url) as store:
        record = next(k for k in store.list_keys() if k.name == name)
        assert record.id == row["id"]
        assert record.expires_at == pytest.approx(created + 30 * 86400, abs=120)
        with store.engine.connect() as conn:
            stored = [dict(r) for r in conn.execute(select(keys_table)).mappings()]
    assert secret not in repr(stored)  # hashed at rest

    upstream.script(Reply.text("glob ok"), Reply.text("responses ok"))
    assert ask(gateway, secret, "gpt-test") == "glob ok"
    with sdk(gateway, secret) as client:
        assert client.responses.create(model="gpt-test", input="q").output_text == "responses ok"
        for model in ("chat-model", "compat/gpt-4.1", "resp-model"):
            with pytest.raises(openai.PermissionDeniedError):
                client.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]
    assert len(upstream.requests) == 2


def test_keys_revoke(upstream: FakeUpstream, gateway: RunningGateway, store_url: str) -> None:
    name = unique("bob")
    secret = create_key(gateway, name, "--models", "gpt-*")
    result = cli(gateway.config_path, "keys", "revoke", name)  # before its first use: nothing cached
    assert result.returncode == 0, result.stderr
    refused(gateway, secret)
    everything = parse_table(cli(gateway.config_path, "keys", "list", "--all").stdout)
    assert row_for(everything, "name", name)["state"] == "revoked"
    again = cli(gateway.config_path, "keys", "revoke", name)
    assert again.returncode == 1 and name in again.stderr

    other = unique("carol")  # by id this time
    other_secret = create_key(gateway, other)
    with Store(store_url) as store:
        key_id = next(k for k in store.list_keys() if k.name == other).id
    assert cli(gateway.config_path, "keys", "revoke", key_id).returncode == 0
    refused(gateway, other_secret)
    with Store(store_url) as store:
        assert {name, other}.isdisjoint(k.name for k in store.list_keys())


def test_expired_key_is_refused(upstream: FakeUpstream, gateway: RunningGateway, store_url: str) -> None:
    name = unique("brief")
    secret = create_key(gateway, name, "--expires", "4s")
    with Store(store_url) as store:
        expires_at = next(k for k in store.list_keys() if k.name == name).expires_at
    assert expires_at is not None
    upstream.script(Reply.text("still valid"))
    assert ask(gateway, secret, "gpt-test") == "still valid"  # used (and cached) while valid
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)
    refused(gateway, secret)
    row = row_for(parse_table(cli(gateway.config_path, "keys", "list").stdout), "name", name)
    assert row["state"] == "expired"


def test_duplicate_key_names_are_refused(gateway: RunningGateway) -> None:
    name = unique("dup")
    create_key(gateway, name)
    result = cli(gateway.config_path, "keys", "create", "--name", name)
    assert result.returncode == 2
    assert result.stdout == "" and "already exists" in " ".join(result.stderr.split())


def test_key_tables_are_complete_when_piped(tmp_path: Path) -> None:
    """``keys list | …`` (no terminal): every name and id whole, or ``keys revoke <id>`` is guesswork."""
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"store": f"sqlite:///{tmp_path}/state.db"}))
    name = unique("nightly-ci-pipeline-bot")
    assert cli(path, "keys", "create", "--name", name).returncode == 0
    result = cli(path, "keys", "list", wide=False)
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        key_id = next(k for k in store.list_keys() if k.name == name).id
    assert name in result.stdout and key_id in result.stdout, result.stdout


# ----------------------------------------------------------------------------------------------
# usage
# ----------------------------------------------------------------------------------------------

EXPECTED_USAGE = {"requests": "5", "input": "38", "output": "15", "cached": "0", "errors": "20.0%"}


@pytest.fixture(scope="module")
def usage_traffic(upstream_server: FakeUpstream, gateway: RunningGateway) -> RunningGateway:
    """Five requests by ``usage-only`` to ``usage-model`` (its own backend): 38 in, 15 out, one error."""
    upstream = upstream_server
    violations = len(upstream.violations)
    upstream.for_model(
        "gpt-usage-upstream",
        Reply.text("one", usage=(10, 5)),
        Reply.text("two", usage=(20, 7)),
        Reply.text("three four", usage=(3, 2)),
        Reply.text("five", usage=(5, 1)),
        Reply.error(400, "the upstream did not like it"),
    )
    with sdk(gateway, USAGE_KEY) as client:
        client.chat.completions.create(model="usage-model", messages=USER)  # type: ignore[arg-type]
        client.chat.completions.create(model="usage-model", messages=USER)  # type: ignore[arg-type]
        list(client.chat.completions.create(model="usage-model", messages=USER, stream=True))  # type: ignore[arg-type]
        client.responses.create(model="usage-model", input="q")  # translated to the Chat upstream
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="usage-model", messages=USER)  # type: ignore[arg-type]
    assert upstream.violations[violations:] == []
    deadline = time.monotonic() + 5
    with Store(gateway.config["store"]) as store, store.engine.connect() as conn:
        count = select(usage_table.c.id).where(usage_table.c.key_name == "usage-only")
        while len(conn.execute(count).all()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    return gateway


@pytest.mark.parametrize(("by", "group"), [("key", "usage-only"), ("model", "usage-model")])
def test_usage_by_key_and_model(usage_traffic: RunningGateway, by: str, group: str) -> None:
    result = cli(usage_traffic.config_path, "usage", "--since", "1h", "--by", by)
    assert result.returncode == 0, result.stderr
    row = row_for(parse_table(result.stdout), by, group)
    assert {k: row[k] for k in EXPECTED_USAGE} == EXPECTED_USAGE, row


def test_usage_by_backend(usage_traffic: RunningGateway) -> None:
    """The request the upstream refused was still that backend's: it counts in its row and error rate."""
    result = cli(usage_traffic.config_path, "usage", "--since", "1h", "--by", "backend")
    assert result.returncode == 0, result.stderr
    row = row_for(parse_table(result.stdout), "backend", "usage_be")
    assert {k: row[k] for k in EXPECTED_USAGE} == EXPECTED_USAGE, row


def test_usage_rejects_a_bad_grouping(tmp_path: Path) -> None:
    path = tmp_path / "usage.yaml"
    path.write_text(yaml.safe_dump({"store": f"sqlite:///{tmp_path}/state.db"}))
    result = cli(path, "usage", "--by", "colour")
    assert result.returncode == 2 and "--by" in result.stderr


# ----------------------------------------------------------------------------------------------
# models, serve flags
# ----------------------------------------------------------------------------------------------


def test_models_lists_public_models_with_routes(upstream_server: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream_server, tmp_path)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli(path, "models")
    assert result.returncode == 0, result.stderr
    routes = {row["model"]: row["route"] for row in parse_table(result.stdout)}
    assert list(routes) == [m["name"] for m in config["models"] if "name" in m]
    assert routes["chat-model"] == "compat/gpt-4.1"
    assert routes["resp-model"] == "oai/gpt-4.1"
    assert routes["pro"] == "oai/gpt-5-pro"
    assert routes["failover"] == "flaky/flaky-model → compat/backup-model"


def test_serve_force_model(upstream: FakeUpstream, tmp_path: Path) -> None:
    running = start_gateway(
        base_config(upstream, tmp_path), tmp_path, args=("--force-model", "compat/gpt-4.1"), name="forced"
    )
    try:
        with sdk(running) as client:
            for model in ("resp-model", "no-such-model", "claude-3-opus"):
                raw = client.chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
                assert raw.parse().choices[0].message.content
                assert raw.headers["x-modelwire-backend"] == "compat", model
                assert (
                    upstream.last.path == "/v1/chat/completions" and upstream.last.body["model"] == "gpt-4.1"
                )
            assert client.responses.create(model="resp-model", input="q").output_text
            assert upstream.last.path == "/v1/chat/completions" and upstream.last.body["model"] == "gpt-4.1"
        assert len(upstream.requests) == 4
    finally:
        running.stop()


def test_serve_default_backend(upstream: FakeUpstream, tmp_path: Path) -> None:
    running = start_gateway(
        base_config(upstream, tmp_path), tmp_path, args=("--default-backend", "compat"), name="default"
    )
    try:
        with sdk(running) as client:
            raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)  # type: ignore[arg-type]
            assert raw.headers["x-modelwire-backend"] == "compat"
            assert (
                upstream.last.path == "/v1/chat/completions" and upstream.last.body["model"] == "gpt-4o-mini"
            )
            client.chat.completions.create(model="resp-model", messages=USER)  # type: ignore[arg-type]
            assert upstream.last.path == "/v1/responses"  # listed names keep their own routes
    finally:
        running.stop()
