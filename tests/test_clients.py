"""Who a request comes from: forwarded headers believed only from trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire.gateway.clients import ClientAddress, forwarded_for, is_loopback


def scope(peer: str, *headers: tuple[str, str]) -> dict[str, Any]:
    return {"client": (peer, 50000), "headers": [(k.encode(), v.encode()) for k, v in headers]}


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    address = ClientAddress()
    assert address(scope("10.0.0.5", ("x-forwarded-for", "203.0.113.9"))) == "10.0.0.5"


def test_forwarded_headers_from_an_untrusted_peer_are_ignored() -> None:
    address = ClientAddress(["10.0.0.0/8"])
    assert address(scope("192.0.2.1", ("x-forwarded-for", "203.0.113.9"))) == "192.0.2.1"


def test_x_forwarded_for_is_read_from_the_right_past_trusted_hops() -> None:
    address = ClientAddress(["10.0.0.0/8"])
    # The client claims 1.2.3.4; the first proxy saw 203.0.113.9, the second proxy 10.1.1.1.
    chain = ("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.1.1.1")
    assert address(scope("10.0.0.5", chain)) == "203.0.113.9"


def test_several_x_forwarded_for_headers_form_one_chain() -> None:
    address = ClientAddress(["10.0.0.0/8"])
    peer = scope("10.0.0.5", ("x-forwarded-for", "198.51.100.7"), ("x-forwarded-for", "10.2.2.2"))
    assert address(peer) == "198.51.100.7"


def test_rfc7239_forwarded_wins_over_x_forwarded_for() -> None:
    address = ClientAddress(["10.0.0.0/8", "2001:db8::/32"])
    forwarded = ("forwarded", 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"')
    assert address(scope("10.0.0.5", forwarded, ("x-forwarded-for", "198.51.100.1"))) == "192.0.2.60"


def test_a_client_behind_only_trusted_hops_is_the_leftmost() -> None:
    address = ClientAddress(["10.0.0.0/8"])
    assert address(scope("10.0.0.5", ("x-forwarded-for", "10.9.9.9, 10.1.1.1"))) == "10.9.9.9"


def test_garbage_from_a_trusted_proxy_falls_back_to_the_peer() -> None:
    address = ClientAddress(["10.0.0.0/8"])
    assert address(scope("10.0.0.5", ("x-forwarded-for", "1.2.3.4, not-an-address"))) == "10.0.0.5"
    assert address(scope("10.0.0.5")) == "10.0.0.5"


def test_ipv4_mapped_peers_match_ipv4_ranges() -> None:
    address = ClientAddress(["127.0.0.1/32"])
    assert address(scope("::ffff:127.0.0.1", ("x-forwarded-for", "203.0.113.1"))) == "203.0.113.1"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("for=192.0.2.43:8080", ["192.0.2.43"]),
        ('For="[2001:db8::1]"', ["2001:db8::1"]),
        ("for=192.0.2.43, for=198.51.100.17;by=203.0.113.60", ["192.0.2.43", "198.51.100.17"]),
    ],
)
def test_forwarded_hops_are_bare_addresses(header: str, expected: list[str]) -> None:
    assert forwarded_for([(b"forwarded", header.encode())]) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.0.0.1", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
