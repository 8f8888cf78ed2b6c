"""The gateway's own Redis client: RESP2 bytes both ways, one pipelined connection matched in order,
MULTI/EXEC, error replies, timeouts that drop the connection, reconnects, and logging in."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from modelwire.gateway.resp import (
    Endpoint,
    Parser,
    RedisConnectionError,
    RedisError,
    RedisTimeout,
    Reply,
    ReplyError,
    RespClient,
    encode_command,
    redacted,
)

from .services import SHARED_REDIS_URL, PrivateRedis

# ---------------------------------------------------------------------------------------- encoding


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command(("SET", b"k\r\n", 3, -1.5, "é")) == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n3\r\n$4\r\n-1.5\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert encode_command(("PING",)) == b"*1\r\n$4\r\nPING\r\n"


@pytest.mark.parametrize("bad", [True, None, [1]])
def test_arguments_other_than_strings_and_numbers_are_refused(bad: object) -> None:
    with pytest.raises(TypeError):
        encode_command(("SET", "k", bad))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- decoding

WIRE = (
    b"+OK\r\n"
    b"$5\r\nhe\r\no\r\n"  # a bulk string may hold CRLF
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b":-42\r\n"
    b"-ERR unknown command 'FOO'\r\n"
    b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n"
    b"*-1\r\n"
    b"*2\r\n-WRONGTYPE Operation against a key\r\n+QUEUED\r\n"
)


def decoded(replies: list[Reply]) -> list[object]:
    """Replies with errors as ("error", text), since exceptions do not compare equal."""
    return [
        ("error", str(r)) if isinstance(r, ReplyError) else decoded(r) if isinstance(r, list) else r
        for r in replies
    ]


EXPECTED: list[object] = [
    "OK",
    b"he\r\no",
    b"",
    None,
    -42,
    ("error", "ERR unknown command 'FOO'"),
    [1, [b"a", None], []],
    None,
    [("error", "WRONGTYPE Operation against a key"), "QUEUED"],
]


def test_every_reply_type_decodes() -> None:
    replies = Parser().feed(WIRE)
    assert decoded(replies) == EXPECTED
    error = replies[5]
    assert isinstance(error, ReplyError) and error.code == "ERR"


def test_replies_split_at_any_byte_decode_the_same() -> None:
    for cut in range(1, len(WIRE)):
        parser = Parser()
        replies = parser.feed(WIRE[:cut]) + parser.feed(WIRE[cut:])
        assert decoded(replies) == EXPECTED, f"cut at byte {cut}"
    parser = Parser()
    one_by_one = [reply for i in range(len(WIRE)) for reply in parser.feed(WIRE[i : i + 1])]
    assert decoded(one_by_one) == EXPECTED


@pytest.mark.parametrize("garbage", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcd\r\n", b"*x\r\n"])
def test_garbage_on_the_wire_is_a_connection_error(garbage: bytes) -> None:
    with pytest.raises(RedisConnectionError, match="malformed"):
        Parser().feed(garbage)


# ---------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("redis://localhost", Endpoint(host="localhost")),
        ("redis://cache:6380/2", Endpoint(host="cache", port=6380, db=2)),
        ("redis://:p%40ss@h/0", Endpoint(host="h", password="p@ss")),
        ("redis://alice:pw@h:1/3", Endpoint(host="h", port=1, username="alice", password="pw", db=3)),
        ("rediss://[::1]:6390", Endpoint(host="::1", port=6390, tls=True)),
        ("redis://h?db=4&password=pw", Endpoint(host="h", db=4, password="pw")),
        ("unix:///run/redis.sock?db=5", Endpoint(path="/run/redis.sock", db=5)),
    ],
)
def test_url_forms(url: str, endpoint: Endpoint) -> None:
    assert Endpoint.parse(url) == endpoint


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://:hunter2@h", "redis://"),
        ("redis://:hunter2@h/zero", "must be a number"),
        ("redis://h?password=hunter2&ssl_keyfile=hunter2", "ssl_keyfile"),
        ("unix://?password=hunter2", "socket's path"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as refused:
        Endpoint.parse(url)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@cache.internal:6380/2", "redis://cache.internal:6380/2"),
        ("rediss://:pw@[::1]:6379/0?password=pw", "rediss://[::1]:6379/0"),
        ("redis://localhost", "redis://localhost"),
    ],
)
def test_addresses_carry_no_credentials(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert RespClient(url).address == shown


# ---------------------------------------------------------------------------------------- a real Redis


@pytest.fixture
async def client() -> AsyncIterator[RespClient]:
    redis = RespClient(SHARED_REDIS_URL)
    yield redis
    await redis.aclose()


@pytest.fixture
async def prefix(client: RespClient) -> AsyncIterator[str]:
    name = f"mwtest:resp:{uuid.uuid4().hex}"
    yield name
    keys = await client.call("KEYS", f"{name}:*")
    assert isinstance(keys, list)
    if keys:
        await client.call("DEL", *[key for key in keys if isinstance(key, bytes)])


async def test_commands_round_trip(client: RespClient, prefix: str) -> None:
    assert await client.call("PING") == "PONG"
    assert await client.call("SET", f"{prefix}:a", "1.5", "NX") == "OK"
    assert await client.call("SET", f"{prefix}:a", "9", "NX") is None  # NX: already set
    assert await client.call("INCRBYFLOAT", f"{prefix}:a", 2) == b"3.5"
    assert await client.call("EXPIRE", f"{prefix}:a", 60) == 1
    assert await client.call("MGET", f"{prefix}:a", f"{prefix}:missing") == [b"3.5", None]


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    client: RespClient, prefix: str
) -> None:
    values = [f"value-{n}" * (n % 7 + 1) for n in range(300)]
    assert await asyncio.gather(*(client.call("SET", f"{prefix}:{n}", v) for n, v in enumerate(values))) == [
        "OK"
    ] * len(values)
    replies = await asyncio.gather(*(client.call("GET", f"{prefix}:{n}") for n in range(len(values))))
    assert replies == [v.encode() for v in values]
    fresh = RespClient(SHARED_REDIS_URL)  # concurrent first calls share one connection attempt too
    try:
        ids = await asyncio.gather(*(fresh.call("CLIENT", "ID") for _ in range(50)))
    finally:
        await fresh.aclose()
    assert len(set(ids)) == 1, "every call went over one connection"


class _RecordingTransport:
    """A connection's transport, with every write it is given kept."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


