"""The parent of several workers: it binds the listening socket, starts the workers, restarts one
that dies and stops them all on a signal. It serves nothing itself.

``modelwire serve`` checks the config, the store and the keys, then, with more than one worker,
replaces itself with this module (``exec``: same process, same pid, for systemd or a container's
init). What the checks loaded (the CLI, the config's models, SQLAlchemy and the store) would
otherwise stay resident in a process that never uses it again, and each worker, spawned from the
parent's main module, would load the CLI as well. The workers build the gateway from the same config
file and overrides, passed on in the environment (:func:`.server.create_app`).

Each worker listens on a socket of its own, all bound to the gateway's address with
``SO_REUSEPORT``, and the kernel spreads new connections over them evenly. On one shared socket
every worker woke for each new connection and the first to run accepted all that were waiting: a
burst of 32 keep-alive connections could land on one worker while the other idled, and a pooled
client kept it so. The parent only reserves the address (bound, never listening), having first
bound it plainly, so that a port another program or a second gateway holds is refused as before
rather than shared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess, multiprocess

from .metrics import prepare_multiprocess
from .requestlog import LogFormat, configure_logging

APP = "modelwire.gateway.server:create_app"


def become(options: dict[str, Any], log_level: str, log_format: LogFormat) -> None:
    """Continue as the workers' parent, in a fresh process image where ``exec`` exists; ``options``
    are uvicorn's (JSON values only)."""
    if os.name != "posix":  # no exec that keeps the process: parent them from here
        run(options, log_level, log_format)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # -P: the working directory stays off the module path (a stray json.py there is not imported),
    # for this process and the workers it spawns, which inherit the flag.
    argv = [sys.executable, "-P", "-m", __name__, json.dumps([options, log_level, log_format])]
    os.execv(sys.executable, argv)


def run(options: dict[str, Any], log_level: str, log_format: LogFormat) -> None:
    # The process keeps the name it had as `modelwire serve` (ps, top, pgrep), not the interpreter's.
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text("modelwire")
    configure_logging(log_level, log_format)
    prepare_multiprocess()
    config = uvicorn.Config(APP, factory=True, **options)
    try:
        reserved = _reserve(config.host, config.port)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()  # "address already in use", as one worker says it
        logging.getLogger("modelwire.gateway").error(
            "cannot listen on %s:%s: %s; stop what holds it or choose another server.port",
            config.host,
            config.port,
            reason,
        )
        sys.exit(STARTUP_FAILURE)
    # uvicorn's supervisor makes (and remakes) its workers by this name
    multiprocess.Process = _Worker  # type: ignore[misc]
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[reserved]).run()


class _Worker(multiprocess.Process):
    """A worker of uvicorn's supervisor that serves on a listening socket of its own."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover (a worker)
        super().target([_own_socket(s) for s in sockets or []])


def _reserve(host: str, port: int) -> socket.socket:
    """The gateway's address, bound for ``SO_REUSEPORT`` sockets after a plain bind proved it free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # fails on any listener, ours or not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        address = probe.getsockname()
    reserved = _reuse_port_socket(family, address)
    reserved.set_inheritable(True)
    return reserved


def _own_socket(inherited: socket.socket) -> socket.socket:
    own = _reuse_port_socket(inherited.family, inherited.getsockname())
    inherited.close()
    return own


def _reuse_port_socket(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


if __name__ == "__main__":
    run(*json.loads(sys.argv[1]))
