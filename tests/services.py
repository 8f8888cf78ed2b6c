"""Real PostgreSQL and Redis servers for tests, and the addresses of the shared ones.

Why: most store and rate-limit tests share one local PostgreSQL and one Redis (their URLs are
``SHARED_POSTGRES_URL`` and ``SHARED_REDIS_URL``), which is cheap but means no test may stop,
crash or reconfigure them. A test that needs to do exactly that (a database going away under the
gateway, a Redis restart that forgets every counter) starts a server of its own:
``PrivatePostgres`` or ``PrivateRedis``, on a free loopback port, with its files under the test's
directory, restartable on the same port so URLs handed out before a restart stay valid.

The servers are child processes of the test process, so a test that fails cannot leak them: the
fixtures stop them in their finalizers, and an ``atexit`` hook stops whatever is still running
when the interpreter exits (it cannot help after a SIGKILL).

PostgreSQL refuses to run as root, and CI runs the tests as root: there the server runs as the
``postgres`` user, and its data directory lives outside pytest's ``tmp_path`` (which sits under
``/tmp/pytest-of-root``, mode 0700, where that user cannot go); ``close()`` removes it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Final, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import sqlalchemy

from modelwire.gateway.store import Store, open_engine

from .gateway_fixtures import free_port

SHARED_POSTGRES_URL: Final = os.environ.get(
    "MODELWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
SHARED_REDIS_URL: Final = os.environ.get("MODELWIRE_TEST_REDIS", "redis://127.0.0.1:6379/0")

StopMode = Literal["fast", "immediate"]

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 30.0
PROBE_TIMEOUT: Final = 2  # seconds; libpq treats anything shorter as 2
LOG_TAIL_LINES: Final = 40
POSTGRES_USER: Final = "postgres"


class ServiceError(RuntimeError):
    """A private server did not start (the message carries the tail of its log)."""


# ----------------------------------------------------------------------------------------------
# The shared services: checked once per session by tests/conftest.py
# ----------------------------------------------------------------------------------------------


def shared_services_problem(
    postgres_url: str = SHARED_POSTGRES_URL,
    redis_url: str = SHARED_REDIS_URL,
    timeout: float = PROBE_TIMEOUT,
) -> str | None:
    """The message to stop the run with when a shared service is unreachable, else None.

    Without it, every test that touches PostgreSQL or Redis errors on its own, and the one cause
    drowns in a hundred connection tracebacks.
    """
    unreachable = [
        f"  - {name} at {redact(url)}: {reason}"
        for name, url, reason in (
            ("PostgreSQL", postgres_url, postgres_unreachable(postgres_url, timeout)),
            ("Redis", redis_url, redis_unreachable(redis_url, timeout)),
        )
        if reason is not None
    ]
    if not unreachable:
        return None
    return "\n".join(
        [
            "modelwire's test suite needs a local PostgreSQL and Redis; unreachable:",
            *unreachable,
            "Start them (PostgreSQL with a `test` database that user `postgres` may open without a",
            "password, Redis on its default port), or point the tests elsewhere with:",
            "  MODELWIRE_TEST_POSTGRES=postgresql://USER@HOST:PORT/DATABASE",
            "  MODELWIRE_TEST_REDIS=redis://HOST:PORT/DB",
        ]
    )


def postgres_unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why a PostgreSQL URL cannot be opened (first line of the driver's error), or None."""
    try:
        with psycopg.connect(_libpq_url(url), connect_timeout=max(2, round(timeout))):
            return None
    except psycopg.Error as exc:
        return _first_line(exc)


def redis_unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why a Redis URL does not answer PING, or None."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
        return None
    except redis.RedisError as exc:
        return _first_line(exc)
    finally:
        client.close()


def redact(url: str) -> str:
    """The URL with any password masked, fit for a message that may end up in a CI log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _libpq_url(url: str) -> str:
    """libpq knows ``postgresql://`` and ``postgres://``, not SQLAlchemy's ``+psycopg`` suffix."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.removesuffix('+psycopg')}{sep}{rest}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Private servers
