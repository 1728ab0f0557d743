"""Tests of what is particular to the NSQ driver, against the real nsqd of scripts/brokers.

Shared semantics are proven by the conformance suite; here: NSQ's name rule, URL options,
REQ with a delay, TOUCH, bounded publishes when nsqd does not answer, survival of nsqd
restarts, the return of unacked messages on close, MPUB batches, ``envelope=off`` and
ephemeral groups (``#ephemeral`` channels that nsqd deletes when their last member goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from channels import App
from channels.errors import (
    CapabilityNotSupported,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    Timeout,
    TopicNotFound,
)
from channels.events import Message
from channels.url import parse_url
from tests.support import NsqTopics
from transports.base import SubscriptionSpec, TopicSpec
from transports.nsq import NsqTransport, ephemeral_channel

URL = os.environ.get("CHANNELS_TEST_NSQ_URL", "nsq://127.0.0.1:4150")
ROOT = Path(__file__).resolve().parents[2]
HTTP = "http://127.0.0.1:4151"


def _nsqd_up() -> bool:
    try:
        with urllib.request.urlopen(f"{HTTP}/ping", timeout=2) as response:
            return bool(response.read() == b"OK")
    except OSError:
        return False


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return b""


async def _settled_at_nsqd(topic: str, group: str) -> None:
    """Wait (bounded) until nsqd has no message of the channel in flight."""
    stats = f"{HTTP}/stats?format=json&topic={topic}&channel={group}"
    for _ in range(100):
        if b'"in_flight_count":0' in await asyncio.to_thread(_get, stats):
            return
        await asyncio.sleep(0.05)


needs_nsqd = pytest.mark.skipif(not _nsqd_up(), reason="nsqd is not running (scripts/brokers up nsq)")


_topics = NsqTopics(HTTP, "t")
name = _topics.name


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _topics.delete_all()


def transport(url: str = URL, **options: str) -> NsqTransport:
    if options:
        url += ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())
    return NsqTransport(parse_url(url))


@contextlib.asynccontextmanager
async def connected(url: str = URL, **options: str) -> AsyncIterator[NsqTransport]:
    t = transport(url, **options)
    await asyncio.wait_for(t.connect(), 15)
    try:
        yield t
    finally:
        await asyncio.wait_for(t.close(), 15)


def restart_nsqd() -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "brokers"), "restart", "nsq"],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
    )


def spec(topic: str, group: str, prefetch: int = 10) -> SubscriptionSpec:
    return SubscriptionSpec((TopicSpec(topic, internal=True),), group, prefetch=prefetch)


async def receive(sub: object, n: int = 1, timeout: float = 10) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"received {len(out)} of {n} messages within {timeout}s"
        out += await asyncio.wait_for(sub.receive(n - len(out)), remaining)  # type: ignore[attr-defined]
    return out


# -- no broker needed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["a/b", "x" * 65, "caf\u00e9", "a:b", "a#b", "#ephemeral", "x" * 55 + "#ephemeral", "ab\n"],
)
def test_name_rule_is_named_in_the_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"\[\.a-zA-Z0-9_-\]\+\(#ephemeral\)\?\$, 1 to 64"):
        transport().validate_topic_name(bad)


@pytest.mark.parametrize("good", ["a", "x" * 64, "orders.v1_eu-2", "tmp#ephemeral"])
def test_names_within_the_rule(good: str) -> None:
    transport().validate_topic_name(good)


def test_ephemeral_channel_names() -> None:
    """An ephemeral group's channel is its name plus nsqd's suffix, never the durable
    channel of the same group; a long name is cut but stays distinct and within the rule."""
    t = transport()
    assert ephemeral_channel("tail") == "tail#ephemeral"
    assert ephemeral_channel("tail#ephemeral") == "tail#ephemeral"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    made = {ephemeral_channel(long_a), ephemeral_channel(long_b), ephemeral_channel("x" * 54)}
    assert len(made) == 3
    for channel in made:
        assert len(channel) <= 64 and channel.endswith("#ephemeral")
        t.validate_topic_name(channel)
    assert ephemeral_channel(long_a) == ephemeral_channel(long_a)


def test_bad_names_are_refused_by_the_app() -> None:
    app = App("nsq-names", broker=URL)
    with pytest.raises(ConfigurationError, match="must match"):
        app.topic("orders/eu")


def test_unknown_and_invalid_options() -> None:
    with pytest.raises(ConfigurationError, match="unknown URL option"):
        transport(max_inflight="5")
    with pytest.raises(ConfigurationError, match="publish_timeout"):
        transport(publish_timeout="0")
    with pytest.raises(ConfigurationError, match="envelope"):
        transport(envelope="maybe")


def test_capabilities_are_the_documented_ones() -> None:
    caps = transport().capabilities
    assert caps.uses_envelope and caps.ack and caps.redelivery_on_nack
    assert caps.consumer_groups and caps.fanout_groups and caps.topic_check
    assert not caps.per_key_ordering and not caps.replay_from_start and not caps.patterns
    assert caps.max_message_size == 1024 * 1024
    assert transport(max_message_size="4194304").capabilities.max_message_size == 4 * 1024 * 1024
    plain = transport(envelope="off").capabilities
    assert not plain.uses_envelope


def test_auth_secret_never_shows() -> None:
    t = transport(auth_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(t)
    with pytest.raises(ConfigurationError) as info:
        transport(auth_secret="s3cr3t-value", bogus="1")
    assert "s3cr3t-value" not in str(info.value)


async def test_publish_to_a_closed_port_fails_fast() -> None:
    t = transport("nsq://127.0.0.1:1", connect_timeout="2")
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        await t.connect()
    assert time.monotonic() - started < 5
    assert info.value.retryable


async def test_publish_to_a_silent_nsqd_is_bounded() -> None:
    """A server that accepts and never answers (a hung nsqd): Timeout, retryable, bounded."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        with contextlib.suppress(Exception):
            await reader.read(1 << 20)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t = transport(f"nsq://127.0.0.1:{port}", connect_timeout="1", publish_timeout="1")
        started = time.monotonic()
        with pytest.raises((Timeout, ConnectionFailed), match=r"no answer within 1\.0s") as info:
            await t.connect()
        assert time.monotonic() - started < 3
        assert info.value.retryable
        assert accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# -- against nsqd -------------------------------------------------------------------------


