"""Starting the gateway: checks that must pass before binding, then uvicorn.

uvicorn (uvloop + httptools) measured the lowest single-request latency of the servers tried on
this hardware, which the latency budget (within 0.5 ms of the upstream) needs; granian was faster
only under heavy concurrency. SIGTERM stops accepting, lets in-flight requests finish within the
grace period, then flushes usage on lifespan shutdown.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
from typing import Any

import uvicorn

from .app import Gateway
from .config import Config, ConfigError, load_config
from .store import Store

CONFIG_ENV = "MODELWIRE_CONFIG"
OVERRIDES_ENV = "MODELWIRE_OVERRIDES"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_store(config: Config) -> bool:
    """Open the store once before binding (a wrong URL fails here, in one line); whether it holds
    live client keys."""
    try:
        with Store(config.store) as store:
            return bool(store.list_keys())
    except Exception as exc:  # the driver's own error, whatever the database
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(config.source, "store", f"cannot open the store: {cause}") from None


def check_bind(config: Config, host: str, store_has_keys: bool) -> None:
    """No client keys anywhere means anyone who can connect may spend: loopback only, then."""
    if config.keys or store_has_keys or is_loopback(host):
        return
    raise ConfigError(
        config.source,
        "server.host",
        f"refusing to listen on {host} with no client keys configured; add keys (config 'keys:' or "
        "`modelwire keys create`) or listen on 127.0.0.1",
    )


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """The config with command-line overrides (host, port, workers, force_model, default_backend)."""
    server = {
        k: overrides[k] for k in ("host", "port", "workers", "log_level") if overrides.get(k) is not None
    }
    top = {k: overrides[k] for k in ("force_model", "default_backend") if overrides.get(k) is not None}
    doc = config.model_dump()
    doc["server"].update(server)
    doc.update(top)
    from .config import parse_config

    return parse_config(doc, config.source)


def create_app() -> Gateway:
    """The app factory uvicorn workers call; the config path and overrides come by environment."""
    config = load_config(os.environ.get(CONFIG_ENV) or None)
    overrides = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    return Gateway(with_overrides(config, overrides) if overrides else config)


def serve(config_path: str | None, overrides: dict[str, Any]) -> None:
    config = load_config(config_path)
    if overrides:
        config = with_overrides(config, overrides)
    server = config.server
    check_bind(config, server.host, check_store(config))
    logging.basicConfig(
        level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
        "proxy_headers": False,  # client addresses (for lockouts) are the socket's own
        "timeout_graceful_shutdown": server.grace_seconds,
        "timeout_keep_alive": 75,
    }
    logging.getLogger("modelwire").info(
        "modelwire serving on http://%s:%s (%d backend(s), store %s)",
        server.host,
        server.port,
        len(config.backends),
        config.store.split("://")[0],
    )
    if server.workers > 1:
        os.environ[CONFIG_ENV] = config_path or ""
        os.environ[OVERRIDES_ENV] = json.dumps(overrides)
        uvicorn.run("modelwire.gateway.server:create_app", factory=True, workers=server.workers, **options)
    else:
        _Server(uvicorn.Config(Gateway(config), **options)).run()


class _Server(uvicorn.Server):
    """uvicorn re-raises a stop signal after its graceful shutdown, so the process would die by
    SIGTERM; a gateway that drained cleanly should exit 0."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
