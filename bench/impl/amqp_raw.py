"""aio-pika with the settings of our AMQP driver (transports/amqp.py).

Topology per run: a durable ``topic`` exchange and a durable queue ``<exchange>.g`` bound
with ``#`` (what the driver's ``declare`` makes). Publishing: a channel with publisher
confirms, persistent delivery mode, ``mandatory=True``, confirms awaited per message
(``publish_confirm``) or for windows of 500 messages in flight (``publish_batch``: our
producer's batch size). Consuming: ``basic.qos(prefetch_count=100)`` (our default
prefetch), manual ``basic.ack`` per message. Bodies are the raw payload; the latency stamp
travels in a header ``t``, as ours does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp

PREFETCH = 100
WINDOW = 500


class _Setup:
    def __init__(self, conn: Any, exchange: Any, queue: Any) -> None:
        self.conn, self.exchange, self.queue = conn, exchange, queue

    async def publish(self, value: bytes, headers: dict[str, Any] | None = None) -> None:
        await self.exchange.publish(
            aio_pika.Message(value, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, headers=headers),
            routing_key="",
            mandatory=True,
        )

    async def publish_many(self, value: bytes, n: int) -> None:
        for first in range(0, n, WINDOW):
            await asyncio.gather(*(self.publish(value) for _ in range(min(WINDOW, n - first))))


@contextlib.asynccontextmanager
async def _setup(url: str, tag: str) -> AsyncIterator[_Setup]:
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        topic = name(tag)
        exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
        consumer_channel = await conn.channel(publisher_confirms=False)
        await consumer_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consumer_channel.declare_queue(f"{topic}.g", durable=True)
        await queue.bind(topic, "#")
        try:
            yield _Setup(conn, exchange, queue)
        finally:
            with contextlib.suppress(Exception):
                await queue.delete(if_unused=False, if_empty=False)
            with contextlib.suppress(Exception):
                await exchange.delete()
    finally:
        await conn.close()


async def _drain(queue: Any, n: int, on_message: Any = None) -> None:
    got = 0
    async with asyncio.timeout(120):
        async with queue.iterator() as messages:
            async for message in messages:
                if on_message is not None:
                    on_message(message)
                await message.ack()
                got += 1
                if got >= n:
                    return


async def publish_confirm(url: str, n: int, size: int) -> Result:
    async with _setup(url, "confirm") as s:
        value = payload(size)
        start = time.perf_counter()
        for _ in range(n):
            await s.publish(value)
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    async with _setup(url, "batch") as s:
        value = payload(size)
        start = time.perf_counter()
        await s.publish_many(value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    async with _setup(url, "consume") as s:
        await s.publish_many(payload(size), n)
        start = time.perf_counter()
        await _drain(s.queue, n)
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    async with _setup(url, "e2e") as s:
        value = payload(size)
        start = time.perf_counter()
        await asyncio.gather(s.publish_many(value, n), _drain(s.queue, n))
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    async with _setup(url, "latency") as s:
        value = payload(size)
        samples: list[float] = []
        reader = asyncio.create_task(_drain(s.queue, n, lambda m: samples.append(unstamp(bytes(m.headers["t"])))))
        sends: set[asyncio.Task[None]] = set()

        def send(_: int) -> None:
            task = asyncio.create_task(s.publish(value, {"t": bytearray(stamp())}))
            sends.add(task)
            task.add_done_callback(sends.discard)

        start = time.perf_counter()
        await pace(n, rate, send)
        await asyncio.wait_for(reader, 120)
        seconds = time.perf_counter() - start
        if sends:
            await asyncio.gather(*sends)
        return latency_result(n, size, seconds, samples)
