"""Interop with plain AMQP clients: a bare aio-pika script, no anychannel, no envelope.

* foreign -> us: a foreign producer publishes plain bodies (with a routing key and its
  own headers) to a topic our app declared; our app receives the bodies as they were,
  key None, the foreign headers as bytes.
* us -> foreign: our app sends; a foreign consumer with its own queue bound to our
  exchange reads the exact body, our headers as byte arrays, the key as routing key and
  ``x-channels-key``, persistent delivery, and None as an empty body with ``x-channels-null``.
* a foreign direct exchange used as a source topic with ``binding_key``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator

import aio_pika
import aiormq.exceptions
import pytest

from channels import App
from channels.url import parse_url

URL = os.environ.get(
    "CHANNELS_TEST_RABBITMQ_URL",
    os.environ.get("CHANNELS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
)


def _broker_up() -> bool:
    host, port = parse_url(URL).host_list(5672)[0]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _broker_up(), reason="RabbitMQ is not running (scripts/brokers up rabbitmq)"),
    pytest.mark.timeout(60),
]


def name(prefix: str) -> str:
    return f"ai-{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def foreign() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel; what the test names in ``cleanup`` is deleted after it."""
    conn = await aio_pika.connect(URL, timeout=10)
    channel = await conn.channel()
    try:
        yield channel
    finally:
        await conn.close()


async def cleanup(exchanges: list[str], queues: list[str]) -> None:
    conn = await aio_pika.connect(URL, timeout=10)
    try:
        for queue in queues:
            channel = await conn.channel()
            try:
                await channel.queue_delete(queue)
            except aiormq.exceptions.AMQPError:
                pass
        for exchange in exchanges:
            channel = await conn.channel()
            try:
                await channel.exchange_delete(exchange)
            except aiormq.exceptions.AMQPError:
                pass
    finally:
        await conn.close()


async def test_foreign_producer_to_our_consumer(foreign: aio_pika.abc.AbstractChannel) -> None:
    topic, group = name("in"), name("g")
    try:
        async with App("interop-in", broker=URL) as app:
            t = app.topic(topic, internal=True, group=group, value_serializer="raw")
            await t.declare()
            exchange = await foreign.get_exchange(topic)
            bodies = [b"plain text", b'{"json": 1}', b"\x00\xff\xfe binary", b""]
            for i, body in enumerate(bodies):
                await exchange.publish(
                    aio_pika.Message(body, headers={"n": i, "who": "foreign"}),
                    routing_key=f"orders.{i}",
                )
            async with t.events() as stream:
                got = [await stream.get(timeout=15) for _ in bodies]
            assert [e.value for e in got] == bodies
            assert all(e.key is None for e in got)
            assert [e.headers for e in got] == [{"n": b"%d" % i, "who": b"foreign"} for i in range(4)]
    finally:
        await cleanup([topic], [f"{topic}.{group}"])


async def test_our_producer_to_foreign_consumer(foreign: aio_pika.abc.AbstractChannel) -> None:
    topic, group = name("out"), name("g")
    try:
        async with App("interop-out", broker=URL) as app:
            t = app.topic(topic, internal=True, group=group, key_serializer="raw", value_serializer="raw")
            await t.declare()
            queue = await foreign.declare_queue(exclusive=True)
            await queue.bind(topic, "#")
            await t.send(key=b"user-1", value=b"\x00body\xff", headers={"trace": b"\x00\x01", "s": "ü"})
            await t.send(key=None, value=None)
            first = await queue.get(timeout=10)
            second = await queue.get(timeout=10)
            assert first is not None and second is not None
            assert first.body == b"\x00body\xff"
            assert first.routing_key == "user-1"
            assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert first.headers == {
                "trace": bytearray(b"\x00\x01"),
                "s": bytearray("ü".encode()),
                "x-channels-key": bytearray(b"user-1"),
            }
            assert first.message_id and first.timestamp is not None
            assert second.body == b"" and second.headers == {"x-channels-null": True}
            await first.ack()
            await second.ack()
    finally:
        await cleanup([topic], [f"{topic}.{group}"])


async def test_foreign_direct_exchange_as_source_topic(foreign: aio_pika.abc.AbstractChannel) -> None:
    topic, group = name("direct"), name("g")
    try:
        exchange = await foreign.declare_exchange(topic, aio_pika.ExchangeType.DIRECT)
        async with App("interop-src", broker=URL) as app:
            t = app.topic(topic, group=group, config={"binding_key": "invoices"}, value_serializer="raw")
            await t.declare()
            await exchange.publish(aio_pika.Message(b"skipped"), routing_key="other")
            await exchange.publish(aio_pika.Message(b"invoice 1"), routing_key="invoices")
            async with t.events() as stream:
                event = await stream.get(timeout=15)
                assert event.value == b"invoice 1"
                with pytest.raises(Exception, match="no message"):
                    await stream.get(timeout=0.5)
    finally:
        await cleanup([topic], [f"{topic}.{group}"])


async def test_bytes_through_a_foreign_relay(foreign: aio_pika.abc.AbstractChannel) -> None:
    """A foreign client that copies our messages (body and headers) to another exchange
    keeps keys, headers and None intact: the wire format is plain AMQP."""
    src, dst, group = name("relay-a"), name("relay-b"), name("g")
    try:
        async with App("interop-relay", broker=URL) as app:
            a = app.topic(src, internal=True, group=group, key_serializer="raw", value_serializer="raw")
            b = app.topic(dst, internal=True, group=group, key_serializer="raw", value_serializer="raw")
            await a.declare()
            await b.declare()
            await a.send(key=b"\xff\x00", value=None, headers={"h": b""})
            queue = await foreign.declare_queue(f"{src}.{group}", passive=True)
            incoming = await queue.get(timeout=10)
            assert incoming is not None
            target = await foreign.get_exchange(dst)
            await target.publish(aio_pika.Message(incoming.body, headers=incoming.headers), "")
            await incoming.ack()
            async with b.events() as stream:
                event = await asyncio.wait_for(stream.get(), 15)
            assert (event.key, event.value, event.headers) == (b"\xff\x00", None, {"h": b""})
    finally:
        await cleanup([src, dst], [f"{src}.{group}", f"{dst}.{group}"])