TLS_DIR = ROOT / ".brokers" / "tls"
TLS_URL = os.environ.get("CHANNELS_TEST_NSQ_TLS_URL", f"{URL}?tls=true&tls_ca_file={TLS_DIR / 'ca.crt'}")
needs_tls = pytest.mark.skipif(
    not (TLS_DIR / "ca.crt").exists() and "CHANNELS_TEST_NSQ_TLS_URL" not in os.environ,
    reason="no test CA (scripts/brokers makes one in .brokers/tls)",
)


@needs_nsqd
@needs_tls
async def test_tls_round_trip() -> None:
    """tls=true: IDENTIFY asks for tls_v1, the socket is upgraded (ansq cannot do that
    itself), and publishing and consuming work over it."""
    topic, group = name(), name("g")
    async with connected(TLS_URL) as t:
        ssl_object = t.native()._writer.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        reader = sub.readers[0]  # type: ignore[attr-defined]
        assert reader.conn._writer.get_extra_info("ssl_object") is not None
        body = b"\x00CHE\x01\x00\x00\x00" + bytes(range(256)) * 400
        await t.publish([Message(topic, body), Message(topic, body)])
        got = await receive(sub, 2)
        assert [m.value for m in got] == [body, body]
        await sub.ack(got)


@needs_nsqd
@needs_tls
async def test_tls_with_a_client_certificate() -> None:
    if not (TLS_DIR / "client.crt").exists():
        pytest.skip("no client certificate in .brokers/tls")
    url = f"{TLS_URL}&tls_cert_file={TLS_DIR / 'client.crt'}&tls_key_file={TLS_DIR / 'client.key'}"
    async with connected(url) as t:
        (result,) = await t.publish([Message(name(), b"\x00CHE\x01\x00\x00\x00mtls")])
        assert result.partition is None