def _record_writes(client: RespClient) -> _RecordingTransport:
    connection = client._connection
    assert connection is not None and connection._transport is not None
    recording = _RecordingTransport(connection._transport)
    connection._transport = recording  # type: ignore[assignment]
    return recording


async def test_calls_made_while_others_wait_share_one_write(client: RespClient, prefix: str) -> None:
    assert await client.call("PING") == "PONG"
    recording = _record_writes(client)
    key = f"{prefix}:n"
    counts = await asyncio.gather(*(client.call("INCR", key) for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))  # type: ignore[type-var]
    # The first went at once on the idle connection; the 19 made while it waited, in one write.
    assert [write.count(b"INCR") for write in recording.writes] == [1, 19]
    assert await client.pipeline(("GET", key), ("DEL", key)) == [b"20", 1]
    assert len(recording.writes) == 3, "a call on an idle connection is a write of its own"


async def test_calls_failed_before_their_turn_ends_are_never_written(client: RespClient) -> None:
    assert await client.call("PING") == "PONG"
    recording = _record_writes(client)
    connection = client._connection
    assert connection is not None
    sent = connection.request(encode_command(("PING",)), 1)
    held = connection.request(encode_command(("ECHO", "held")), 1)  # waits for the turn's write
    connection.close()
    for pending in (sent, held):
        with pytest.raises(RedisConnectionError):
            await pending
    await asyncio.sleep(0)
    assert recording.writes == [encode_command(("PING",))]
    assert await client.call("PING") == "PONG"  # on a new connection


async def test_a_pipeline_answers_in_order(client: RespClient, prefix: str) -> None:
    key = f"{prefix}:p"
    assert await client.pipeline(("INCRBYFLOAT", key, 1.25), ("EXPIRE", key, 60), ("GET", key)) == [
        b"1.25",
        1,
        b"1.25",
    ]


async def test_error_replies_raise_and_the_connection_stays_usable(client: RespClient, prefix: str) -> None:
    await client.call("SET", f"{prefix}:text", "not a number")
    with pytest.raises(ReplyError, match="not a valid float") as refused:
        await client.call("INCRBYFLOAT", f"{prefix}:text", 1)
    assert refused.value.code == "ERR"
    with pytest.raises(ReplyError):  # every command of a pipeline runs; the first error is raised
        await client.pipeline(("INCRBYFLOAT", f"{prefix}:text", 1), ("SET", f"{prefix}:after", "x"))
    assert await client.call("GET", f"{prefix}:after") == b"x"
    assert await client.call("ECHO", "still aligned") == b"still aligned"


