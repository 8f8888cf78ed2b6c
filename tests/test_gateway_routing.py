"""Routing through a running gateway: URI parameters, failover, key rotation, limits, budgets."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, start_gateway


def sdk(gateway: RunningGateway, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def ask(client: openai.OpenAI, model: str, **kw: object) -> str:
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "q"}], **kw
    )  # type: ignore[call-overload]
    return str(completion.choices[0].message.content)


def test_uri_parameters_override_the_client(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with sdk(gateway) as client:
        ask(client, "tuned", temperature=1.5, max_tokens=999)
        body = upstream.last.body
        assert body["temperature"] == 0.2 and isinstance(body["temperature"], float)
        assert body["max_tokens"] == 50 and "max_completion_tokens" not in body  # compatible backend
        assert body["reasoning_effort"] == "low"
        client.responses.create(model="tuned-resp", input="q", max_output_tokens=5000)
        body = upstream.last.body
        assert body["max_output_tokens"] == 64 and body["text"]["verbosity"] == "low"


def test_direct_backend_refs(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with sdk(gateway) as client:
        ask(client, "compat/some-model")
        assert upstream.last.body["model"] == "some-model"
        ask(client, "compat:other-model?temperature=0.7")
        assert upstream.last.body["model"] == "other-model" and upstream.last.body["temperature"] == 0.7
    with sdk(gateway, "sk-client-chat-only-0000") as limited:  # may use compat/*, not oai/*
        ask(limited, "compat/anything")
        with pytest.raises(openai.PermissionDeniedError):
            ask(limited, "oai/gpt-4.1")


def test_regex_rule(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with sdk(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "q"}]
        )
        assert raw.headers["x-modelwire-backend"] == "compat" and upstream.last.body["model"] == "gpt-4.1"


def test_5xx_retries_then_fails_over(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.for_model("flaky-model", Reply.error(503), Reply.error(502))  # max_retries: 1 → two tries
    upstream.for_model("backup-model", Reply.text("from the backup"))
    with sdk(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="failover", messages=[{"role": "user", "content": "q"}]
        )
    assert raw.parse().choices[0].message.content == "from the backup"
    assert raw.headers["x-modelwire-backend"] == "compat"
    assert [r.body["model"] for r in upstream.requests] == ["flaky-model", "flaky-model", "backup-model"]


def test_short_429_waits_and_retries_the_same_target(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.for_model(
        "flaky-model", Reply.error(429, headers={"retry-after-ms": "300"}), Reply.text("waited")
    )
    started = time.monotonic()
    with sdk(gateway) as client:
        assert ask(client, "failover") == "waited"
    assert time.monotonic() - started >= 0.3
    assert [r.body["model"] for r in upstream.requests] == ["flaky-model", "flaky-model"]


def test_long_429_moves_on(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.for_model("flaky-model", Reply.error(429, headers={"retry-after": "120"}))
    upstream.for_model("backup-model", Reply.text("moved on"))
    started = time.monotonic()
    with sdk(gateway) as client:
        assert ask(client, "failover") == "moved on"
    assert time.monotonic() - started < 2


def test_client_errors_return_at_once(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    # (A backend whose only key got a long 429 earlier in this module is cooling down: use another.)
    upstream.script(Reply.error(400, "bad tool schema", code="invalid_value"))
    with sdk(gateway) as client, pytest.raises(openai.BadRequestError, match="bad tool schema"):
        ask(client, "chat-model")
    assert len(upstream.requests) == 1


def test_upstream_401_cools_the_key_and_rotates(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["backends"]["oai"]["api_keys"] = ["sk-up-bad-key-1", "sk-up-good-key-2"]
    gateway = start_gateway(config, tmp_path, name="rotation")
    try:
        upstream.script(
            Reply.error(401, "Incorrect API key provided: sk-up-bad***"), Reply.text("second key")
        )
        with sdk(gateway) as client:
            assert client.responses.create(model="resp-model", input="q").output_text == "second key"
            keys = [r.headers["authorization"] for r in upstream.requests]
            assert keys == ["Bearer sk-up-bad-key-1", "Bearer sk-up-good-key-2"]
            for _ in range(3):  # the bad key sits out its cool-down
                client.responses.create(model="resp-model", input="q")
            assert {r.headers["authorization"] for r in upstream.requests[2:]} == {"Bearer sk-up-good-key-2"}
    finally:
        gateway.stop()


def test_keys_rotate_round_robin(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with sdk(gateway) as client:
        for _ in range(4):
            client.responses.create(model="resp-model", input="q")
    keys = [r.headers["authorization"] for r in upstream.requests]
    assert sorted(set(keys)) == ["Bearer sk-up-oai-1", "Bearer sk-up-oai-2"]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_every_upstream_refusing_credentials_is_a_502(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["models"] = [{"name": "m", "route": "compat/x"}]
    gateway = start_gateway(config, tmp_path, name="allbad")
    try:
        upstream.script(Reply.error(401, "Incorrect API key provided: sk-up-compat"))
        with sdk(gateway) as client, pytest.raises(openai.APIStatusError) as info:
            ask(client, "m")
        assert info.value.status_code == 502
        assert "credentials" in info.value.message and "sk-up-compat" not in info.value.message
    finally:
        gateway.stop()


def test_hop_limit(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["failover"] = {"budget_seconds": 30, "max_hops": 3}
    config["backends"]["flaky"]["max_retries"] = 10
    gateway = start_gateway(config, tmp_path, name="hops")
    try:
        upstream.for_model("flaky-model", *[Reply.error(503)] * 20)
        with sdk(gateway) as client, pytest.raises(openai.APIStatusError) as info:
            ask(client, "failover")  # the healthy backup is never reached: three hops spent
        assert info.value.status_code == 503
        assert [r.body["model"] for r in upstream.requests] == ["flaky-model"] * 3
    finally:
        gateway.stop()


def test_time_budget(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["failover"] = {"budget_seconds": 1.0, "max_hops": 100}
    config["backends"]["flaky"]["max_retries"] = 10
    config["models"] = [{"name": "only-flaky", "route": "flaky/flaky-model"}]
    gateway = start_gateway(config, tmp_path, name="budget")
    try:
        upstream.for_model("flaky-model", *[Reply.error(503)] * 50)
        started = time.monotonic()
        with sdk(gateway) as client, pytest.raises(openai.APIStatusError):
            ask(client, "only-flaky")
        assert time.monotonic() - started < 2.5
        assert 2 <= len(upstream.requests) < 10
    finally:
        gateway.stop()


def test_rpm_limit_gives_429_with_retry_after(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    with sdk(gateway, "sk-client-rpm-000000000") as client:
        ask(client, "chat-model")
        ask(client, "chat-model")
        with pytest.raises(openai.RateLimitError) as info:
            ask(client, "chat-model")
    retry = int(info.value.response.headers["retry-after"])
    assert 1 <= retry <= 60
    assert info.value.body["code"] == "rpm_exceeded"  # type: ignore[index]
    assert len(upstream.requests) == 2


def test_tpm_and_budget_limits(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["keys"] = [
        {"key": "sk-client-tpm-00000000", "name": "tpm", "tpm": 20},
        {"key": "sk-client-budget-00000", "name": "budget", "budget_usd": 0.0001},
    ]
    gateway = start_gateway(config, tmp_path, name="limits")
    try:
        upstream.script(Reply.text("big", usage=(15, 10)))
        with sdk(gateway, "sk-client-tpm-00000000") as client:
            ask(client, "chat-model")
            time.sleep(0.2)  # usage is recorded after the answer
            with pytest.raises(openai.RateLimitError, match="token"):
                ask(client, "chat-model")
        upstream.script(Reply.text("pricey", usage=(100, 100)))  # gpt-4.1: $0.0010 > $0.0001
        with sdk(gateway, "sk-client-budget-00000") as client:
            ask(client, "chat-model")
            time.sleep(0.2)
            with pytest.raises(openai.RateLimitError, match="budget"):
                ask(client, "chat-model")
    finally:
        gateway.stop()


def test_a_spent_budget_survives_a_restart(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["keys"] = [{"key": "sk-client-budget-restart", "name": "budget-restart", "budget_usd": 0.0001}]
    first = start_gateway(config, tmp_path, name="budget1")
    try:
        upstream.script(Reply.text("pricey", usage=(100, 100)))  # gpt-4.1: $0.0010 > $0.0001
        with sdk(first, "sk-client-budget-restart") as client:
            ask(client, "chat-model")
    finally:
        first.stop()  # a clean stop flushes the usage record
    second = start_gateway(config, tmp_path, name="budget2")
    try:
        with (
            sdk(second, "sk-client-budget-restart") as client,
            pytest.raises(openai.RateLimitError, match="budget"),
        ):
            ask(client, "chat-model")
    finally:
        second.stop()


def test_limits_are_shared_across_replicas_through_redis(upstream: FakeUpstream, tmp_path: Path) -> None:
    import uuid

    config = base_config(upstream, tmp_path)
    config["redis"] = "redis://127.0.0.1:6379/0"
    name = f"shared-{uuid.uuid4().hex[:8]}"
    config["keys"] = [{"key": "sk-client-shared-000000", "name": name, "rpm": 3}]
    first = start_gateway(config, tmp_path, name="replica1")
    second = start_gateway(config, tmp_path, name="replica2")
    try:
        with sdk(first, "sk-client-shared-000000") as a, sdk(second, "sk-client-shared-000000") as b:
            ask(a, "chat-model")
            ask(b, "chat-model")
            ask(a, "chat-model")
            with pytest.raises(openai.RateLimitError):
                ask(b, "chat-model")
    finally:
        first.stop()
        second.stop()


def test_a_stream_failing_before_its_first_word_fails_over(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    # Chat client → Responses upstream (translated): response.created, then response.failed.
    failure = Reply.stream_error("never said", after=2, message="overloaded")
    upstream.for_model("failing-model", failure, failure, failure)  # tried 1 + max_retries (2) times
    upstream.for_model("backup-model", Reply.text("from the backup"))
    with sdk(gateway) as client:
        chunks = list(
            client.chat.completions.create(
                model="failover-translated", stream=True, messages=[{"role": "user", "content": "q"}]
            )
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the backup"
    assert [r.body["model"] for r in upstream.requests] == ["failing-model"] * 3 + ["backup-model"]


def test_failed_attempts_are_logged_without_secrets(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.error(503, "upstream down for key sk-up-compat-secret-123"))
    with sdk(gateway) as client:
        ask(client, "chat-model")  # retried once, then served
    time.sleep(0.2)
    log = gateway.log()
    assert "upstream attempt failed, retrying: compat/gpt-4.1 answered 503 UpstreamUnavailableError" in log
    assert "sk-up-compat-secret-123" not in log


def test_a_client_error_from_upstream_is_not_logged_as_a_failed_attempt(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    upstream.script(Reply.error(400, "unsupported value: temperature"))
    mark = len(gateway.log())
    with sdk(gateway) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="chat-model",
            messages=[{"role": "user", "content": "q"}],
            extra_headers={"x-request-id": "req-c400"},
        )
    time.sleep(0.2)
    lines = [line for line in gateway.log()[mark:].splitlines() if "req-c400" in line or "failed" in line]
    assert len(lines) == 1 and "status=400" in lines[0], lines