@needs_nsqd
async def test_tls_with_an_untrusted_certificate_is_a_configuration_error() -> None:
    """Without the CA, verification fails: ConfigurationError (not retryable), never a
    silent fallback to plaintext."""
    t = transport(tls="true", connect_timeout="3")
    with pytest.raises(ConfigurationError, match="TLS") as info:
        await t.connect()
    assert not info.value.retryable


@needs_nsqd
async def test_missing_source_topic_and_bad_group() -> None:
    async with connected() as t:
        with pytest.raises(TopicNotFound):
            await t.declare(TopicSpec(name("missing"), internal=False), "g")
        with pytest.raises(ConfigurationError, match="channel"):
            await t.declare(TopicSpec(name(), internal=True), "bad group/name")
        with pytest.raises(CapabilityNotSupported):
            await t.subscribe(SubscriptionSpec((), "g", pattern="t-.*"))


@needs_nsqd
async def test_declare_keeps_messages_for_the_group() -> None:
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00early")])
        sub = await t.subscribe(spec(topic, group))
        (got,) = await receive(sub)
        assert got.value == b"\x00CHE\x01\x00\x00\x00early"
        assert got.key is None and got.headers == {} and not got.redelivered
        await sub.ack([got])


@needs_nsqd
async def test_mpub_batch_and_round_trip() -> None:
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group, prefetch=500))
        bodies = [b"\x00CHE\x01\x00\x00\x00" + str(i).encode() for i in range(1000)]
        started = time.monotonic()
        results = await t.publish([Message(topic, body) for body in bodies])
        elapsed = time.monotonic() - started
        assert len(results) == 1000 and all(r.topic == topic for r in results)
        got: list[Message] = []
        while len(got) < 1000:
            batch = await asyncio.wait_for(sub.receive(1000), 30)
            assert len(batch) <= 500, "more than prefetch=500 unacked messages handed out"
            await sub.ack(batch)
            got += batch
        assert sorted(m.value for m in got) == sorted(bodies)  # type: ignore[type-var]
        print(f"MPUB of 1000 small messages confirmed in {elapsed * 1000:.1f} ms")


@needs_nsqd
async def test_req_with_delay() -> None:
    topic, group = name(), name("g")
    async with connected(requeue_delay="1.5") as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00again")])
        (first,) = await receive(sub)
        started = time.monotonic()
        await sub.nack([first])
        await sub.nack([first])  # settling twice does nothing
        (second,) = await receive(sub, timeout=10)
        waited = time.monotonic() - started
        assert second.value == first.value and second.redelivered
        # nsqd looks at deferred messages by sampling channels, so late is possible; early is not
        assert 1.2 <= waited < 15, waited
        await sub.ack([second])


@needs_nsqd
async def test_nack_without_requeue_drops() -> None:
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00drop")])
        (first,) = await receive(sub)
        await sub.nack([first], requeue=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.receive(1), 2)


@needs_nsqd
async def test_touch_keeps_a_long_handler_s_message() -> None:
    """msg_timeout=2s: touched every second for 5s, the message is not redelivered."""
    topic, group = name(), name("g")
    async with connected(msg_timeout="2") as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        await t.publish(
            [
                Message(topic, b"\x00CHE\x01\x00\x00\x00long"),
                Message(topic, b"\x00CHE\x01\x00\x00\x00short"),
            ]
        )
        got = await receive(sub, 2)
        touched = next(m for m in got if m.value and m.value.endswith(b"long"))
        left = next(m for m in got if m is not touched)
        # Touched every half second for at least 5s: the touched one stays ours, while the
        # untouched one times out after 2s and comes back (acked at once, so only once).
        came_back: list[Message] = []
        started = time.monotonic()
        while time.monotonic() - started < 20 and not (came_back and time.monotonic() - started > 5):
            with contextlib.suppress(TimeoutError):
                batch = await asyncio.wait_for(sub.receive(5), 0.5)
                await sub.ack(batch)
                came_back += batch
            await sub.touch([touched])
        assert came_back and all(m.value == left.value and m.redelivered for m in came_back)
        await sub.ack([touched])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.receive(5), 3)