async def test_a_transaction_is_applied_all_at_once(client: RespClient, prefix: str) -> None:
    """Another connection reading between the two increments would see them differ; concurrent
    transactions on one connection must not interleave (Redis refuses a MULTI inside a MULTI)."""
    first, second = f"{prefix}:first", f"{prefix}:second"
    reader = RespClient(SHARED_REDIS_URL)

    async def write() -> None:
        for _ in range(100):
            await asyncio.gather(*(client.transaction(("INCR", first), ("INCR", second)) for _ in range(5)))

    async def read() -> list[Reply]:
        seen = []
        for _ in range(300):
            seen.append(await reader.call("MGET", first, second))
        return seen

    try:
        _, seen = await asyncio.gather(write(), read())
    finally:
        await reader.aclose()
    assert all(isinstance(pair, list) and pair[0] == pair[1] for pair in seen), (
        "a read saw half a transaction"
    )
    assert await client.call("MGET", first, second) == [b"500", b"500"]


async def test_a_transaction_with_a_bad_command_applies_nothing(client: RespClient, prefix: str) -> None:
    with pytest.raises(ReplyError, match="wrong number of arguments"):
        await client.transaction(("SET", f"{prefix}:t", "1"), ("INCR",))
    assert await client.call("GET", f"{prefix}:t") is None
    assert await client.transaction(("SET", f"{prefix}:t", "1"), ("INCR", f"{prefix}:t")) == ["OK", 2]


async def test_a_caller_giving_up_does_not_shift_the_replies(client: RespClient, prefix: str) -> None:
    await client.call("PING")
    slow = asyncio.ensure_future(client.call("BLPOP", f"{prefix}:never", "0.2"))
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await client.call("ECHO", "mine") == b"mine", "the cancelled call's reply went to the next one"


async def test_a_connection_redis_closed_while_idle_is_replaced_without_an_error(client: RespClient) -> None:
    first_id = await client.call("CLIENT", "ID")
    killer = RespClient(SHARED_REDIS_URL)
    try:
        assert await killer.call("CLIENT", "KILL", "ID", str(first_id)) == 1
    finally:
        await killer.aclose()
    await asyncio.sleep(0.05)  # the end of the stream reaches the loop
    assert await client.call("PING") == "PONG"
    assert await client.call("CLIENT", "ID") != first_id


# ---------------------------------------------------------------------------------------- failures


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port where the kernel completes the handshake and nobody ever answers."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        yield hole.getsockname()[1]


async def test_a_silent_server_times_every_pending_call_out(black_hole: int) -> None:
    redis = RespClient(f"redis://127.0.0.1:{black_hole}/0", timeout=0.3)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(redis.call("GET", f"k{n}") for n in range(5)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    finally:
        await redis.aclose()
    assert all(isinstance(outcome, RedisTimeout) for outcome in outcomes), outcomes
    assert 0.25 <= elapsed < 0.8
    assert isinstance(outcomes[0], TimeoutError) and isinstance(outcomes[0], RedisError)
    assert f"127.0.0.1:{black_hole}" in str(outcomes[0])


async def test_logging_in_is_bounded_by_the_connect_timeout(black_hole: int) -> None:
    redis = RespClient(f"redis://:hunter2@127.0.0.1:{black_hole}/0", connect_timeout=0.2, timeout=5)
    started = time.monotonic()
    try:
        with pytest.raises(RedisTimeout, match="did not accept a connection") as timed_out:
            await redis.call("PING")
    finally:
        await redis.aclose()
    assert time.monotonic() - started < 0.6
    assert "hunter2" not in str(timed_out.value)


async def test_a_closed_port_fails_at_once_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        redis = RespClient(f"redis://:hunter2@127.0.0.1:{port}/0")
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="cannot connect") as refused:
            await redis.call("PING")
    assert time.monotonic() - started < 0.3
    assert f"127.0.0.1:{port}" in str(refused.value) and "hunter2" not in str(refused.value)
    assert isinstance(refused.value, ConnectionError)


@pytest.fixture
def private_redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path) as server:
        yield server


