"""The key table: whether the gateway is open, and keeping it in step with the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from modelwire.gateway.auth import KeyBook, extract_key
from modelwire.gateway.config import KeyConfig
from modelwire.gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path}/state.db")


def test_open_only_with_no_key_anywhere_and_only_on_loopback(store: Store) -> None:
    assert KeyBook([], store, loopback=True).open
    assert not KeyBook([], store, loopback=False).open, "beyond loopback it never opens"
    assert not KeyBook([KeyConfig(key="sk-config-key", name="dev")], store, loopback=True).open


def test_a_store_key_closes_an_open_gateway_on_the_next_sync(store: Store) -> None:
    book = KeyBook([], store, loopback=True)
    book.sync()
    assert book.open
    secret, _ = store.create_key(name="alice")
    assert book.sync() is True
    assert not book.open
    found = book.lookup(secret)
    assert found is not None and found.name == "alice"


@pytest.mark.parametrize("loopback", [True, False])
def test_revoking_every_key_never_opens_the_gateway(store: Store, loopback: bool) -> None:
    secret, _ = store.create_key(name="alice")
    book = KeyBook([], store, loopback=loopback)
    book.sync()
    assert book.lookup(secret) is not None
    store.revoke_key("alice")
    book.sync()
    assert book.lookup(secret) is None
    assert not book.open and book.has_keys
    restarted = KeyBook([], store, loopback=loopback)
    restarted.sync()
    assert not restarted.open, "a restart does not open it either"


def test_sync_reloads_only_when_the_counter_moves(store: Store) -> None:
    store.create_key(name="alice")
    book = KeyBook([], store, loopback=True)
    assert book.sync() is True
    assert book.sync() is False
    store.create_key(name="bob")
    assert book.sync() is True
    assert sorted(k.name for k in book.in_force()) == ["alice", "bob"]


def test_lookups_need_no_database(store: Store) -> None:
    secret, _ = store.create_key(name="alice", rpm=5)
    book = KeyBook([KeyConfig(key="sk-config-key-1", name="dev")], store, loopback=True)
    book.sync()
    store.close()  # every lookup below would fail if it touched the store
    assert book.lookup("sk-config-key-1").name == "dev"  # type: ignore[union-attr]
    key = book.lookup(secret)
    assert key is not None and key.policy.rpm == 5
    assert book.lookup("mw-no-such-key") is None


def test_a_failing_store_keeps_the_keys_in_force(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    secret, _ = store.create_key(name="alice")
    book = KeyBook([], store, loopback=True)
    book.sync()

    def down() -> int:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(store, "keys_version", down)
    with pytest.raises(OperationalError):
        book.sync()
    assert book.lookup(secret) is not None


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({b"authorization": b"Bearer sk-a"}, b"", "sk-a"),
        ({b"authorization": b"bearer  sk-b "}, b"", "sk-b"),
        ({b"x-api-key": b"sk-c"}, b"", "sk-c"),
        ({b"api-key": b"sk-d"}, b"", "sk-d"),
        ({b"x-goog-api-key": b"sk-e"}, b"", "sk-e"),
        ({}, b"alt=sse&key=sk-f", "sk-f"),
        ({b"authorization": b"Basic abc"}, b"", None),
        ({}, b"", None),
    ],
)
def test_where_a_key_is_found(headers: dict[bytes, bytes], query: bytes, expected: str | None) -> None:
    assert extract_key(headers, query) == expected