@needs_nsqd
async def test_unacked_messages_come_back_after_close() -> None:
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        first = await t.subscribe(spec(topic, group, prefetch=5))
        await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00" + bytes([i])) for i in range(3)])
        got = await receive(first, 3)
        await first.ack(got[:1])
        started = time.monotonic()
        await first.close()
        assert time.monotonic() - started < 5
        second = await t.subscribe(spec(topic, group))
        back = await receive(second, 2, timeout=10)
        assert sorted(m.value for m in back) == sorted(m.value for m in got[1:])  # type: ignore[type-var]
        assert all(m.redelivered for m in back)
        await second.ack(back)


@needs_nsqd
async def test_receive_is_cancel_safe() -> None:
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        for _ in range(20):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.receive(10), 0.01)
        await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00x")])
        (got,) = await receive(sub)
        assert got.value == b"\x00CHE\x01\x00\x00\x00x"
        await sub.ack([got])


@needs_nsqd
async def test_envelope_off_publishes_plain_payloads_and_refuses_keys() -> None:
    topic = name()
    app = App("nsq-plain", broker=URL + "?envelope=off")
    async with app:
        t = app.topic(topic, internal=True, value_serializer="raw")
        await t.declare()
        raw = app.topic(topic, internal=True, value_serializer="raw", group=name("g"))
        stream = raw.events()
        await stream.start()
        await t.send(value=b"plain bytes")
        event = await stream.get(timeout=10)
        assert event.value == b"plain bytes" and event.key is None
        with pytest.raises(EncodeError, match="keys or headers"):
            await t.send(key=b"k", value=b"v")
        with pytest.raises(EncodeError, match="keys or headers"):
            await t.send(value=b"v", headers={"h": b"1"})
        with pytest.raises(EncodeError):
            await t.send(value=b"")
        await stream.close(clean=True)
    # what nsqd stored is the plain payload, not an envelope
    assert not event.message.value.startswith(b"\x00CHE")  # type: ignore[union-attr]


@needs_nsqd
async def test_key_headers_none_travel_in_the_envelope() -> None:
    topic = name()
    async with App("nsq-env", broker=URL) as app:
        t = app.topic(topic, internal=True, key_serializer="raw", value_serializer="raw")
        await t.declare()
        stream = t.events()
        await stream.start()
        await t.send(key=b"k\x00", value=None, headers={"bin": b"\x00\xff", "s": "x"})
        await t.send(key=None, value=b"")
        first = await stream.get(timeout=10)
        second = await stream.get(timeout=10)
        assert (first.key, first.value, first.headers) == (
            b"k\x00",
            None,
            {"bin": b"\x00\xff", "s": b"x"},
        )
        assert (second.key, second.value, second.headers) == (None, b"", {})
        await stream.close(clean=True)


@needs_nsqd
@pytest.mark.timeout(240)
async def test_consumer_and_publisher_survive_two_restarts() -> None:
    topic, group = name(), name("g")
    async with connected(publish_timeout="5", connect_timeout="3") as t:
        await t.declare(TopicSpec(topic, internal=True), group)
        sub = await t.subscribe(spec(topic, group))
        for round_ in range(3):
            if round_:
                await asyncio.to_thread(restart_nsqd)
            body = b"\x00CHE\x01\x00\x00\x00round" + bytes([round_])
            # the first publish after a restart may fail (retryable) but never hangs
            deadline = time.monotonic() + 30
            while True:
                started = time.monotonic()
                try:
                    await t.publish([Message(topic, body)])
                    break
                except (ConnectionFailed, Timeout) as exc:
                    assert exc.retryable
                    assert time.monotonic() - started < 5 + 3 + 1
                    assert time.monotonic() < deadline, "nsqd not back within 30s"
                    await asyncio.sleep(0.2)
            got = await receive(sub, 1, timeout=30)
            # a message of the previous round may come again after the restart (at least once)
            values = {m.value for m in got}
            while body not in values:
                more = await receive(sub, 1, timeout=30)
                values |= {m.value for m in more}
                got += more
            await sub.ack(got)


