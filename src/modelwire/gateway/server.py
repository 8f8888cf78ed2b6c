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
from typing import Any

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


def check_bind(config: Config, host: str) -> None:
    """No client keys anywhere means anyone who can connect may spend: loopback only, then."""
    if config.keys or is_loopback(host):
        return
    with Store(config.store) as store:
        if store.list_keys():
            return
    raise ConfigError(
        config.source,
        "server.host",
        f"refusing to listen on {host} with no client keys configured; add keys (config 'keys:' or "
        "`modelwire keys create`) or listen on 127.0.0.1",
    )


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """The config with command-line overrides (host, port, workers, force_model, default_backend)."""
    server = {k: overrides[k] for k in ("host", "port", "workers") if overrides.get(k) is not None}
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
    import uvicorn

    config = load_config(config_path)
    if overrides:
        config = with_overrides(config, overrides)
    server = config.server
    check_bind(config, server.host)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
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
        uvicorn.run(Gateway(config), **options)
