"""Starting the gateway: checks that must pass before binding, then uvicorn.

uvicorn (uvloop + httptools) measured the lowest single-request latency of the servers tried on
this hardware, which the latency budget (within 0.5 ms of the upstream) needs; granian costs a few
percent less per request but drops the record of a request cut at shutdown (README, Performance).
Its HTTP/1.1 protocol is httptools' with one change (:mod:`.serving`): a response's head goes out
with the start of its body, in one write.
SIGTERM stops accepting and gives in-flight requests ``server.grace_seconds`` to finish; the
gateway then ends what is left itself, each request with its own error and usage record (see
:meth:`Gateway.begin_shutdown`), and flushes usage on lifespan shutdown. uvicorn's own deadline is
set a little later, so it never has to cancel a request blind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import uvicorn

from .. import heap
from . import supervisor, telemetry
from .app import Gateway
from .auth import KeyBook
from .clients import is_loopback
from .config import Config, ConfigError, load_config, missing_key, with_overrides
from .credentials import CredentialsKeyError, check_credentials_key
from .database import Database, parse_target
from .migrations import HEAD, fast_revision
from .requestlog import configure_logging
from .store import SchemaError, Store, error_cause

CONFIG_ENV = "MODELWIRE_CONFIG"
OVERRIDES_ENV = "MODELWIRE_OVERRIDES"
CUT_MARGIN_SECONDS = 5.0
"""Beyond the grace period, how long uvicorn waits for the gateway to end the requests it cut."""

log = logging.getLogger("modelwire")


def load_keys(config: Config) -> KeyBook:
    """The key table exactly as the gateway will load it. Opening the store here also fails a wrong
    URL, or a schema newer than this modelwire, in one line before anything binds."""
    try:
        migrate_apart(config.store)
        store = Store(config.store)
    except SchemaError as exc:
        raise ConfigError(config.source, "store", str(exc)) from None
    except Exception as exc:  # the driver's own error, whatever the database
        raise ConfigError(config.source, "store", f"cannot open the store: {error_cause(exc)}") from None
    with store:
        keys = KeyBook(config.keys, store, loopback=is_loopback(config.server.host))
        keys.sync()
    return keys


def migrate_apart(url: str) -> None:
    """Bring the store's schema to this modelwire's head in a child process, when it needs it.

    Alembic and SQLAlchemy cost the gateway ~24 MiB it would carry for its whole life; a schema
    change happens once per release, so it runs where that memory is given back. The URL (it may
    hold a password) goes to the child on its stdin, never on a command line others can read.
    """
    db = Database(parse_target(url))
    try:
        current = fast_revision(db)
    finally:
        db.close()
    if current == HEAD:
        return
    child = subprocess.run(  # -P: not a module of the working directory in place of the stdlib's
        [sys.executable, "-P", "-c", _UPGRADE], input=url, capture_output=True, text=True, check=False
    )
    if child.returncode != 0:
        raise SchemaError((child.stderr.strip().splitlines() or ["the schema upgrade failed"])[-1])
    log.info("store schema %s", child.stdout.strip())


_UPGRADE = """
import sys
from modelwire.gateway.store import SchemaError, error_cause, upgrade_schema
try:
    print(upgrade_schema(sys.stdin.read()).describe())
except SchemaError as exc:
    sys.exit(str(exc))
except Exception as exc:
    sys.exit("cannot open the store: " + error_cause(exc))
"""


def check_credentials(config: Config) -> None:
    """Replicas that share a sign-in keep it encrypted in the store: no key, no start (fail closed)."""
    try:
        check_credentials_key(config)
    except CredentialsKeyError as exc:
        raise ConfigError(config.source, "store", str(exc)) from None


def check_bind(config: Config, keys: KeyBook) -> None:
    """No client keys anywhere means anyone who can connect may spend: loopback only, then."""
    if keys.has_keys or keys.loopback:
        return
    raise ConfigError(
        config.source,
        "server.host",
        f"refusing to listen on {config.server.host} with no client keys configured; add keys (config "
        "'keys:' or `modelwire keys create`) or listen on 127.0.0.1",
    )


def check_workers(config: Config, keys: KeyBook) -> None:
    """Workers count limits alone unless Redis shares the counts: refuse rather than over-admit."""
    if config.server.workers == 1 or config.redis:
        return
    now = time.time()
    limited = sorted(k.name for k in keys.in_force() if not k.policy.unlimited and not k.expired(now))
    if limited:
        raise ConfigError(
            config.source,
            "server.workers",
            f"{config.server.workers} workers would each count the limits of {', '.join(limited)} on "
            "their own; set `redis: redis://…` to share the counts, or run one worker",
        )


def warn_missing_keys(config: Config) -> None:
    for name, backend in config.backends.items():
        variable = missing_key(backend)
        if variable is not None:
            log.warning(
                "no upstream key is set for backend %r: export %s (or configure backends in "
                "modelwire.yaml); until then every request to it gets an error saying so",
                name,
                variable,
            )


def _configured(config_path: str | None, overrides: dict[str, Any]) -> Config:
    config = load_config(config_path)
    return with_overrides(config, overrides) if overrides else config


def create_app() -> Gateway:
    """The app factory uvicorn workers call; the config path and overrides come by environment."""
    config = _configured(
        os.environ.get(CONFIG_ENV) or None, json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    )
    configure_logging(config.server.log_level, config.server.log_format)
    limit_malloc_arenas()
    return Gateway(config, hook_signals=True)


def limit_malloc_arenas() -> None:
    """At most two glibc heaps. Each thread that allocates (the store writer, token counting)
    otherwise gets its own heap, kept at its peak: ~15 MiB of RSS after a burst of cut streams, for
    contention that a mostly single-threaded process does not have."""
    heap.limit_arenas(2)


def serve(config_path: str | None, overrides: dict[str, Any]) -> None:
    config = _configured(config_path, overrides)
    server = config.server
    configure_logging(server.log_level, server.log_format)
    keys = load_keys(config)
    check_credentials(config)
    check_bind(config, keys)
    check_workers(config, keys)
    telemetry.settings(config)  # a bad telemetry setting (an unknown OTLP protocol): say so before binding
    warn_missing_keys(config)
    limit_malloc_arenas()
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": "modelwire.gateway.serving:Protocol",
        "lifespan": "on",
        "access_log": False,  # the gateway writes its own line per request
        "log_config": None,  # and owns the logging set-up (text or JSON)
        "log_level": "warning",
        "server_header": False,
        "proxy_headers": False,  # forwarded addresses are the gateway's business (trusted_proxies)
        "timeout_graceful_shutdown": server.grace_seconds + CUT_MARGIN_SECONDS,
        "timeout_keep_alive": 75,
    }
    log.info(
        "modelwire serving on http://%s:%s (%d backend(s), %d worker(s), store %s)",
        server.host,
        server.port,
        len(config.backends),
        server.workers,
        config.store.split("://")[0],
    )
    if server.workers > 1:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path) if config_path else ""
        os.environ[OVERRIDES_ENV] = json.dumps(overrides)
        supervisor.become({**options, "workers": server.workers}, server.log_level, server.log_format)
    else:
        _Server(uvicorn.Config(Gateway(config, hook_signals=True), **options)).run()


class _Server(uvicorn.Server):
    """uvicorn re-raises a stop signal after its graceful shutdown, so the process would die by
    SIGTERM; a gateway that drained cleanly should exit 0."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
