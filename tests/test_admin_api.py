"""The admin API (``/admin/v1``) on a real gateway process: who gets in (admin keys only, closed
when none exists), the key round trip, usage numbers against the requests sent, the request log,
backends, the masked config, the OpenAPI document, the CLI against a remote gateway, and two
replicas on PostgreSQL seeing the same keys and usage."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from modelwire.gateway.admin import ROUTES

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, MODELWIRE, RunningGateway, base_config, request, start_gateway
from .services import PrivatePostgres, postgres_schema

ADMIN_KEY = "sk-admin-config-0123456789abcdef"
SPECS = Path(__file__).parent / "specs"
USER = [{"role": "user", "content": "hi"}]


def admin_config(upstream: FakeUpstream, tmp: Path) -> dict[str, Any]:
    config = base_config(upstream, tmp)
    config["keys"] = [*config["keys"], {"key": ADMIN_KEY, "name": "ops", "admin": True}]
    config["capture"] = {"path": str(tmp / "capture.jsonl")}
    config["lockout"] = {"failures": 1_000_000}
    return config


@pytest.fixture(scope="module")
def gw(upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("admin")
    running = start_gateway(admin_config(upstream_server, tmp), tmp)
    try:
        yield running
    finally:
        running.stop()


def call(
    gw: RunningGateway, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}" if key else ""}
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = request(gw, method, path, data, headers)
    return status, json.loads(raw) if raw else None


def concrete(path: str) -> str:
    return path.replace("{key}", "somekey").replace("{request_id}", "req_x")


def chat(gw: RunningGateway, key: str, model: str = "chat-model") -> str:
    client = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    reply = client.chat.completions.with_raw_response.create(model=model, messages=USER)  # type: ignore[arg-type]
    return str(reply.headers["x-request-id"])


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# Who gets in
# ----------------------------------------------------------------------------------------------


def test_an_ordinary_key_is_refused_on_every_admin_route(gw: RunningGateway, upstream: FakeUpstream) -> None:
    for route in ROUTES:
        status, doc = call(gw, route.method, concrete(route.path), {} if route.body else None, key=CLIENT_KEY)
        assert status == 403, (route.path, doc)
        assert doc["error"]["code"] == "not_admin"
    assert upstream.requests == []


def test_missing_and_wrong_admin_keys_are_refused(gw: RunningGateway) -> None:
    for route in ROUTES:
        status, doc = call(gw, route.method, concrete(route.path), key=None)
        assert status == 401 and doc["error"]["code"] == "missing_api_key", route.path
        status, doc = call(gw, route.method, concrete(route.path), key="sk-admin-wrong-000000000000")
        assert status == 401 and doc["error"]["code"] == "invalid_api_key", route.path
    # The key in the query string is not read (it would land in access logs).
    status, _, _ = request(gw, "GET", f"/admin/v1/keys?key={ADMIN_KEY}", headers={"Authorization": ""})
    assert status == 401


def test_an_admin_key_is_refused_by_the_proxy(gw: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        chat(gw, ADMIN_KEY)


def test_without_an_admin_key_the_admin_api_is_closed_even_on_an_open_gateway(
    upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    config = base_config(upstream_server, tmp_path)
    config["keys"] = []  # loopback and no key at all: the proxy is open to anyone
    running = start_gateway(config, tmp_path)
    try:
        assert chat(running, "anything")  # open indeed
        for route in ROUTES:
            for key in (None, "anything", CLIENT_KEY):
                status, doc = call(running, route.method, concrete(route.path), key=key)
                if key is None:
                    assert status == 401, route.path
                else:
                    assert status == 403 and doc["error"]["code"] == "admin_closed", route.path
        status, _, page = request(
            running,
            "POST",
            "/ui/login",
            b"key=anything",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 403 and b"closed" in page
    finally:
        running.stop()


def test_unknown_admin_route_and_wrong_method(gw: RunningGateway) -> None:
    assert call(gw, "GET", "/admin/v1/nothing")[0] == 404
    assert call(gw, "PUT", "/admin/v1/keys")[0] == 405


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def test_key_create_update_revoke_round_trip(gw: RunningGateway, upstream: FakeUpstream) -> None:
    status, created = call(
        gw, "POST", "/admin/v1/keys", {"name": "alice", "models": ["chat-model"], "rpm": 100}
    )
    assert status == 201
    secret, key = created["secret"], created["key"]
    assert secret.startswith("mw-") and key["prefix"] == secret[:8] and key["state"] == "active"
    assert chat(gw, secret)  # works on the proxy at once
    # Listing never shows the secret, not even in part beyond its display prefix.
    status, listed = call(gw, "GET", "/admin/v1/keys")
    assert status == 200 and secret not in json.dumps(listed)
    alice = next(k for k in listed["data"] if k["name"] == "alice")
    assert alice["models"] == ["chat-model"] and alice["rpm"] == 100
    ops = next(k for k in listed["data"] if k["name"] == "ops")
    assert ops["admin"] is True and ops["source"] == "config" and ops["prefix"] == ""

    status, changed = call(
        gw, "PATCH", f"/admin/v1/keys/{key['id']}", {"models": ["resp-model"], "rpm": None, "budget_usd": 5}
    )
    assert (
        status == 200
        and changed["models"] == ["resp-model"]
        and changed["rpm"] is None
        and changed["budget_usd"] == 5
    )
    with pytest.raises(openai.PermissionDeniedError):  # the new model list holds within a second
        wait_for(lambda: _refused(gw, secret), 2.0)
        chat(gw, secret)

    assert call(gw, "DELETE", "/admin/v1/keys/alice") == (200, {"revoked": "alice"})
    assert wait_for(lambda: _refused(gw, secret, "resp-model"), 2.0)
    assert call(gw, "DELETE", "/admin/v1/keys/alice")[0] == 404
    assert call(gw, "PATCH", "/admin/v1/keys/alice", {"rpm": 3})[0] == 404


def _refused(gw: RunningGateway, secret: str, model: str = "chat-model") -> bool:
    try:
        chat(gw, secret, model)
    except (openai.AuthenticationError, openai.PermissionDeniedError):
        return True
    return False


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "rpm": "10"}, "rpm"),
        ({"name": "x", "budget_usd": -1}, "budget_usd"),
        ({"name": "x", "models": "chat-model"}, "models"),
        ({"name": "x", "surprise": 1}, "surprise"),
    ],
)
def test_bad_key_bodies_are_400(gw: RunningGateway, body: dict[str, Any], problem: str) -> None:
    status, doc = call(gw, "POST", "/admin/v1/keys", body)
    assert status == 400 and problem in doc["error"]["message"]


def test_malformed_json_is_400(gw: RunningGateway) -> None:
    status, _, raw = request(gw, "POST", "/admin/v1/keys", b"{nope", {"Authorization": f"Bearer {ADMIN_KEY}"})
    assert status == 400 and b"JSON" in raw


def test_an_admin_key_made_by_the_api_opens_the_api_only(gw: RunningGateway) -> None:
    status, created = call(gw, "POST", "/admin/v1/keys", {"name": "second-op", "admin": True})
    assert status == 201 and created["key"]["admin"] is True
    assert call(gw, "GET", "/admin/v1/keys", key=created["secret"])[0] == 200
    assert _refused(gw, created["secret"])
    call(gw, "DELETE", "/admin/v1/keys/second-op")
    assert wait_for(lambda: call(gw, "GET", "/admin/v1/keys", key=created["secret"])[0] == 401, 2.0)


def test_a_duplicate_live_name_is_400(gw: RunningGateway) -> None:
    assert call(gw, "POST", "/admin/v1/keys", {"name": "twice"})[0] == 201
    status, doc = call(gw, "POST", "/admin/v1/keys", {"name": "twice"})
    assert status == 400 and "already exists" in doc["error"]["message"]


# ----------------------------------------------------------------------------------------------
# Usage and the request log
# ----------------------------------------------------------------------------------------------


def test_usage_groups_match_the_requests_sent(gw: RunningGateway, upstream: FakeUpstream) -> None:
    _, created = call(gw, "POST", "/admin/v1/keys", {"name": "counted"})
    secret = created["secret"]
    ids = [chat(gw, secret, "chat-model") for _ in range(3)] + [
        chat(gw, secret, "native-chat") for _ in range(2)
    ]
    upstream.script(Reply.error(400, "bad thing", code="bad_thing"))
    with pytest.raises(openai.BadRequestError):
        chat(gw, secret, "chat-model")

    def by_model() -> list[dict[str, Any]]:
        rows = call(gw, "GET", "/admin/v1/usage?by=model&key=counted&since=1h")[1]["data"]
        return rows if sum(r["requests"] for r in rows) == 6 else []

    rows = {r["group"]: r for r in wait_for(by_model)}
    assert rows["chat-model"]["requests"] == 4 and rows["chat-model"]["errors"] == 1
    assert rows["native-chat"]["requests"] == 2 and rows["native-chat"]["errors"] == 0
    assert rows["chat-model"]["input_tokens"] > 0 and rows["chat-model"]["p95_ms"] is not None
    by_key = call(gw, "GET", "/admin/v1/usage?by=key&since=1h")[1]["data"]
    assert next(r for r in by_key if r["group"] == "counted")["requests"] == 6
    by_hour = call(gw, "GET", "/admin/v1/usage?by=hour&key=counted&since=1h")[1]["data"]
    assert sum(r["requests"] for r in by_hour) == 6
    backend = call(gw, "GET", "/admin/v1/usage?by=backend&key=counted&backend=native_chat")[1]["data"]
    assert [(r["group"], r["requests"]) for r in backend] == [("native_chat", 2)]
    assert (
        call(gw, "GET", f"/admin/v1/usage?by=model&key=counted&until={time.time() - 3600}")[1]["data"] == []
    )
    assert call(gw, "GET", "/admin/v1/usage?by=colour")[0] == 400
    assert call(gw, "GET", "/admin/v1/usage?since=yesterday")[0] == 400

    log = call(gw, "GET", "/admin/v1/requests?key=counted")[1]["data"]
    assert [r["request_id"] for r in log[1:]] == ids[::-1]  # newest first, the failure on top
    assert log[0]["status"] == 400 and log[0]["error"] == "bad_thing"
    assert [
        r["request_id"] for r in call(gw, "GET", "/admin/v1/requests?key=counted&status=error")[1]["data"]
    ] == [log[0]["request_id"]]
    assert len(call(gw, "GET", "/admin/v1/requests?key=counted&status=ok")[1]["data"]) == 5
    page = call(gw, "GET", f"/admin/v1/requests?key=counted&limit=2&before={log[1]['id']}")[1]["data"]
    assert [r["request_id"] for r in page] == [log[2]["request_id"], log[3]["request_id"]]
    assert call(gw, "GET", "/admin/v1/requests?limit=0")[0] == 400
    assert call(gw, "GET", "/admin/v1/requests?status=weird")[0] == 400


def test_request_detail_has_timings_hops_and_capture(gw: RunningGateway, upstream: FakeUpstream) -> None:
    # flaky answers 503, is retried once (503 again), then the route fails over to compat.
    upstream.script(Reply.error(503, "down"), Reply.error(503, "down"), Reply.text("rescued"))
    request_id = chat(gw, CLIENT_KEY, "failover")

    def detail() -> Any:
        status, doc = call(gw, "GET", f"/admin/v1/requests/{request_id}")
        return doc if status == 200 and doc["records"] else None

    doc = wait_for(detail)
    record = doc["records"][0]
    assert record["status"] == 200 and record["hops"] == 3 and record["backend"] == "compat"
    assert record["latency_ms"] > 0 and record["output_tokens"] > 0
    directions = {line["direction"] for line in doc["capture"]}
    assert {"client_request", "upstream_request"} <= directions
    assert "sk-up-" not in json.dumps(doc) and CLIENT_KEY not in json.dumps(doc)
    assert call(gw, "GET", "/admin/v1/requests/req_never_seen")[0] == 404


# ----------------------------------------------------------------------------------------------
# Backends, config, OpenAPI
# ----------------------------------------------------------------------------------------------


def test_backends_report_cooldowns_and_counts(gw: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.script(Reply.error(401, "bad key"), Reply.text("fine"))
    chat(gw, CLIENT_KEY, "resp-model")  # oai has two keys: the first cools down, the second answers
    status, doc = call(gw, "GET", "/admin/v1/backends")
    assert status == 200 and doc["dependencies"] == {"store": "up"}
    oai = next(b for b in doc["data"] if b["name"] == "oai")
    cooling = [k for k in oai["keys"] if k["cooldown_seconds"] > 0]
    assert len(cooling) == 1 and oai["circuit"] == "degraded" and oai["cooldowns"] >= 1
    assert "sk-up-oai" not in json.dumps(doc)


def test_config_is_shown_with_every_secret_masked(gw: RunningGateway) -> None:
    status, doc = call(gw, "GET", "/admin/v1/config")
    text = json.dumps(doc)
    assert status == 200 and doc["config"]["backends"]["oai"]["api_keys"] == ["****", "****"]
    for secret in ("sk-up-oai-1", "sk-up-compat", CLIENT_KEY, ADMIN_KEY, "sk-client-chat-only"):
        assert secret not in text
    assert doc["config"]["keys"][0]["name"] == "all"


def test_the_openapi_document_is_valid_and_lists_every_route(gw: RunningGateway) -> None:
    status, doc = call(gw, "GET", "/admin/v1/openapi.json")
    assert status == 200
    meta = json.loads((SPECS / "openapi-3.1-schema.json").read_text())
    jsonschema.Draft202012Validator(meta).validate(doc)
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema), name
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    # Every reference resolves.
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_the_openapi_answer_shapes_match_real_answers(gw: RunningGateway) -> None:
    _, doc = call(gw, "GET", "/admin/v1/openapi.json")
    schemas = doc["components"]["schemas"]
    resolver = {"$defs": schemas}
    _, created = call(gw, "POST", "/admin/v1/keys", {"name": "shape"})
    _, listed = call(gw, "GET", "/admin/v1/keys")
    for name, value in (("CreatedKey", created), ("KeyView", listed["data"][0])):
        schema = json.loads(json.dumps(schemas[name]).replace("#/components/schemas/", "#/$defs/"))
        jsonschema.validate(value, {**schema, **resolver} if "$ref" not in schema else schema)


# ----------------------------------------------------------------------------------------------
# The CLI against a remote gateway
# ----------------------------------------------------------------------------------------------


def remote(gw: RunningGateway, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELWIRE_URL": gw.url, "MODELWIRE_ADMIN_KEY": key}
    return subprocess.run([MODELWIRE, *args], capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_cli_keys_and_usage_over_the_admin_api(gw: RunningGateway) -> None:
    made = remote(gw, "keys", "create", "--name", "from-cli", "--rpm", "7")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mw-") and chat(gw, secret)
    listed = remote(gw, "keys", "list", "--json")
    row = next(k for k in json.loads(listed.stdout) if k["name"] == "from-cli")
    assert row["rpm"] == 7 and secret not in listed.stdout
    usage = wait_for(
        lambda: [
            r
            for r in json.loads(remote(gw, "usage", "--by", "key", "--json").stdout)
            if r["key"] == "from-cli"
        ]
    )
    assert usage[0]["requests"] == 1
    assert remote(gw, "keys", "revoke", "from-cli").returncode == 0
    assert wait_for(lambda: _refused(gw, secret), 2.0)
    again = remote(gw, "keys", "revoke", "from-cli")
    assert again.returncode == 1 and "no active key" in again.stderr
    # Flags win over the environment; an ordinary key is refused with the gateway's own words.
    refused = subprocess.run(
        [MODELWIRE, "keys", "list", "--url", gw.url, "--admin-key", CLIENT_KEY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert (
        refused.returncode == 1 and "not an admin key" in refused.stderr and CLIENT_KEY not in refused.stderr
    )


def test_cli_keys_create_admin_makes_a_key_for_the_admin_api_only(gw: RunningGateway) -> None:
    made = gw.cli("keys", "create", "--name", "local-op", "--admin")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert wait_for(lambda: call(gw, "GET", "/admin/v1/keys", key=secret)[0] == 200, 2.0)
    assert _refused(gw, secret)
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert next(k for k in listed if k["name"] == "local-op")["admin"] is True
    gw.cli("keys", "revoke", "local-op")


def test_cli_reports_an_unreachable_gateway(tmp_path: Path) -> None:
    result = subprocess.run(
        [MODELWIRE, "usage", "--url", "http://127.0.0.1:9", "--admin-key", "k"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach" in result.stderr and "Traceback" not in result.stderr


def raw(
    gw: RunningGateway, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed (urllib would follow a 303)."""
    connection = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=30)
    try:
        connection.request(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def sign_in(gw: RunningGateway) -> str:
    """A dashboard session's cookie (``name=value``)."""
    form = "application/x-www-form-urlencoded"
    status, headers, _ = raw(gw, "POST", "/ui/login", f"key={ADMIN_KEY}".encode(), Content_Type=form)
    assert status == 303, status
    return headers["set-cookie"].split(";")[0]


def test_a_store_outage_is_a_503_not_a_traceback(
    upstream_server: FakeUpstream, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    config = admin_config(upstream_server, tmp_path)
    config["store"] = private_postgres.url
    running = start_gateway(config, tmp_path, name="outage")
    try:
        cookie = sign_in(running)
        private_postgres.stop()
        status, doc = call(running, "GET", "/admin/v1/usage")
        assert status == 503 and doc["error"]["code"] == "store_unavailable"
        assert call(running, "GET", "/admin/v1/backends")[0] == 200  # from memory: still answers
        status, _, page = raw(running, "GET", "/ui/keys", Cookie=cookie)
        assert status == 503 and b"store is unreachable" in page
    finally:
        running.stop()
    assert "Traceback" not in running.log()


# ----------------------------------------------------------------------------------------------
# Two replicas on PostgreSQL
# ----------------------------------------------------------------------------------------------


def test_two_replicas_on_postgres_share_keys_and_usage(upstream_server: FakeUpstream, tmp_path: Path) -> None:
    with postgres_schema() as store:
        config = admin_config(upstream_server, tmp_path)
        config["store"] = store
        one = start_gateway(config, tmp_path, name="one")
        two = start_gateway(config, tmp_path, name="two")
        try:
            _, created = call(one, "POST", "/admin/v1/keys", {"name": "shared", "rpm": 50})
            secret = created["secret"]
            assert chat(two, secret)  # made on one, accepted by two
            assert [
                k["rpm"] for k in call(two, "GET", "/admin/v1/keys")[1]["data"] if k["name"] == "shared"
            ] == [50]
            request_id = chat(one, secret)

            def both_seen() -> bool:
                rows = call(two, "GET", "/admin/v1/usage?by=key&key=shared")[1]["data"]
                return bool(rows) and rows[0]["requests"] == 2

            assert wait_for(both_seen)
            assert call(two, "GET", f"/admin/v1/requests/{request_id}")[0] == 200
            assert call(two, "PATCH", "/admin/v1/keys/shared", {"rpm": 9})[0] == 200
            assert wait_for(
                lambda: (
                    [k["rpm"] for k in call(one, "GET", "/admin/v1/keys")[1]["data"] if k["name"] == "shared"]
                    == [9]
                )
            )
            # A dashboard session made on one is known to two (sessions live in the store).
            cookie = sign_in(one)
            status, _, page = raw(two, "GET", "/ui/keys", Cookie=cookie)
            assert status == 200 and b"shared" in page
            assert call(two, "DELETE", "/admin/v1/keys/shared")[0] == 200
            assert wait_for(lambda: _refused(one, secret), 2.0)
        finally:
            one.stop()
            two.stop()