@needs_nsqd
async def test_lookupd_discovers_nsqd() -> None:
    """``lookupd=``: the consumer also reads from every nsqd nsqlookupd reports for the
    topic (here the same nsqd under its broadcast address 127.0.0.1, next to the URL's
    ``localhost``), and each message still reaches the group once."""
    topic, group = name(), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)
    lookup = f"http://127.0.0.1:4161/lookup?topic={topic}"
    for _ in range(50):
        if b'"tcp_port":4150' in await asyncio.to_thread(_get, lookup):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.skip("nsqlookupd on 127.0.0.1:4161 does not know the topic")
    async with connected("nsq://localhost:4150?lookupd=127.0.0.1:4161") as t:
        sub = await t.subscribe(spec(topic, group))
        assert sorted((r.host, r.port) for r in sub.readers) == [  # type: ignore[attr-defined]
            ("127.0.0.1", 4150),
            ("localhost", 4150),
        ]
        bodies = [b"\x00CHE\x01\x00\x00\x00" + bytes([i]) for i in range(20)]
        await t.publish([Message(topic, body) for body in bodies])
        got = await receive(sub, 20)
        await sub.ack(got)
        assert sorted(m.value for m in got) == sorted(bodies)  # type: ignore[type-var]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.receive(1), 1)


@needs_nsqd
async def test_nsqd_limit_is_reported_when_the_url_overstates_it() -> None:
    """max_message_size above nsqd's --max-msg-size: nsqd's refusal becomes MessageTooLarge
    naming nsqd's limit, and the next publish works (the dropped connection is replaced)."""
    from channels.errors import MessageTooLarge

    topic = name()
    async with connected(max_message_size=str(4 * 1024 * 1024)) as t:
        with pytest.raises(MessageTooLarge) as info:
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00" + b"x" * (1024 * 1024))])
        assert info.value.limit == 1024 * 1024
        with pytest.raises(MessageTooLarge):
            big = b"\x00CHE\x01\x00\x00\x00" + b"x" * (1024 * 1024)
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00small"), Message(topic, big)])
        (ok,) = await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00small")])
        assert ok.topic == topic


