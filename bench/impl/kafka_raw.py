"""aiokafka with the settings of our Kafka driver (transports/kafka.py).

Producer: ``acks=all``, ``linger_ms=0``, ``max_batch_size=16384``, no compression, no
idempotence, keyless records. Topics: created with 4 partitions and 1 replica (the
driver's ``declare`` defaults). Consumer: a group, ``fetch_max_wait_ms=100``, at most 100
records per ``getmany`` (the driver's default prefetch window), offsets committed every
second. Values are raw bytes on both sides; the latency stamp travels in a record header
``t``, as ours does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp

PREFETCH = 100


def _servers(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].rstrip("/")


async def _create(url: str, tag: str) -> str:
    topic = name(tag)
    await _create_named(url, topic)
    return topic


async def _create_named(url: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(url))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await admin.close()


async def _delete(url: str, topic: str) -> None:
    """Best effort: a benchmark should not leave its topics behind."""
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(url))
    try:
        await admin.start()
        await admin.delete_topics([topic])
    except Exception:
        pass
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _producer(url: str, topic: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=_servers(url),
        acks="all",
        linger_ms=0,
        max_batch_size=16384,
        enable_idempotence=False,
    )
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata known before the clock starts
        yield producer
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 20)


@contextlib.asynccontextmanager
async def _consumer(url: str, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=_servers(url),
        group_id=f"{topic}-g",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
        fetch_max_wait_ms=100,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):  # joined, like our events() returning
            while not consumer.assignment():  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.02)
        yield consumer
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 20)


async def _drain(consumer: AIOKafkaConsumer, n: int, on_record: Any = None) -> None:
    got = 0
    async with asyncio.timeout(120):
        while got < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=PREFETCH)
            for records in batches.values():
                got += len(records)
                if on_record is not None:
                    for record in records:
                        on_record(record)


async def publish_confirm(url: str, n: int, size: int) -> Result:
    topic = await _create(url, "confirm")
    value = payload(size)
    async with _producer(url, topic) as producer:
        start = time.perf_counter()
        for _ in range(n):
            await producer.send_and_wait(topic, value)
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    topic = await _create(url, "batch")
    value = payload(size)
    async with _producer(url, topic) as producer:
        start = time.perf_counter()
        futures = [await producer.send(topic, value) for _ in range(n)]
        await asyncio.gather(*futures)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    topic = await _create(url, "consume")
    value = payload(size)
    async with _consumer(url, topic) as consumer, _producer(url, topic) as producer:
        futures = [await producer.send(topic, value) for _ in range(n)]
        await asyncio.gather(*futures)
        start = time.perf_counter()
        await _drain(consumer, n)
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    topic = await _create(url, "e2e")
    value = payload(size)
    async with _consumer(url, topic) as consumer, _producer(url, topic) as producer:

        async def produce() -> None:
            futures = [await producer.send(topic, value) for _ in range(n)]
            await asyncio.gather(*futures)

        start = time.perf_counter()
        await asyncio.gather(produce(), _drain(consumer, n))
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    topic = await _create(url, "latency")
    value = payload(size)
    samples: list[float] = []
    async with _consumer(url, topic) as consumer, _producer(url, topic) as producer:
        reader = asyncio.create_task(_drain(consumer, n, lambda r: samples.append(unstamp(dict(r.headers)["t"]))))
        start = time.perf_counter()
        futures: list[asyncio.Future[Any]] = []

        async def send(_: int) -> None:
            futures.append(await producer.send(topic, value, headers=[("t", stamp())]))

        await pace(n, rate, send)
        await asyncio.gather(*futures)
        await asyncio.wait_for(reader, 120)
        return latency_result(n, size, time.perf_counter() - start, samples)
