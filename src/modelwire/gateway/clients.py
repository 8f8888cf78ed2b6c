"""Who a request really comes from, when the gateway sits behind load balancers.

A proxy's address is not the client's: lockouts keyed by it would lock out everyone behind the same
load balancer at once. ``X-Forwarded-For`` and ``Forwarded`` say who the client was, but anyone can
send them, so they are believed only from the peers listed in ``server.trusted_proxies``, and then
read from the right: each trusted proxy appends the address it saw, so the first address from the
right that is not itself a trusted proxy is the client. Entries further left came from the client
and are never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"
_MEMO_LIMIT = 4096


class ClientAddress:
    """``scope -> address``: the socket's peer, or the forwarded client when the peer is trusted."""

    __slots__ = ("_memo", "_networks")

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted)
        self._memo: dict[str, bool] = {}

    def __call__(self, scope: Any) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else UNKNOWN
        if not self._networks or not self.trusted(peer):
            return peer
        hops = forwarded_for(scope["headers"])
        for hop in reversed(hops):
            if not _is_address(hop):
                break  # a trusted proxy wrote garbage: believe nothing further left
            if not self.trusted(hop):
                return hop
        else:
            if hops:  # every hop is a trusted proxy: the leftmost is as far as anyone knows
                return hops[0]
        return peer

    def trusted(self, address: str) -> bool:
        verdict = self._memo.get(address)
        if verdict is None:
            verdict = _within(address, self._networks)
            if len(self._memo) < _MEMO_LIMIT:
                self._memo[address] = verdict
        return verdict


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The client chain, leftmost first, from ``Forwarded`` (RFC 7239) or else ``X-Forwarded-For``."""
    forwarded: list[str] = []
    x_forwarded: list[str] = []
    for name, value in headers:
        if name == b"forwarded":
            forwarded += _forwarded_hops(value.decode("latin-1"))
        elif name == b"x-forwarded-for":
            x_forwarded += [_bare(h) for h in value.decode("latin-1").split(",") if h.strip()]
    return forwarded or x_forwarded


def _forwarded_hops(value: str) -> list[str]:
    hops = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            if name.lower() == "for":
                hops.append(_bare(raw))
    return hops


def _bare(hop: str) -> str:
    """An address without quotes, IPv6 brackets or a port: ``"[2001:db8::1]:4711"`` -> ``2001:db8::1``."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        return hop.partition(":")[0]
    return hop


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
