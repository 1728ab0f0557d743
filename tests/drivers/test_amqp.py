"""Tests of what is particular to the RabbitMQ driver (``amqp://``, aio-pika).

Shared semantics are proven by the conformance suite; here: URL options, names, the header
type rule, capabilities and redaction without a broker; and against the RabbitMQ of
scripts/brokers: the exchange/queue layout, bytes fidelity of headers and keys, None versus
b"", foreign header types, source topics, unroutable messages, publishing to a missing
exchange, nack/reject, the prefetch window, cancelling ``receive``, acks after the channel
died, reconnecting after the connection drops and after a broker restart, ephemeral groups
(their auto-delete queue is gone once the last member left or its process died).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from channels import App
from channels.errors import (
    CapabilityNotSupported,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    TopicNotFound,
)
from channels.events import Message
from channels.url import parse_url
from tests.support import TcpProxy
from transports.amqp import EPHEMERAL_EXPIRES_MS, AmqpTransport, Unroutable, header_bytes
from transports.base import SubscriptionSpec, TopicSpec

URL = os.environ.get(
    "CHANNELS_TEST_RABBITMQ_URL",
    os.environ.get("CHANNELS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
)
ROOT = Path(__file__).resolve().parents[2]


def _broker_up() -> bool:
    host, port = parse_url(URL).host_list(5672)[0]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


needs_broker = pytest.mark.skipif(
    not _broker_up(), reason="RabbitMQ is not running (scripts/brokers up rabbitmq)"
)


def name(prefix: str = "t") -> str:
    return f"ad-{prefix}-{uuid.uuid4().hex[:12]}"


# -- without a broker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "amqp://h?nope=1",
        "amqp://h?exchange_type=direct",
        "amqp://h?exchange_type=x-consistent-hash",
        "amqp://h?queue_type=stream",
        "amqp://h?prefetch=-1",
        "amqp://h?confirm_timeout=0",
        "amqp://h?mandatory=maybe",
        "amqp://h?ssl_cafile=/x",
        "amqp://h1,h2",
    ],
)
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        AmqpTransport(parse_url(url))


def test_options_and_vhost() -> None:
    t = AmqpTransport(
        parse_url(
            "amqps://u:p@h:5671/prod?prefetch=7&confirm_timeout=2.5&heartbeat=0&exchange_type=fanout"
            "&mandatory=false&queue_type=quorum&max_message_size=1000&verify=false"
        )
    )
    assert (t.prefetch, t.confirm_timeout, t.heartbeat) == (7, 2.5, 0)
    assert (t.exchange_type, t.mandatory, t.queue_type, t.verify) == ("fanout", False, "quorum", False)
    assert t.vhost == "prod" and t.tls
    assert t.capabilities.max_message_size == 1000
    for url, vhost in (("amqp://h", "/"), ("amqp://h/", "/"), ("amqp://h/%2F", "/"), ("amqp://h/a%2Fb", "a/b")):
        assert AmqpTransport(parse_url(url)).vhost == vhost


def test_capabilities_are_the_documented_ones() -> None:
    caps = AmqpTransport(parse_url(URL)).capabilities
    assert caps.persistent and caps.consumer_groups and caps.fanout_groups and caps.ack
    assert caps.redelivery_on_nack and caps.native_headers and caps.native_keys and caps.topic_check
    assert not caps.uses_envelope
    assert not (caps.per_key_ordering or caps.patterns or caps.replay_from_start)
    assert not (caps.explicit_partitions or caps.exactly_once)


def test_password_never_in_repr_or_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        AmqpTransport(parse_url("amqp://user:s3cr3t@127.0.0.1:1/?bogus=1"))
    assert "s3cr3t" not in str(info.value)
    transport = AmqpTransport(parse_url("amqp://user:s3cr3t@127.0.0.1:1/"))
    assert "s3cr3t" not in repr(transport) and "s3cr3t" not in str(transport.url)


@pytest.mark.parametrize("bad", ["amq.topic", "amq.x", "x" * 128, "é", "a\tb", "ü-1", "a*b", "a$b"])
def test_topic_names_rabbitmq_or_its_client_refuses(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        AmqpTransport(parse_url(URL)).validate_topic_name(bad)


def test_topic_and_group_names_the_client_accepts() -> None:
    t = AmqpTransport(parse_url(URL))
    t.validate_topic_name("x" * 127)
    t.validate_topic_name("a-b_c.d:e@f#g,h/i+j k")
    assert t._group_queue(TopicSpec("orders"), "billing-1.eu").queue == "orders.billing-1.eu"
    with pytest.raises(ConfigurationError, match="refuses"):
        t._group_queue(TopicSpec("orders"), "grüppe")


def test_group_queue_name_and_arguments() -> None:
    t = AmqpTransport(parse_url(URL + "?queue_type=quorum"))
    spec = TopicSpec(
        "orders", internal=True, retention=1.5, replicas=3,
        config={"x-max-length": "1000", "x-overflow": "reject-publish", "binding_key": "eu.#"},
    )
    queue = t._group_queue(spec, "billing")
    assert queue.queue == "orders.billing"
    assert queue.arguments == {
        "x-queue-type": "quorum", "x-quorum-initial-group-size": 3, "x-message-ttl": 1500,
        "x-max-length": 1000, "x-overflow": "reject-publish",
    }
    assert queue.binding_key == "eu.#"
    with pytest.raises(ConfigurationError):
        t._group_queue(TopicSpec("orders", config={"cleanup.policy": "compact"}), "g")
    with pytest.raises(CapabilityNotSupported):
        t._group_queue(TopicSpec("orders", compacting=True), "g")
    with pytest.raises(ConfigurationError):
        t._group_queue(TopicSpec("o" * 200), "g" * 60)


def test_ephemeral_group_queue_name_and_arguments() -> None:
    t = AmqpTransport(parse_url(URL + "?queue_type=quorum"))
    spec = TopicSpec("orders", internal=True, retention=1.5, replicas=3, config={"x-max-length": "10"})
    queue = t._group_queue(spec, "tail", ephemeral=True)
    # its own name (a lasting group "tail" keeps "orders.tail"), always classic, expires
    assert (queue.queue, queue.ephemeral) == ("orders.tail.ephemeral", True)
    assert queue.arguments == {"x-expires": EPHEMERAL_EXPIRES_MS, "x-message-ttl": 1500, "x-max-length": 10}
    own = t._group_queue(TopicSpec("orders", config={"x-expires": "5000"}), "tail", ephemeral=True)
    assert own.arguments == {"x-expires": 5000}
    assert not t._group_queue(spec, "tail").ephemeral
    with pytest.raises(ConfigurationError, match="ephemeral"):
        t._group_queue(TopicSpec("o" * 120), "g" * 130, ephemeral=True)


def test_header_type_rule() -> None:
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cases: list[tuple[Any, bytes]] = [
        (bytearray(b"\x00\xff"), b"\x00\xff"),
        (b"", b""),
        (b"\xc3\x28", b"\xc3\x28"),
        ("text ü", "text ü".encode()),
        (42, b"42"),
        (-7, b"-7"),
        (2**40, b"1099511627776"),
        (True, b"true"),
        (False, b"false"),
        (1.5, b"1.5"),
        (decimal.Decimal("3.14"), b"3.14"),
        (stamp, b"1767225600"),
        (stamp.replace(tzinfo=None), b"1767225600"),
        (None, b""),
        ({"a": 1, "b": "x", "c": bytearray(b"y"), "d": True, "e": None}, b'{"a":1,"b":"x","c":"y","d":true,"e":null}'),
        ([1, "a", bytearray(b"\xff"), stamp], '[1,"a","\ufffd",1767225600]'.encode()),
    ]
    for value, expected in cases:
        assert header_bytes(value) == expected, value


def test_reserved_and_long_header_names_refused() -> None:
    t = AmqpTransport(parse_url(URL))
    with pytest.raises(EncodeError):
        t._outgoing(Message("t", b"v", None, {"x-channels-key": b"k"}))
    with pytest.raises(EncodeError):
        t._outgoing(Message("t", b"v", None, {"h" * 129: b"k"}))


# -- against RabbitMQ ---------------------------------------------------------------------


class Broker:
    """A plain aio-pika connection for looking at (and cleaning up) what the driver made."""

    def __init__(self) -> None:
        self.conn: aio_pika.abc.AbstractConnection | None = None
        self.exchanges: list[str] = []
        self.queues: list[str] = []

    async def channel(self) -> aio_pika.abc.AbstractChannel:
        if self.conn is None:
            self.conn = await aio_pika.connect(URL, timeout=10)
        return await self.conn.channel()

    async def exists(self, kind: str, entity: str) -> bool:
        channel = await self.channel()
        try:
            if kind == "exchange":
                await channel.declare_exchange(entity, passive=True)
            else:
                await channel.declare_queue(entity, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            if not channel.is_closed:
                await channel.close()

    def track(self, topic: str, *groups: str) -> None:
        self.exchanges.append(topic)
        self.queues += [f"{topic}.{g}" for g in groups]

    async def cleanup(self) -> None:
        if self.conn is None:
            self.conn = await aio_pika.connect(URL, timeout=10)
        for queue in self.queues:
            channel = await self.conn.channel()
            try:
                await channel.queue_delete(queue)
            except aiormq.exceptions.AMQPError:
                pass
        for exchange in self.exchanges:
            channel = await self.conn.channel()
            try:
                await channel.exchange_delete(exchange)
            except aiormq.exceptions.AMQPError:
                pass
        await self.conn.close()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    helper = Broker()
    try:
        yield helper
    finally:
        await asyncio.wait_for(helper.cleanup(), 30)


@pytest.fixture
async def transport() -> AsyncIterator[AmqpTransport]:
    t = AmqpTransport(parse_url(URL))
    await asyncio.wait_for(t.connect(), 15)
    try:
        yield t
    finally:
        await asyncio.wait_for(t.close(), 15)


async def receive_n(sub: Any, n: int, timeout: float = 15.0) -> list[Message]:
    out: list[Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < n:
        out += await asyncio.wait_for(sub.receive(n - len(out)), max(0.01, deadline - loop.time()))
    return out


async def eventually(check: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} did not happen within {timeout}s"
        await asyncio.sleep(0.05)


@needs_broker
@pytest.mark.timeout(60)
async def test_declare_makes_exchange_group_queue_and_binding(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("layout"), name("g")
    broker.track(topic, group)
    await transport.declare(TopicSpec(topic, internal=True), group)
    assert await broker.exists("exchange", topic)
    assert await broker.exists("queue", f"{topic}.{group}")
    # published after declare, before any subscriber: waits in the group queue
    await transport.publish([Message(topic, b"early")])
    channel = await broker.channel()
    queue = await channel.declare_queue(f"{topic}.{group}", passive=True)
    incoming = await queue.get(timeout=10)
    assert incoming is not None and incoming.body == b"early"
    assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await incoming.nack(requeue=True)
    await channel.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_bytes_keys_headers_and_none_round_trip(transport: AmqpTransport, broker: Broker) -> None:
    topic, group = name("bytes"), name("g")
    broker.track(topic, group)
    await transport.declare(TopicSpec(topic, internal=True), group)
    sub = await transport.subscribe(SubscriptionSpec((TopicSpec(topic, internal=True),), group))
    sent = [
        Message(topic, b"\x00\xff", b"\xff\x00", {"bin": b"\x00\xff", "empty": b"", "bad": b"\xc3\x28"}),
        Message(topic, None, None, {}),
        Message(topic, b"", b"", {}),
        Message(topic, None, b"k", {"h": b""}),
    ]
    metadata = await transport.publish(sent)
    assert all(isinstance(md.offset, str) and md.offset for md in metadata)
    got = await receive_n(sub, len(sent))
    await sub.ack(got)
    assert [(m.value, m.key, m.headers) for m in got] == [(m.value, m.key, m.headers) for m in sent]
    assert [m.offset for m in got] == [md.offset for md in metadata]
    assert all(m.timestamp is not None and abs(m.timestamp - time.time()) < 60 for m in got)
    await sub.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_foreign_header_types_become_bytes_and_key_routing(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("foreign"), name("g")
    broker.track(topic, group)
    await transport.declare(TopicSpec(topic, internal=True), group)
    sub = await transport.subscribe(SubscriptionSpec((TopicSpec(topic, internal=True),), group))
    channel = await broker.channel()
    exchange = await channel.get_exchange(topic)
    headers: dict[str, Any] = {
        "i": 42, "t": True, "s": "text", "f": 0.25, "big": 2**40,
        "ts": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "tbl": {"x": 1, "y": "z"}, "arr": [1, "a"],
        "void": None, "x-channels-other": "reserved, dropped",
    }
    await exchange.publish(aio_pika.Message(b"plain", headers=headers), routing_key="route.1")
    [message] = await receive_n(sub, 1)
    await sub.ack([message])
    assert message.value == b"plain" and message.key is None
    assert message.headers == {
        "i": b"42", "t": b"true", "s": b"text", "f": b"0.25", "big": b"1099511627776",
        "ts": b"1767225600", "tbl": b'{"x":1,"y":"z"}', "arr": b'[1,"a"]', "void": b"",
    }
    # our key also travels as the routing key when it is short UTF-8, for foreign readers
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(topic, "#")
    await transport.publish([Message(topic, b"v", "clé".encode()), Message(topic, b"v", b"\xff")])
    first = await queue.get(timeout=10)
    second = await queue.get(timeout=10)
    assert first is not None and second is not None
    assert first.routing_key == "clé" and second.routing_key == ""
    assert first.headers["x-channels-key"] == "clé".encode()
    assert bytes(second.headers["x-channels-key"]) == b"\xff"  # type: ignore[arg-type]
    await channel.close()
    await sub.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_source_topics_are_checked_never_created(transport: AmqpTransport, broker: Broker) -> None:
    missing, group = name("missing"), name("g")
    broker.track(missing, group)
    with pytest.raises(TopicNotFound) as info:
        await transport.declare(TopicSpec(missing, internal=False), group)
    assert info.value.topic == missing
    assert not await broker.exists("exchange", missing)
    assert not await broker.exists("queue", f"{missing}.{group}")
    # a foreign fanout exchange is a source topic: our group queue binds to it
    foreign = name("src")
    broker.track(foreign, group)
    channel = await broker.channel()
    exchange = await channel.declare_exchange(foreign, aio_pika.ExchangeType.FANOUT, auto_delete=False)
    source = TopicSpec(foreign, internal=False)
    await transport.declare(source, group)
    sub = await transport.subscribe(SubscriptionSpec((source,), group))
    await exchange.publish(aio_pika.Message(b"from outside"), routing_key="")
    [message] = await receive_n(sub, 1)
    assert message.value == b"from outside" and message.topic == foreign
    await sub.ack([message])
    await sub.close()
    await channel.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_unroutable_and_missing_exchange(broker: Broker) -> None:
    topic = name("lonely")
    broker.track(topic)
    strict = AmqpTransport(parse_url(URL))
    lenient = AmqpTransport(parse_url(URL + "?mandatory=false"))
    await strict.connect()
    await lenient.connect()
    try:
        await strict.declare(TopicSpec(topic, internal=True))  # exchange, no group
        with pytest.raises(Unroutable) as info:
            await strict.publish([Message(topic, b"nobody"), Message(topic, b"listens")])
        assert info.value.count == 2
        assert len(await lenient.publish([Message(topic, b"dropped by the broker")])) == 1
        with pytest.raises(TopicNotFound):
            await strict.publish([Message(name("nope"), b"x")])
        # the publish channel survived both
        group = name("g")
        broker.track(topic, group)
        await strict.declare(TopicSpec(topic, internal=True), group)
        assert len(await strict.publish([Message(topic, b"now routed")])) == 1
    finally:
        await strict.close()
        await lenient.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_nack_requeue_reject_and_double_ack(transport: AmqpTransport, broker: Broker) -> None:
    topic, group = name("nack"), name("g")
    broker.track(topic, group)
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)
    sub = await transport.subscribe(SubscriptionSpec((spec,), group, prefetch=10))
    await transport.publish([Message(topic, b"again"), Message(topic, b"drop")])
    first = await receive_n(sub, 2)
    await sub.nack([first[0]], requeue=True)
    await sub.nack([first[1]], requeue=False)
    [again] = await receive_n(sub, 1)
    assert again.value == b"again" and again.redelivered
    await sub.ack([again])
    await sub.ack([again])  # harmless
    await sub.nack([again])  # settled already: nothing happens
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.receive(1), 1.0)
    await sub.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_prefetch_bounds_unacked_and_receive_is_cancel_safe(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("window"), name("g")
    broker.track(topic, group)
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)
    sub = await transport.subscribe(SubscriptionSpec((spec,), group, prefetch=5))
    await transport.publish([Message(topic, b"%d" % i) for i in range(20)])
    first = await receive_n(sub, 5)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.receive(10), 1.0)  # window full: nothing more comes
    await sub.ack(first)
    seen = [m.value for m in first]
    # cancel pending receives over and over: nothing is lost
    while len(seen) < 20:
        try:
            batch = await asyncio.wait_for(sub.receive(3), 0.001)
        except TimeoutError:
            continue
        seen += [m.value for m in batch]
        await sub.ack(batch)
    assert sorted(seen, key=lambda v: int(v or b"-1")) == [b"%d" % i for i in range(20)]
    await sub.close()
    with pytest.raises(ClosedError):
        await sub.receive(1)


@needs_broker
@pytest.mark.timeout(90)
async def test_ack_after_the_connection_died_is_dropped_and_redelivered(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("deadack"), name("g")
    broker.track(topic, group)
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)
    sub = await transport.subscribe(SubscriptionSpec((spec,), group))
    await transport.publish([Message(topic, b"held")])
    [held] = await receive_n(sub, 1)
    opened = transport.connections_opened
    await transport.native().close()  # the connection drops under the subscription
    started = time.monotonic()
    await asyncio.wait_for(sub.ack([held]), 5)  # no exception, no hang
    await asyncio.wait_for(sub.nack([held]), 5)
    assert time.monotonic() - started < 5
    [again] = await receive_n(sub, 1, timeout=30)
    assert again.value == b"held" and again.redelivered
    await sub.ack([again])
    assert transport.connections_opened == opened + 1
    await eventually(lambda: sub.restarts >= 1, 10, "the member consuming again")  # type: ignore[attr-defined]
    # publishing works on the new connection
    await transport.publish([Message(topic, b"after")])
    [after] = await receive_n(sub, 1)
    assert after.value == b"after"
    await sub.ack([after])
    await sub.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_queue_arguments_and_quorum_queues(broker: Broker) -> None:
    topic, group = name("quorum"), name("g")
    broker.track(topic, group)
    async with App("quorum", broker=URL + "?queue_type=quorum") as app:
        t = app.topic(topic, internal=True, group=group, retention=60, value_serializer="raw")
        await t.declare()
        await t.send(value=b"q")
        async with t.events() as stream:
            event = await stream.get(timeout=15)
            assert event.value == b"q"
        # the same group queue with other arguments: RabbitMQ refuses, we say why
        other = app.topic(topic, internal=True, group=group, retention=5)
        with pytest.raises(ConfigurationError):
            await other.declare()


@needs_broker
@pytest.mark.timeout(30)
async def test_wrong_password_and_port_keep_the_secret() -> None:
    for url in (
        "amqp://guest:s3cr3t-wrong@127.0.0.1:5672/",
        "amqp://guest:s3cr3t-wrong@127.0.0.1:1/",
    ):
        transport = AmqpTransport(parse_url(url + "?connection_timeout=5"))
        with pytest.raises((ConfigurationError, ConnectionError)) as info:
            await transport.connect()
        text = str(info.value) + repr(info.value) + str(info.value.__cause__)
        assert "s3cr3t" not in text
        await transport.close()


@needs_broker
@pytest.mark.timeout(300)
async def test_broker_restart_every_member_consumes_again_nothing_acked_lost(broker: Broker) -> None:
    if os.environ.get("CHANNELS_SKIP_RESTART"):
        pytest.skip("CHANNELS_SKIP_RESTART is set")
    topic, group = name("restart"), name("g")
    broker.track(topic, group)
    async with App("restart", broker=URL) as app:
        t = app.topic(topic, internal=True, group=group, value_serializer="raw")
        await t.declare()
        await asyncio.gather(*(t.send_soon(value=b"a%d" % i).future for i in range(100)))
        seen: set[bytes] = set()
        members = [t.events(acks="manual", prefetch=10) for _ in range(2)]
        for member in members:
            await member.start()
        for _ in range(30):
            event = await members[0].get(timeout=15)
            seen.add(event.value)
            await event.ack()
        held = await members[0].get(timeout=15)  # received, never acked before the restart
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(ROOT / "scripts" / "brokers"), "restart", "rabbitmq",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 200) == 0
        restart_seconds = time.monotonic() - started
        await asyncio.wait_for(held.ack(), 5)  # its channel died: dropped, redelivered
        await asyncio.gather(*(t.send_soon(value=b"b%d" % i).future for i in range(100)))
        counts = [0, 0]

        async def drain(index: int) -> None:
            while True:
                event = await members[index].get(timeout=60)
                seen.add(event.value)
                counts[index] += 1
                await event.ack()

        tasks = [asyncio.create_task(drain(i)) for i in range(2)]
        expected = {b"a%d" % i for i in range(100)} | {b"b%d" % i for i in range(100)}
        try:
            await eventually(lambda: expected <= seen, 60, "every message after the restart")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert all(counts), f"a member did not consume after a {restart_seconds:.0f}s restart: {counts}"
        for member in members:
            await member.close()


async def test_tls_options() -> None:
    plain = AmqpTransport(parse_url("amqps://h/?verify=false"))
    context = plain._ssl_context()
    assert context is not None and not context.check_hostname
    assert AmqpTransport(parse_url("amqp://h/"))._ssl_context() is None
    broken = AmqpTransport(parse_url("amqps://u:s3cr3t@127.0.0.1:1/?ssl_cafile=/nonexistent/ca.pem"))
    with pytest.raises(ConfigurationError) as info:
        await broken.connect()
    assert "s3cr3t" not in str(info.value)


@needs_broker
@pytest.mark.timeout(60)
async def test_member_consumes_again_after_its_channel_or_queue_is_gone(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("gone"), name("g")
    broker.track(topic, group)
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)
    sub: Any = await transport.subscribe(SubscriptionSpec((spec,), group))
    # 1. the member's channel closes (as after a channel error): it consumes again
    await sub._channel.close()
    await eventually(lambda: sub.restarts >= 1, 15, "consuming on a new channel")
    await transport.publish([Message(topic, b"one")])
    [one] = await receive_n(sub, 1)
    assert one.value == b"one"
    await sub.ack([one])
    # 2. someone deletes the group queue: the broker cancels the consumer; the member
    # declares queue and binding again and consumes
    channel = await broker.channel()
    await channel.queue_delete(f"{topic}.{group}")
    await channel.close()
    await eventually(lambda: sub.restarts >= 2, 15, "consuming after the queue was deleted")
    await transport.publish([Message(topic, b"two")])
    [two] = await receive_n(sub, 1)
    assert two.value == b"two"
    await sub.ack([two])
    await sub.close()


@needs_broker
@pytest.mark.timeout(60)
async def test_broker_gone_publish_fails_retryable_and_close_is_bounded(broker: Broker) -> None:
    proxy = await TcpProxy(parse_url(URL).host_list(5672)[0][1]).start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?connection_timeout=1&reconnect_max_delay=0.5"
    transport = AmqpTransport(parse_url(url))
    await transport.connect()
    topic, group = name("cut"), name("g")
    broker.track(topic, group)
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)
    sub = await transport.subscribe(SubscriptionSpec((spec,), group))
    await transport.publish([Message(topic, b"before")])
    [before] = await receive_n(sub, 1)
    await proxy.cut()
    await eventually(lambda: not transport._ready.is_set(), 10, "the driver noticing the cut")
    with pytest.raises(ConnectionFailed) as info:
        await asyncio.wait_for(transport.publish([Message(topic, b"during")]), 10)
    assert info.value.retryable
    await asyncio.wait_for(sub.ack([before]), 2)  # dropped: no exception, no hang
    started = time.monotonic()
    await asyncio.wait_for(transport.close(), 15)
    assert time.monotonic() - started < 10
    with pytest.raises(ClosedError):
        await transport.publish([Message(topic, b"after close")])


# -- ephemeral groups ---------------------------------------------------------------------

_EPHEMERAL_MEMBER = """
import asyncio, sys
from channels.url import parse_url
from transports.amqp import AmqpTransport
from transports.base import SubscriptionSpec, TopicSpec

