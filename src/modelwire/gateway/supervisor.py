"""The parent of several workers: it binds the listening socket, starts the workers, restarts one
that dies and stops them all on a signal. It serves nothing itself.

``modelwire serve`` checks the config, the store and the keys, then, with more than one worker,
replaces itself with this module (``exec``: same process, same pid, for systemd or a container's
init). What the checks loaded (the CLI, the config's models, SQLAlchemy and the store) would
otherwise stay resident in a process that never uses it again, and each worker, spawned from the
parent's main module, would load the CLI as well. The workers build the gateway from the same config
file and overrides, passed on in the environment (:func:`.server.create_app`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn

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
    uvicorn.run(APP, factory=True, **options)


if __name__ == "__main__":
    run(*json.loads(sys.argv[1]))