class _Link:
    """A TCP relay to nsqd whose existing connections can be frozen: bytes stop flowing
    both ways and the sockets stay open (what a hung nsqd or a dead network path looks like
    to a client). Connections opened after ``freeze()`` flow."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        self.clients: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def reset(self) -> None:
        """Abort every client-side connection with a TCP reset (SO_LINGER 0)."""
        for writer in self.clients:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.clients.clear()

    def freeze(self) -> None:
        for gate in self.gates:
            gate.clear()

    def thaw(self) -> None:
        for gate in self.gates:
            gate.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.clients.append(writer)
        gate = asyncio.Event()
        gate.set()
        self.gates.append(gate)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 4150)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, gate))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event) -> None:
        try:
            while data := await src.read(65536):
                await gate.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@needs_nsqd
async def test_publish_over_a_frozen_link_is_bounded_and_recovers() -> None:
    """nsqd stops answering on an open connection: the publish raises Timeout (retryable)
    after publish_timeout instead of hanging, and once the path works again the next
    publish goes out on a new connection."""
    link = _Link()
    await link.start()
    topic, group = name(), name("g")
    try:
        async with connected(f"nsq://127.0.0.1:{link.port}?publish_timeout=1&connect_timeout=2") as t:
            await t.declare(TopicSpec(topic, internal=True), group)
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00before")])
            first = t.native()
            link.freeze()
            started = time.monotonic()
            with pytest.raises(Timeout) as info:
                await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00frozen")])
            assert 0.9 <= time.monotonic() - started < 2.5
            assert info.value.retryable
            link.thaw()
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00after")])
            assert t.native() is not first
            sub = await t.subscribe(spec(topic, group))
            # the timed-out one may arrive too: a timeout promises nothing either way
            got = await receive(sub, 2)
            values = {m.value for m in got}
            if b"\x00CHE\x01\x00\x00\x00frozen" in values:
                more = await receive(sub, 1)
                values |= {m.value for m in more}
                got += more
            assert {b"\x00CHE\x01\x00\x00\x00before", b"\x00CHE\x01\x00\x00\x00after"} <= values
            await sub.ack(got)
    finally:
        await link.close()


@needs_nsqd
async def test_consumer_replaces_a_silent_connection() -> None:
    """The consumer's connection freezes (no heartbeats): after 2.5 heartbeat intervals the
    reader drops it and subscribes again on a new one, and messages flow again. The message
    nsqd had already pushed into the frozen connection comes back after msg_timeout (2s)."""
    link = _Link()
    await link.start()
    topic, group = name(), name("g")
    try:
        async with (
            connected() as direct,
            connected(f"nsq://127.0.0.1:{link.port}?heartbeat_interval=1&msg_timeout=2") as t,
        ):
            await direct.declare(TopicSpec(topic, internal=True), group)
            sub = await t.subscribe(spec(topic, group))
            await direct.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00one")])
            (one,) = await receive(sub)
            await sub.ack([one])
            # the FIN must reach nsqd before the path freezes, or "one" comes back too
            await _settled_at_nsqd(topic, group)
            before = link.accepted
            link.freeze()
            started = time.monotonic()
            await direct.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00two")])
            got = await receive(sub, 1, timeout=25)
            elapsed = time.monotonic() - started
            assert [m.value for m in got] == [b"\x00CHE\x01\x00\x00\x00two"]
            assert link.accepted > before, "the reader never opened a new connection"
            assert 2 <= elapsed < 20, elapsed
            await sub.ack(got)
            print(f"silent connection replaced; message delivered after {elapsed:.1f}s")
    finally:
        await link.close()


@needs_nsqd
async def test_settings_nsqd_refuses_are_a_configuration_error() -> None:
    """msg_timeout below nsqd's 1 s minimum: IDENTIFY fails, ConfigurationError names it."""
    t = transport(msg_timeout="0.5", connect_timeout="3")
    with pytest.raises(ConfigurationError, match=r"(?i)msg.timeout") as info:
        await t.connect()
    assert not info.value.retryable


@needs_nsqd
@pytest.mark.timeout(60)
async def test_connection_reset_neither_freezes_nor_loses() -> None:
    """A TCP reset on the consumer's connection (ansq's own read loop would spin forever on
    it): the event loop stays responsive, the reader reconnects, messages flow again."""
    link = _Link()
    await link.start()
    topic, group = name(), name("g")
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        # msg_timeout=2: what nsqd pushed into the reset connection comes back after 2s
        async with connected() as direct, connected(f"nsq://127.0.0.1:{link.port}?msg_timeout=2") as t:
            await direct.declare(TopicSpec(topic, internal=True), group)
            sub = await t.subscribe(spec(topic, group))
            for round_ in range(3):
                body = b"\x00CHE\x01\x00\x00\x00reset" + bytes([round_])
                await direct.publish([Message(topic, body)])
                got = await receive(sub, 1, timeout=15)
                while body not in {m.value for m in got}:  # an unacked one may come back
                    await sub.ack(got)
                    got = await receive(sub, 1, timeout=15)
                await sub.ack(got)
                await _settled_at_nsqd(topic, group)
                link.reset()
        assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.1f}s"
        assert link.accepted >= 3
    finally:
        tick.cancel()
        await link.close()


# -- ephemeral groups -----------------------------------------------------------------------


def _channels(topic: str) -> dict[str, int]:
    """The channels nsqd has for ``topic``, with their client counts."""
    raw = _get(f"{HTTP}/stats?format=json&topic={topic}&include_clients=false")
    assert raw, "nsqd's /stats did not answer"
    topics = json.loads(raw).get("topics") or []
    return {
        c["channel_name"]: int(c["client_count"])
        for t in topics
        if t["topic_name"] == topic
        for c in t.get("channels") or []
    }