async def main() -> None:
    transport = AmqpTransport(parse_url(sys.argv[1]))
    await transport.connect()
    spec = TopicSpec(sys.argv[2], internal=True)
    await transport.declare(spec, None)
    await transport.subscribe(SubscriptionSpec((spec,), sys.argv[3], ephemeral=True))
    print("joined", flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


async def gone(broker: Broker, queue: str, timeout: float = 15.0) -> None:
    """The queue no longer exists (passive declare fails), within ``timeout``: RabbitMQ
    deletes an auto-delete queue asynchronously, and tells nobody, so we look."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await broker.exists("queue", queue):
        assert loop.time() < deadline, f"queue {queue} still exists after {timeout}s"
        await asyncio.sleep(0.1)


@needs_broker
@pytest.mark.timeout(90)
async def test_ephemeral_group_queue_is_gone_after_its_last_member(
    transport: AmqpTransport, broker: Broker
) -> None:
    topic, group = name("eph"), name("g")
    queue = f"{topic}.{group}.ephemeral"
    broker.track(topic, group)  # the lasting group of the same name, made below
    broker.queues.append(queue)  # in case the test fails before it is gone
    spec = TopicSpec(topic, internal=True)
    await transport.declare(spec, group)  # a lasting group with the same name: no clash
    ephemeral = SubscriptionSpec((spec,), group, prefetch=10, ephemeral=True)
    first = await transport.subscribe(ephemeral)
    second = await transport.subscribe(ephemeral)
    assert await broker.exists("queue", queue)
    # durable, auto-delete, x-expires: declaring it otherwise is refused
    channel = await broker.channel()
    await channel.declare_queue(
        queue, durable=True, auto_delete=True, arguments={"x-expires": EPHEMERAL_EXPIRES_MS}
    )
    await channel.close()
    refused: list[tuple[bool, bool, Any]] = [
        (True, False, {"x-expires": EPHEMERAL_EXPIRES_MS}),
        (False, True, {"x-expires": EPHEMERAL_EXPIRES_MS}),
        (True, True, None),
    ]
    for durable, auto_delete, arguments in refused:
        channel = await broker.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(queue, durable=durable, auto_delete=auto_delete, arguments=arguments)
    # the two members share the group's queue: each message goes to one of them
    await transport.publish([Message(topic, b"%d" % i) for i in range(6)])
    got: list[Message] = []
    all_there = asyncio.Event()

    async def drain(sub: Any) -> None:
        while True:
            batch = await sub.receive(6)
            await sub.ack(batch)
            got.extend(batch)
            if len(got) >= 6:
                all_there.set()

    drains = [asyncio.create_task(drain(sub)) for sub in (first, second)]
    try:
        await asyncio.wait_for(all_there.wait(), 15)
    finally:
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    assert sorted(m.value or b"" for m in got) == [b"%d" % i for i in range(6)]
    await first.close()
    assert await broker.exists("queue", queue)  # one member is left
    await transport.publish([Message(topic, b"held")])  # sits unacked with the last member
    [held] = await receive_n(second, 1)
    await second.close()
    await gone(broker, queue)  # with what it held
    # the lasting group of the same name kept everything, untouched
    channel = await broker.channel()
    durable_queue = await channel.declare_queue(f"{topic}.{group}", passive=True)
    assert durable_queue.declaration_result.message_count == 7
    await channel.close()
    # a new member starts empty: the held message died with the old queue
    third = await transport.subscribe(ephemeral)
    await transport.publish([Message(topic, b"new")])
    [new] = await receive_n(third, 1)
    assert new.value == b"new" and not new.redelivered and held.value == b"held"
    await third.close()
    await gone(broker, queue)


@needs_broker
@pytest.mark.timeout(60)
async def test_ephemeral_group_queue_is_gone_when_its_member_process_dies(broker: Broker) -> None:
    topic, group = name("ephkill"), name("g")
    queue = f"{topic}.{group}.ephemeral"
    broker.track(topic)
    broker.queues.append(queue)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EPHEMERAL_MEMBER, URL, topic, group,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"joined"
        assert await broker.exists("queue", queue)
    finally:
        proc.kill()  # no close, no goodbye: the socket just closes
        await asyncio.wait_for(proc.wait(), 10)
    await gone(broker, queue)


@needs_broker
@pytest.mark.timeout(60)
async def test_ephemeral_group_without_members_keeps_nothing_and_says_so(broker: Broker) -> None:
    topic, group = name("ephdrop"), name("g")
    queue = f"{topic}.{group}.ephemeral"
    broker.track(topic)
    broker.queues.append(queue)
    # queue_type=quorum: an ephemeral group's queue is a classic one all the same
    member_side = AmqpTransport(parse_url(URL + "?queue_type=quorum"))
    other = AmqpTransport(parse_url(URL))
    await member_side.connect()
    await other.connect()
    try:
        spec = TopicSpec(topic, internal=True)
        await member_side.declare(spec, None)
        sub = await member_side.subscribe(SubscriptionSpec((spec,), group, ephemeral=True))
        assert len(await other.publish([Message(topic, b"seen")])) == 1
        [seen] = await receive_n(sub, 1)
        assert seen.value == b"seen"
        await sub.close()
        await gone(broker, queue)
        # kept for nobody, and with the default mandatory flag every producer is told so
        for producer in (member_side, other):
            with pytest.raises(Unroutable):
                await producer.publish([Message(topic, b"nobody")])
    finally:
        await member_side.close()
        await other.close()
