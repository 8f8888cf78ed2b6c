"""The ``modelwire`` CLI against a running gateway: keys, usage, models, and ``serve``'s routing flags;
and the CLI on its own: finding the gateway's store, JSON and CSV output, ``db``, ``--version``, ``-h``.

Key and usage tests run on both stores: a SQLite file, and the local PostgreSQL server with a schema of
their own (``?options=-csearch_path=…`` in the ``store:`` URL, so the CLI and the gateway share it
exactly as configured), dropped afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from sqlalchemy import select, text

from modelwire._version import __version__
from modelwire.gateway.migrations import HEAD
from modelwire.gateway.store import Store, UsageRecord, open_engine
from modelwire.gateway.tables import keys_table, usage_table
from modelwire.providers.catalog import Catalog

from . import gateway_fixtures
from .fake_upstream import DEFAULT_MODELS, FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, MODELWIRE, RunningGateway, base_config, free_port, start_gateway
from .services import SHARED_POSTGRES_URL as PG_URL
from .services import postgres_schema
from .test_migrations import create_legacy_store

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


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``modelwire <args>`` in ``cwd`` exactly as given: no ``--config``, no MODELWIRE_CONFIG
    unless ``env`` sets it. OPENAI_API_KEY is set because the default config's backend wants one
    (the state commands never use it)."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "MODELWIRE_CONFIG")}
    return subprocess.run(
        [MODELWIRE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**base, "COLUMNS": "250", "OPENAI_API_KEY": "sk-unused", **(env or {})},
    )


UNUSED_BACKEND = {"type": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-unused"}


def sqlite_config(directory: Path, store: str = "sqlite:///state.db") -> Path:
    """A config file in ``directory`` whose (relative) SQLite store lives beside it, with a backend
    of its own so that loading it needs no OPENAI_API_KEY."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "modelwire.yaml"
    path.write_text(yaml.safe_dump({"store": store, "backends": {"up": UNUSED_BACKEND}}))
    return path


