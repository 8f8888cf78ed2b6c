"""Shared pytest fixtures. Each group lives in its own delimited section."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream
from tests.gateway_fixtures import RunningGateway, base_config, start_gateway

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
