"""The gateway's shared state: what start-up creates and every part of the gateway reads.

Before start-up (and in a gateway built only to be inspected) the parts are in-memory stand-ins;
:meth:`modelwire.gateway.app.Gateway.startup` replaces them with the store-backed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .auth import KeyBook
from .chains import Chains
from .limits import Limiter, MemoryCounters
from .store import Store, UsageWriter


@dataclass(slots=True, eq=False)
class State:
    keys: KeyBook
    limiter: Limiter
    chains: Chains
    store: Store | None = None
    usage: UsageWriter | None = None

    @classmethod
    def in_memory(cls, keys: KeyBook) -> State:
        return cls(keys=keys, limiter=Limiter(MemoryCounters()), chains=Chains(None))