async def _channel_gone(topic: str, channel: str, timeout: float = 10) -> None:
    """Wait (bounded) until nsqd no longer has ``channel``: nsqd gives no event for it."""
    deadline = time.monotonic() + timeout
    while channel in await asyncio.to_thread(_channels, topic):
        assert time.monotonic() < deadline, f"nsqd still has {topic}/{channel} after {timeout}s"
        await asyncio.sleep(0.05)


@needs_nsqd
async def test_ephemeral_group_leaves_nothing_after_close() -> None:
    """An ephemeral member reads from ``<group>#ephemeral``: nsqd deletes that channel,
    unacked messages included, once its last member closes; a durable group of the same
    name is a different channel and keeps its messages."""
    topic, group = name(), name("g")
    channel = ephemeral_channel(group)
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True), group)  # the durable group
        await t.declare(TopicSpec(topic, internal=True), None)  # what the core does for an ephemeral one
        first = await t.subscribe(dataclasses.replace(spec(topic, group), ephemeral=True))
        second = await t.subscribe(dataclasses.replace(spec(topic, group), ephemeral=True))
        assert await asyncio.to_thread(_channels, topic) == {group: 0, channel: 2}
        bodies = [b"\x00CHE\x01\x00\x00\x00" + bytes([i]) for i in range(4)]
        await t.publish([Message(topic, body) for body in bodies])
        got: list[Message] = []
        deadline = time.monotonic() + 10
        while len(got) < 4:  # two members share the channel: each message reaches one of them
            assert time.monotonic() < deadline, f"{len(got)} of 4 messages arrived"
            for sub in (first, second):
                with contextlib.suppress(TimeoutError):
                    got += await asyncio.wait_for(sub.receive(4), 0.2)
        assert sorted(m.value for m in got) == sorted(bodies)  # type: ignore[type-var]
        await first.close()
        assert await asyncio.to_thread(_channels, topic) == {group: 0, channel: 1}, "a member is left"
        await second.close()  # leaves its messages unacked
        await _channel_gone(topic, channel)
        assert await asyncio.to_thread(_channels, topic) == {group: 0}
        durable = await t.subscribe(spec(topic, group))
        kept = await receive(durable, 4)
        assert sorted(m.value for m in kept) == sorted(bodies)  # type: ignore[type-var]
        await durable.ack(kept)


_CRASHING_MEMBER = """
import asyncio, sys
from channels.url import parse_url
from transports.base import SubscriptionSpec, TopicSpec
from transports.nsq import NsqTransport

async def main() -> None:
    t = NsqTransport(parse_url(sys.argv[1]))
    await t.connect()
    await t.subscribe(SubscriptionSpec((TopicSpec(sys.argv[2], internal=True),), sys.argv[3], ephemeral=True))
    print("joined", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@needs_nsqd
async def test_ephemeral_group_leaves_nothing_after_a_crash() -> None:
    """The only member's process is killed (no RDY 0, no CLS): nsqd sees the connection
    drop and deletes the channel with what it held; a new member gets only what is sent
    after it joined."""
    topic, group = name(), name("g")
    channel = ephemeral_channel(group)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_MEMBER,
        URL,
        topic,
        group,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"joined", line
        assert await asyncio.to_thread(_channels, topic) == {channel: 1}
        async with connected() as t:
            # the application's durable group: what the topic holds is kept for it (a topic
            # without any channel would hand its backlog to the next channel, whatever it is)
            await t.declare(spec(topic, group).topics[0], name("app"))
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00held")])
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
            await _channel_gone(topic, channel)
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00gone")])
            sub = await t.subscribe(dataclasses.replace(spec(topic, group), ephemeral=True))
            await t.publish([Message(topic, b"\x00CHE\x01\x00\x00\x00new")])
            (got,) = await receive(sub)
            assert got.value == b"\x00CHE\x01\x00\x00\x00new"
            await sub.ack([got])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.receive(1), 1)
            await sub.close()
            await _channel_gone(topic, channel)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