# ----------------------------------------------------------------------------------------------

_unclosed: set[_ServerProcess] = set()


@atexit.register
def _close_leftovers() -> None:
    """Last resort for servers whose fixture never finalized (e.g. the run was interrupted)."""
    for server in list(_unclosed):
        server.close()


class _ServerProcess:
    """A server run as a child process on a port fixed at its first start.

    Subclasses say how to prepare its files once, how to launch it, and how to tell that it
    accepts connections.
    """

    name: ClassVar[str]
    stop_signals: ClassVar[dict[StopMode, signal.Signals]]

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.log_path = self.base_dir / f"{self.name.lower()}.log"
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServiceError(f"{self.name} has no port before its first start()")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> Self:
        """Start the server (a no-op when it runs) and return once it accepts connections."""
        if self.running:
            return self
        self._reap()
        _unclosed.add(self)
        if self._port is None:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._prepare()
            self._start_on_a_free_port()
        else:
            self._launch_and_wait()
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its files; ``"immediate"`` stands for a crash."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signals[mode])
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def close(self) -> None:
        """Stop the server and remove whatever it keeps outside ``base_dir``."""
        self.stop()
        _unclosed.discard(self)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # ``__exit__`` does not run when ``__enter__`` raises
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- hooks for subclasses ------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the server's files before its first start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _accepts_connections(self) -> bool:
        raise NotImplementedError

    # -- process handling ----------------------------------------------------------------------

    def _start_on_a_free_port(self, attempts: int = 3) -> None:
        """First start: another process may take the free port before the server binds it."""
        for attempt in range(1, attempts + 1):
            self._port = free_port()
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch_and_wait()
                return
            except ServiceError:
                this_attempt = self.log_path.read_bytes()[log_size:]
                if attempt == attempts or b"already in use" not in this_attempt:
                    raise

    def _launch_and_wait(self) -> None:
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal reaches pytest, whose finalizers stop
            # the server cleanly, rather than the server directly.
            start_new_session=True,
            **self._popen_options(),
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop("immediate")
            raise

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._accepts_connections():
            if self._proc.poll() is not None:
                raise self._start_error(f"exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise self._start_error(f"did not accept connections within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def _start_error(self, what: str) -> ServiceError:
        return ServiceError(
            f"{self.name} on 127.0.0.1:{self._port} {what}; last lines of {self.log_path}:\n"
            + self.log_tail()
        )

    def _reap(self) -> None:
        """Forget a process that has exited, and close its log."""
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


class PrivatePostgres(_ServerProcess):
    """A PostgreSQL cluster of the test's own, tuned to start fast rather than to be durable.

    ``fsync=off`` and ``initdb --no-sync`` only risk data on an operating system crash; a server
    crash (``stop("immediate")``) still recovers everything committed, which tests rely on.
    """

    name = "PostgreSQL"
    stop_signals = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self._bindir = postgres_bindir()
        self._owner = _postgres_owner()
        self._outside_dir: Path | None = None
        self.data_dir = self._data_root() / "data"

    @property
    def url(self) -> str:
        """A store URL (``Store``, ``open_engine``) that libpq/psycopg accept as is."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def sqlalchemy_url(self) -> str:
        """The URL for a plain ``sqlalchemy.create_engine`` (whose default driver is psycopg2)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def close(self) -> None:
        super().close()
        if self._outside_dir is not None:
            shutil.rmtree(self._outside_dir, ignore_errors=True)
            self._outside_dir = None

    def _data_root(self) -> Path:
        """A directory the server's user owns and can reach (see the module docstring)."""
        if self._owner is None:
            return self.base_dir / "postgres"
        root = Path(tempfile.mkdtemp(prefix="modelwire-postgres-"))
        os.chown(root, self._owner.pw_uid, self._owner.pw_gid)
        self._outside_dir = root
        _unclosed.add(self)
        return root

    def _prepare(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        initdb = [
            str(self._bindir / "initdb"),
            *("-D", str(self.data_dir)),
            *("-U", POSTGRES_USER, "-A", "trust", "-E", "UTF8", "--locale=C"),
            "--no-sync",
            "--no-instructions",
        ]
        with self.log_path.open("ab") as log:
            done = subprocess.run(initdb, stdout=log, stderr=subprocess.STDOUT, **self._popen_options())
        if done.returncode != 0:
            raise ServiceError(f"initdb failed with status {done.returncode}:\n{self.log_tail()}")

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",  # TCP only: no socket file in a shared directory
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "50",
            "wal_level": "minimal",
            "max_wal_senders": "0",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [str(self._bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), *options]

    def _popen_options(self) -> dict[str, Any]:
        if self._owner is None:
            return {}
        return {
            "user": self._owner.pw_uid,
            "group": self._owner.pw_gid,
            "extra_groups": [],
            "cwd": self.data_dir.parent,  # root's working directory may be closed to that user
        }

    def _accepts_connections(self) -> bool:
        return postgres_unreachable(self.url) is None


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``postgres`` live: PATH, else the newest /usr/lib/postgresql/*/bin.

    Debian and Ubuntu keep the server binaries off PATH.
    """
    on_path = shutil.which("initdb")
    if on_path is not None and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not candidates:
        raise ServiceError("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql")
    return max(candidates, key=lambda bindir: _version_key(bindir.parent.name))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _postgres_owner() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None (this process's user) unless that is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise ServiceError(
            f"PostgreSQL refuses to run as root and there is no {POSTGRES_USER!r} user to run it as"
        ) from None


class PrivateRedis(_ServerProcess):
    """A redis-server of the test's own that keeps nothing on disk: a restart forgets every key."""

    name = "Redis"
    stop_signals = {"fast": signal.SIGTERM, "immediate": signal.SIGKILL}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        return self.base_dir / "redis"

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            _redis_server(),
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.dir), "--daemonize", "no", "--logfile", ""),
        ]

    def _accepts_connections(self) -> bool:
        return redis_unreachable(self.url, timeout=1) is None


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ServiceError("redis-server is not on PATH")
    return found


# ----------------------------------------------------------------------------------------------
# A schema of a test's own in the shared PostgreSQL (tests run in parallel in one database)
# ----------------------------------------------------------------------------------------------


def new_schema_name() -> str:
    return f"mw_test_{uuid.uuid4().hex[:16]}"


def drop_schema(schema: str, url: str = SHARED_POSTGRES_URL) -> None:
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_schema(url: str = SHARED_POSTGRES_URL) -> Iterator[str]:
    """A store URL whose every connection works in a fresh schema (``options=-csearch_path``), as a
    gateway and the CLI would be configured; the schema is dropped afterwards."""
    schema = new_schema_name()
    engine = open_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        engine.dispose()
        drop_schema(schema, url)


def shared_stores(kind: str, tmp_path: Path, default: type[Store] = Store) -> Iterator[Callable[..., Store]]:
    """Opens stores over one database, as replicas (or the gateway and the CLI) do: a SQLite file,
    or a schema of its own in the shared PostgreSQL (via ``Store(schema=...)``), dropped afterwards.
    For a fixture: ``yield from shared_stores(...)``."""
    opened: list[Store] = []
    if kind == "sqlite":
        url, schema = f"sqlite:///{tmp_path}/state/state.db", None
    else:
        url, schema = SHARED_POSTGRES_URL, new_schema_name()

    def factory(cls: type[Store] = default) -> Store:
        opened.append(cls(url, schema=schema))
        return opened[-1]

    try:
        yield factory
    finally:
        for store in opened:
            store.close()
        if schema is not None:
            drop_schema(schema)