async def test_a_paused_server_times_out_then_a_new_connection_works(
    private_redis_server: PrivateRedis,
) -> None:
    redis = RespClient(private_redis_server.url, timeout=0.3)
    pid = private_redis_server.pid
    assert pid is not None
    try:
        assert await redis.call("SET", "k", "before") == "OK"
        os.kill(pid, signal.SIGSTOP)
        try:
            pending = [redis.call("SET", "k", f"during-{n}") for n in range(3)]
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(isinstance(outcome, RedisTimeout) for outcome in outcomes), outcomes
        assert await redis.call("ECHO", "after") == b"after", "replies of the dropped calls leaked in"
        assert await redis.call("SET", "k", "after") == "OK"
        assert await redis.call("GET", "k") == b"after"
    finally:
        await redis.aclose()


async def test_calls_reconnect_after_the_server_restarts(private_redis_server: PrivateRedis) -> None:
    redis = RespClient(private_redis_server.url)
    try:
        assert await redis.call("SET", "k", "1") == "OK"
        private_redis_server.stop("immediate")
        with pytest.raises(RedisConnectionError):
            await redis.call("GET", "k")
        private_redis_server.start()
        assert await redis.call("GET", "k") is None  # a new, empty server on the same port
        assert await redis.call("PING") == "PONG"
    finally:
        await redis.aclose()


# ---------------------------------------------------------------------------------------- logging in

PASSWORD = "s3cret-Pw"


class PasswordRedis(PrivateRedis):
    """A private redis-server that wants a password, listening on a Unix socket too."""

    socket_path: Path

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        socket_option = ("--unixsocket", str(self.socket_path), "--unixsocketperm", "700")
        return [*super()._command(), "--requirepass", PASSWORD, *socket_option]


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PasswordRedis]:
    short = Path(tempfile.mkdtemp(prefix="mwresp-"))  # a socket path must fit in 108 bytes
    server = PasswordRedis(tmp_path)
    server.socket_path = short / "redis.sock"
    try:
        with server:
            yield server
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def call_once(url: str, *args: str) -> Reply:
    redis = RespClient(url)
    try:
        return await redis.call(*args)
    finally:
        await redis.aclose()


async def test_auth_select_and_acl_users(password_redis: PasswordRedis) -> None:
    port = password_redis.port
    assert await call_once(f"redis://:{PASSWORD}@127.0.0.1:{port}/3", "SET", "k", "in db 3") == "OK"
    assert await call_once(f"redis://:{PASSWORD}@127.0.0.1:{port}", "GET", "k") is None
    assert await call_once(f"redis://127.0.0.1:{port}?db=3&password={PASSWORD}", "GET", "k") == b"in db 3"
    admin = f"redis://:{PASSWORD}@127.0.0.1:{port}"
    assert await call_once(admin, "ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all") == "OK"
    assert await call_once(f"redis://alice:alice-pw@127.0.0.1:{port}/3", "ACL", "WHOAMI") == b"alice"
    assert await call_once(f"unix://{password_redis.socket_path}?db=3&password={PASSWORD}", "GET", "k") == (
        b"in db 3"
    )


async def test_a_wrong_password_fails_clearly_without_echoing_it(password_redis: PasswordRedis) -> None:
    port = password_redis.port
    with pytest.raises(ReplyError, match="refused the credentials") as refused:
        await call_once(f"redis://:Wrong-Guess@127.0.0.1:{port}/0", "PING")
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message and "WRONGPASS" in message
    assert "Wrong-Guess" not in message and PASSWORD not in message
    with pytest.raises(ReplyError, match="NOAUTH"):
        await call_once(f"redis://127.0.0.1:{port}/0", "PING")


# ---------------------------------------------------------------------------------------- TLS


LOOPBACK = ipaddress.ip_address("127.0.0.1")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that signs itself, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelwire test Redis")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS server answering +PONG to every command, and the certificate to trust it by."""
    cert_path, key_path = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = Parser()
        with contextlib.suppress(OSError):
            while data := await reader.read(4096):
                writer.write(b"+PONG\r\n" * len(parser.feed(data)))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1], cert_path
    server.close()
    await server.wait_closed()


async def test_rediss_speaks_tls_and_checks_the_certificate(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert_path = tls_server
    with pytest.raises(RedisConnectionError, match="cannot connect") as refused:
        await call_once(f"rediss://127.0.0.1:{port}/0", "PING")  # not signed by a trusted CA
    assert "certificate verify failed" in str(refused.value), refused.value
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # now it is
    assert await call_once(f"rediss://127.0.0.1:{port}/0", "PING") == "PONG"
