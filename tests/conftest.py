"""Shared pytest fixtures. Each group lives in its own delimited section."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream

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
