"""Shared pytest fixtures. Each group lives in its own delimited section."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelwire.providers.transport import AiohttpTransport
from tests.fake_codex import FakeAccount
from tests.fake_upstream import FakeUpstream
from tests.gateway_fixtures import RunningGateway, base_config, start_gateway
from tests.services import PrivatePostgres, PrivateRedis, shared_services_problem

# ----------------------------------------------------------------------------------------------
# Fake OpenAI upstream (tests/fake_upstream.py)
#
# One server per test session (starting it is cheap, but a gateway subprocess may be pointed at
# its URL once); ``upstream`` resets it before each test and fails the test if the fake saw a
# request, or produced a payload, that the official OpenAI spec rejects.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream_server.reset()
    yield upstream_server
    violations = list(upstream_server.violations)
    upstream_server.reset()
    assert violations == [], "fake upstream saw spec violations:\n" + "\n".join(violations)


# ---------------------------------------------------------------------------------------------- end


# ----------------------------------------------------------------------------------------------
# A real gateway process (tests/gateway_fixtures.py), one per test module, on the session's fake
# upstream. Tests that need their own config start their own with ``start_gateway``.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    running = start_gateway(base_config(upstream_server, tmp), tmp)
    try:
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------------------------------------- end


# ----------------------------------------------------------------------------------------------
# The shared PostgreSQL and Redis (tests/services.py: SHARED_POSTGRES_URL, SHARED_REDIS_URL)
#
# Checked once, before any test runs: when one is unreachable the run stops with a single message
# naming it, instead of a hundred tests each erroring on the same connection. Under pytest-xdist
# only the controller checks (workers have ``workerinput``), and it does so before xdist starts
# the workers (``tryfirst``; xdist starts them in its own ``trylast`` hook).
# ----------------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop the run (exit status 4) if a shared service does not answer.

    A ``UsageError`` rather than ``pytest.exit``: pytest prints an ``Exit`` reason twice (once to
    stderr, once in the terminal summary), a usage error once, as ``ERROR: <message>``.
    """
    config = session.config
    if hasattr(config, "workerinput") or config.option.collectonly:
        return
    problem = shared_services_problem()
    if problem is not None:
        raise pytest.UsageError(problem)


# ---------------------------------------------------------------------------------------------- end


# ----------------------------------------------------------------------------------------------
# Servers of a test's own (tests/services.py), for tests that stop, crash or restart them; the
# shared ones above must never be. Started before the test, stopped after it even if it fails.
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    with PrivatePostgres(tmp_path) as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


# ---------------------------------------------------------------------------------------------- end


# ----------------------------------------------------------------------------------------------
# The Codex route: a scripted OpenAI account (issuer and Codex backend), and an HTTP client
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def account() -> Iterator[FakeAccount]:
    fake = FakeAccount().start()
    yield fake
    fake.stop()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpTransport]:
    client = AiohttpTransport()
    yield client
    await client.aclose()