def said(result: subprocess.CompletedProcess[str]) -> str:
    """stderr with rich's line breaks undone."""
    return " ".join(result.stderr.split())


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
    """The key is refused with 401 within a second (running gateways reload their key table when
    the store's key counter moves); then a good key clears this address's failure count (lockout)."""
    deadline = time.monotonic() + 1.0
    with sdk(gateway, key) as client:
        while True:
            try:
                client.chat.completions.create(model="gpt-test", messages=USER)  # type: ignore[arg-type]
            except openai.AuthenticationError:
                break
            assert time.monotonic() < deadline, "the key still works a second after the change"
            time.sleep(0.05)
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
    with postgres_schema() as url:
        yield url


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
    assert (row["models"], row["rpm"], row["tpm"], row["budget $"], row["spent $"], row["state"]) == (
        "gpt-*",
        "60",
        "100000",
        "20.00",
        "0.00",
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
    result = cli(gateway.config_path, "keys", "revoke", name)
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
    path = sqlite_config(tmp_path)
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
    path = sqlite_config(tmp_path)
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


# ----------------------------------------------------------------------------------------------
# Finding the gateway's store
# ----------------------------------------------------------------------------------------------


def test_modelwire_config_finds_the_store_from_another_directory(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path / "gateway", "sqlite:///state/keys.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = unique("team")
    created = run("keys", "create", "--name", name, "-c", str(config), cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    store_file = tmp_path / "gateway" / "state" / "keys.db"
    assert f"created a new store at {store_file}" in said(created)

    listed = run("keys", "list", "--json", cwd=elsewhere, env={"MODELWIRE_CONFIG": str(config)})
    assert listed.returncode == 0, listed.stderr
    assert [k["name"] for k in json.loads(listed.stdout)] == [name]
    assert f"store: {store_file}" in said(listed)  # not the default store, so it is named
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "command", [("keys", "list"), ("keys", "revoke", "x"), ("usage",), ("db", "current")]
)
def test_commands_refuse_a_missing_store_and_create_nothing(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = run(*command, cwd=tmp_path)
    assert result.returncode == 1, result
    message = said(result)
    assert f"no store at {tmp_path / '.modelwire' / 'state.db'}" in message
    assert "--config" in message and "MODELWIRE_CONFIG" in message
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_the_default_store_goes_unnamed(tmp_path: Path) -> None:
    created = run("keys", "create", "--name", "here", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / ".modelwire" / "state.db").exists()
    listed = run("keys", "list", "--csv", cwd=tmp_path)
    assert listed.returncode == 0 and "store:" not in listed.stderr, listed.stderr
    assert "here" in listed.stdout


def test_a_postgresql_store_is_named_without_its_password(tmp_path: Path) -> None:
    schema = f"mw_cli_{uuid.uuid4().hex[:16]}"
    engine = open_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = PG_URL.replace("postgres@", "postgres:sekrit-pw@", 1) + f"?options=-csearch_path%3D{schema}"
        config = sqlite_config(tmp_path, url)
        result = run("keys", "create", "--name", "pg", "-c", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "store: postgresql://postgres:***@" in said(result)
        assert "sekrit-pw" not in result.stderr + result.stdout
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


# ----------------------------------------------------------------------------------------------
# JSON, CSV, amounts, "no records"
# ----------------------------------------------------------------------------------------------

KEY_COLUMNS = [
    "name",
    "id",
    "prefix",
    "models",
    "rpm",
    "tpm",
    "budget_usd",
    "spent_usd",
    "created_at",
    "expires_at",
    "state",
    "admin",
]
USAGE_COLUMNS = [
    "requests",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "errors",
    "error_rate",
    "p50_ms",
    "p95_ms",
]


def record(when: float, key: str, cost: float | None, **overrides: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "time": when,
        "key_name": key,
        "public_model": "gpt-test",
        "backend": "compat",
        "upstream_model": "gpt-4.1",
        "dialect": "openai_chat",
        "cost": cost,
        "latency_ms": 100.0,
    }
    return UsageRecord(**{**fields, **overrides})


def test_keys_list_json_and_csv_carry_what_each_key_spent(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    for name in ("tiny", "big", "idle"):
        assert (
            run(
                "keys", "create", "--name", name, "--budget-usd", "5", "-c", str(config), cwd=tmp_path
            ).returncode
            == 0
        )
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        store.write_usage([record(time.time(), "tiny", 0.000042), *[record(time.time(), "big", 0.75)] * 2])

    as_json = run("keys", "list", "--json", "-c", str(config), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    keys = {k["name"]: k for k in json.loads(as_json.stdout)}
    assert all(list(k) == KEY_COLUMNS for k in keys.values())
    assert (keys["tiny"]["spent_usd"], keys["big"]["spent_usd"], keys["idle"]["spent_usd"]) == (
        0.000042,
        1.5,
        0.0,
    )
    assert keys["big"]["budget_usd"] == 5.0 and keys["big"]["models"] == ["*"] and keys["big"]["rpm"] is None

    as_csv = run("keys", "list", "--csv", "-c", str(config), cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    reader = csv.DictReader(io.StringIO(as_csv.stdout))
    assert reader.fieldnames == KEY_COLUMNS
    spent = {row["name"]: row["spent_usd"] for row in reader}
    assert spent == {"tiny": "0.000042", "big": "1.5", "idle": "0.0"}  # never 4.2e-05

    table = {row["name"]: row for row in parse_table(cli(config, "keys", "list").stdout)}
    assert (table["tiny"]["spent $"], table["big"]["spent $"], table["big"]["budget $"]) == (
        "0.000042",
        "1.50",
        "5.00",
    )


def test_usage_groups_by_utc_day_and_hour_across_midnight(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    midnight = time.time() // 86400 * 86400
    with Store(f"sqlite:///{tmp_path}/state.db") as store:
        store.write_usage(
            [
                record(midnight - 7200, "a", 0.25),  # 22:00 yesterday
                record(midnight - 0.4, "a", 0.000042, status=500),  # 23:59:59.6 yesterday
                record(midnight + 1.5, "b", 1.0),  # 00:00:01.5 today
            ]
        )
    yesterday, today = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in (midnight - 1, midnight))

    by_day = run("usage", "--by", "day", "--since", "2d", "--json", "-c", str(config), cwd=tmp_path)
    assert by_day.returncode == 0, by_day.stderr
    days = json.loads(by_day.stdout)
    assert [(d["day"], d["requests"], d["errors"]) for d in days] == [(yesterday, 2, 1), (today, 1, 0)]
    assert days[0]["cost_usd"] == pytest.approx(0.250042) and days[0]["error_rate"] == 0.5
    assert list(days[0]) == ["day", *USAGE_COLUMNS]

    by_hour = run("usage", "--by", "hour", "--since", "2d", "--csv", "-c", str(config), cwd=tmp_path)
    assert by_hour.returncode == 0, by_hour.stderr
    hours = list(csv.DictReader(io.StringIO(by_hour.stdout)))
    assert [(h["hour"], h["requests"], h["cost_usd"]) for h in hours] == [
        (f"{yesterday} 22:00", "1", "0.25"),
        (f"{yesterday} 23:00", "1", "0.000042"),
        (f"{today} 00:00", "1", "1.0"),
    ]

    table = parse_table(cli(config, "usage", "--by", "hour", "--since", "2d").stdout)
    assert [(r["hour"], r["cost $"], r["errors"]) for r in table][1] == (
        f"{yesterday} 23:00",
        "0.000042",
        "100.0%",
    )


def test_empty_results_say_no_records(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    Store(f"sqlite:///{tmp_path}/state.db").close()
    table = run("usage", "-c", str(config), cwd=tmp_path)
    assert (table.returncode, table.stdout) == (0, "") and "no records" in table.stderr
    keys = run("keys", "list", "-c", str(config), cwd=tmp_path)
    assert (keys.returncode, keys.stdout) == (0, "") and "no records" in keys.stderr
    as_json = run("usage", "--by", "key", "--json", "-c", str(config), cwd=tmp_path)
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])
    as_csv = run("keys", "list", "--csv", "-c", str(config), cwd=tmp_path)
    assert (as_csv.returncode, as_csv.stdout) == (0, ",".join(KEY_COLUMNS) + "\n")


def test_json_and_csv_together_are_refused(tmp_path: Path) -> None:
    result = run("usage", "--json", "--csv", cwd=tmp_path)
    assert result.returncode == 2 and "--json" in result.stderr and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# db
# ----------------------------------------------------------------------------------------------


def test_db_current_and_upgrade_on_a_store_from_before_versioning(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    create_legacy_store(open_engine(f"sqlite:///{tmp_path}/state.db"), None)

    before = run("db", "current", "-c", str(config), cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines() == [
        "store revision: none (made before schema versioning)",
        f"modelwire head: {HEAD}",
    ]
    assert "modelwire db upgrade" in said(before)

    upgraded = run("db", "upgrade", "-c", str(config), cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert (
        upgraded.stdout.strip() == f"upgraded from an unversioned store (before schema versioning) to {HEAD}"
    )
    again = run("db", "upgrade", "-c", str(config), cwd=tmp_path)
    assert again.stdout.strip() == f"already at head ({HEAD})"
    after = run("db", "current", "-c", str(config), cwd=tmp_path)
    assert after.stdout.splitlines()[0] == f"store revision: {HEAD}" and after.stderr.count("\n") <= 1


# ----------------------------------------------------------------------------------------------
# --version, -h
# ----------------------------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"modelwire {__version__}\n")


def test_the_cli_loads_rich_only_to_print() -> None:
    """`modelwire serve` prints nothing through rich; loaded with the command line, it would stay
    resident (~2 MiB) in every gateway process."""
    probe = "import sys, modelwire.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


@pytest.mark.parametrize("command", [(), ("keys", "list"), ("db", "upgrade"), ("models",)])
def test_short_help_is_help(tmp_path: Path, command: tuple[str, ...]) -> None:
    short, long = run(*command, "-h", cwd=tmp_path), run(*command, "--help", cwd=tmp_path)
    assert short.returncode == 0 and "Usage: modelwire" in short.stdout
    assert short.stdout == long.stdout


def test_revoke_help_says_how_soon_it_applies(tmp_path: Path) -> None:
    result = run("keys", "revoke", "-h", cwd=tmp_path)
    assert "within a second" in " ".join(result.stdout.split())


# ----------------------------------------------------------------------------------------------
# models: configured, then discovered
# ----------------------------------------------------------------------------------------------


def test_models_lists_rules_then_the_upstream_models(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {**base_config(upstream, tmp_path), "default_backend": "compat"}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli(path, "models", "--json")
    assert result.returncode == 0, result.stderr
    listed = {m["model"]: m for m in json.loads(result.stdout)}
    rules = [m["name"] for m in config["models"] if "name" in m]
    assert list(listed) == rules + list(DEFAULT_MODELS)  # none of the fake's ids is a rule name
    assert {listed[m]["source"] for m in rules} == {"config"}
    discovered = listed["gpt-4o-mini"]
    assert (discovered["source"], discovered["route"]) == ("upstream", ["compat/gpt-4o-mini"])
    profile = Catalog().profile("gpt-4o-mini")
    assert profile.price is not None
    assert (discovered["context_window"], discovered["input_usd_per_1m"]) == (
        profile.context_window,
        profile.price.input,
    )
    assert listed["failover"]["route"] == ["flaky/flaky-model", "compat/backup-model"]
    assert [r.path for r in upstream.requests] == ["/v1/models"]


def test_models_without_rules_is_the_upstream_list_not_the_catalog(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "models.yaml"
    backend = {"type": "openai-compatible", "base_url": upstream.url, "api_key": "sk-up"}
    path.write_text(yaml.safe_dump({"store": "sqlite:///state.db", "backends": {"only": backend}}))
    result = cli(path, "models", "--json")
    assert result.returncode == 0, result.stderr
    assert [m["model"] for m in json.loads(result.stdout)] == list(DEFAULT_MODELS)
    assert len(Catalog().models()) > len(DEFAULT_MODELS)  # what used to be listed instead


def test_models_without_its_upstream_lists_the_rules(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["backends"]["compat"]["base_url"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens
    config["default_backend"] = "compat"
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli(path, "models", "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["model"] for r in rows] == [m["name"] for m in config["models"] if "name" in m]
    assert (
        len(result.stderr.splitlines()) == 1 and "cannot list the models of backend 'compat'" in result.stderr
    )


def test_the_test_harness_starts_a_gateway_on_another_port_when_its_port_was_taken(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a busy parallel run a picked free port can be taken before the gateway binds it: the
    harness must try again rather than fail the test that wanted a gateway."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])
        monkeypatch.setattr(gateway_fixtures, "free_port", lambda: next(picks, None) or free_port())
        gateway = start_gateway(base_config(upstream, tmp_path), tmp_path, name="rebind")
        try:
            assert gateway.url != f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(gateway.url + "/healthz", timeout=5) as reply:
                assert reply.status == 200
        finally:
            gateway.stop()
