"""The test infrastructure itself: private PostgreSQL/Redis servers and the shared-service check.

Tests built on ``private_postgres`` / ``private_redis`` trust that a stopped server really refuses
connections, that a restart keeps the URL (and, for PostgreSQL, the data), and that a crash is
recovered from; these tests hold the helpers to that. The last ones run pytest in a subprocess to
check that missing shared services stop the run with one message instead of an error per test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import create_engine, text

from modelwire.gateway.store import open_engine
from tests import services
from tests.gateway_fixtures import free_port
from tests.services import (
    SHARED_POSTGRES_URL,
    SHARED_REDIS_URL,
    PrivatePostgres,
    PrivateRedis,
    ServiceError,
    StopMode,
    postgres_unreachable,
    redact,
    redis_unreachable,
    shared_services_problem,
)

REPO = Path(__file__).resolve().parents[1]
MISSING_SERVICES_HEADLINE = "needs a local PostgreSQL and Redis"


def pg_query(url: str, sql: str) -> list[tuple[object, ...]]:
    """Run one statement in its own committed transaction; rows if it returns any."""
    with psycopg.connect(url, connect_timeout=2) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description is not None else []


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# PrivatePostgres
# ----------------------------------------------------------------------------------------------


def test_private_postgres_accepts_connections_on_its_own_port(private_postgres: PrivatePostgres) -> None:
    url = private_postgres.url
    assert url == f"postgresql://postgres@127.0.0.1:{private_postgres.port}/postgres"
    assert private_postgres.port != 5432
    assert pg_query(url, "SELECT current_user, current_setting('fsync')") == [("postgres", "off")]

    # The URL is a store URL (the gateway opens it on psycopg 3), and the same server's URL for a
    # plain SQLAlchemy engine works too.
    for engine in (open_engine(url), create_engine(private_postgres.sqlalchemy_url)):
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            engine.dispose()

    pid = private_postgres.pid
    assert private_postgres.start().pid == pid, "start() on a running server must be a no-op"


def test_private_postgres_keeps_url_and_data_across_stop_and_start(
    private_postgres: PrivatePostgres,
) -> None:
    url = private_postgres.url
    pg_query(url, "CREATE TABLE kept (value text)")
    pg_query(url, "INSERT INTO kept VALUES ('before restart')")

    private_postgres.stop()
    assert not private_postgres.running
    reason = postgres_unreachable(url)
    assert reason is not None and "refused" in reason, reason

    private_postgres.start()
    assert private_postgres.url == url
    assert pg_query(url, "SELECT value FROM kept") == [("before restart",)]


def test_private_postgres_recovers_committed_data_after_immediate_stop(
    private_postgres: PrivatePostgres,
) -> None:
    url = private_postgres.url
    pg_query(url, "CREATE TABLE crashed (n int)")
    pg_query(url, "INSERT INTO crashed VALUES (1)")

    private_postgres.stop("immediate")
    assert postgres_unreachable(url) is not None
    private_postgres.start()

    assert pg_query(url, "SELECT n FROM crashed") == [(1,)]
    assert "automatic recovery in progress" in private_postgres.log_path.read_text()


# ----------------------------------------------------------------------------------------------
# PrivateRedis
# ----------------------------------------------------------------------------------------------


def test_private_redis_accepts_connections_on_its_own_port(private_redis: PrivateRedis) -> None:
    assert private_redis.url == f"redis://127.0.0.1:{private_redis.port}/0"
    assert private_redis.port != 6379
    client = redis_client(private_redis.url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save") == {"save": ""}
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_private_redis_restarts_on_same_url_and_forgets_keys(
    private_redis: PrivateRedis, mode: StopMode
) -> None:
    url = private_redis.url
    client = redis_client(url)
    try:
        client.set("k", "v")
        private_redis.stop(mode)
        assert not private_redis.running
        with pytest.raises(redis.ConnectionError):
            client.ping()

        private_redis.start()
        assert private_redis.url == url
        assert client.get("k") is None
    finally:
        client.close()


def test_restart_on_a_taken_port_fails_with_the_server_log(private_redis: PrivateRedis) -> None:
    """The port is kept for the URL's sake, so when something else holds it, say so clearly."""
    private_redis.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", private_redis.port))
        squatter.listen()  # needed: Linux lets two SO_REUSEADDR sockets bind while none listens
        with pytest.raises(ServiceError, match=r"(?s)Redis on 127\.0\.0\.1:\d+ exited.*in use"):
            private_redis.start()
    assert not private_redis.running


def test_first_start_tries_another_port_when_the_free_one_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between picking a free port and binding it, another process (an xdist worker) may take it."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: probes are refused at once
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(services, "free_port", lambda: next(ports))
        with PrivateRedis(tmp_path) as server:
            assert server.port != taken
            assert redis_unreachable(server.url) is None
    assert "already in use" in server.log_path.read_text()


def test_server_is_stopped_when_the_block_using_it_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="test failed"), PrivateRedis(tmp_path) as server:
        pid = server.pid
        raise RuntimeError("test failed")
    assert pid is not None and not pid_alive(pid)
    assert redis_unreachable(server.url, timeout=1) is not None


# ----------------------------------------------------------------------------------------------
# The shared-service check (tests/conftest.py)
# ----------------------------------------------------------------------------------------------


def test_check_names_every_unreachable_service_and_hides_passwords() -> None:
    problem = shared_services_problem(
        "postgresql://postgres:s3cret@127.0.0.1:1/test", "redis://127.0.0.1:1/0", timeout=1
    )
    assert problem is not None
    assert "PostgreSQL at postgresql://postgres:***@127.0.0.1:1/test: " in problem
    assert "Redis at redis://127.0.0.1:1/0: " in problem
    assert "s3cret" not in problem
    assert shared_services_problem(SHARED_POSTGRES_URL, SHARED_REDIS_URL) is None


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def run_pytest_without_redis(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest with this suite's conftest, on a throwaway test file, with Redis pointed at port 1."""
    marker = tmp_path / "a-test-ran"
    (tmp_path / "test_throwaway.py").write_text(
        "from pathlib import Path\n\n"
        + "".join(f"def test_{n}():\n    Path({str(marker)!r}).touch()\n\n" for n in range(5))
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env |= {"PYTHONPATH": str(REPO), "MODELWIRE_TEST_REDIS": "redis://127.0.0.1:1/0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-W", "ignore", *options, "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("options", [("-p", "no:xdist"), ("-n", "2")], ids=["serial", "xdist"])
def test_unreachable_shared_service_stops_the_run_with_one_message(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    done = run_pytest_without_redis(tmp_path, *options)
    output = done.stdout + done.stderr

    assert done.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert output.count(MISSING_SERVICES_HEADLINE) == 1, output
    assert "Redis at redis://127.0.0.1:1/0" in output, output
    assert "MODELWIRE_TEST_POSTGRES=" in output and "MODELWIRE_TEST_REDIS=" in output, output
    assert not (tmp_path / "a-test-ran").exists(), "tests ran although a shared service is missing"
    assert "error" not in done.stdout.lower(), output
