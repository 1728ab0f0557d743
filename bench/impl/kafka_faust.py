"""faust-streaming on Kafka (its aiokafka driver) with the settings of our Kafka driver.

A fresh Faust app per run (``app.start()`` inside the benchmark's loop, no web server, an
in-memory table store): ``producer_acks=-1`` (all), ``producer_linger_ms=0``,
``producer_max_batch_size=16384``, raw value serializer, a topic of 4 partitions, an agent
reading it with ``broker_max_poll_records=100`` from the earliest offset, Faust's own
periodic commits. ``publish_confirm`` awaits each ``send`` future; ``publish_batch``
buffers everything, then awaits all. The latency stamp travels in a header ``t``. The
topics Faust makes for itself (``<app>-__assignor-__leader``) are deleted after each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient

from bench.impl._common import Result, latency_result, pace, payload, result, stamp, unstamp
from bench.impl.kafka_raw import _servers


class _Run:
    def __init__(self, app: faust.App, topic: Any, counter: _Counter) -> None:
        self.app, self.topic, self.counter = app, topic, counter

    async def send(self, value: bytes, headers: dict[str, bytes] | None = None) -> Any:
        return await self.topic.send(value=value, headers=headers)

    async def send_many(self, value: bytes, n: int) -> None:
        futures = [await self.topic.send(value=value) for _ in range(n)]
        await asyncio.gather(*futures)


class _Counter:
    def __init__(self, n: int) -> None:
        self.n, self.got = n, 0
        self.done = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.samples: list[float] = []

    def hit(self) -> None:
        self.got += 1
        if self.got >= self.n:
            self.done.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), 120)


@contextlib.asynccontextmanager
async def _app(
    url: str, n: int, consumer: Callable[[Any], Any] | None = None, gated: bool = False
) -> AsyncIterator[_Run]:
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tag = uuid.uuid4().hex[:10]
    app = faust.App(
        f"bench-faust-{tag}",
        broker=f"kafka://{_servers(url)}",
        web_enabled=False,
        store="memory://",
        producer_acks=-1,
        producer_linger_ms=0,
        producer_max_batch_size=16384,
        broker_max_poll_records=100,
        consumer_auto_offset_reset="earliest",
        topic_partitions=4,
        value_serializer="raw",
    )
    topic = app.topic(f"bench-faust-{tag}", partitions=4, value_serializer="raw", internal=True)
    counter = _Counter(n)
    if gated:
        counter.gate.clear()
    if consumer is not None:

        @app.agent(topic)
        async def read(stream: Any) -> None:
            async for event in stream.events():
                await counter.gate.wait()
                consumer(event)
                counter.hit()

    await app.start()
    try:
        await topic.maybe_declare()
        if consumer is not None:
            async with asyncio.timeout(60):
                while not app.consumer.assignment():  # noqa: ASYNC110 - no event for it
                    await asyncio.sleep(0.05)
        yield _Run(app, topic, counter)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), 30)
        await _cleanup(url, app.conf.id)


async def _cleanup(url: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(url))
    try:
        await admin.start()
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    except Exception:
        pass
    finally:
        await admin.close()


async def publish_confirm(url: str, n: int, size: int) -> Result:
    value = payload(size)
    async with _app(url, n) as run:
        start = time.perf_counter()
        for _ in range(n):
            await (await run.send(value))
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    value = payload(size)
    async with _app(url, n) as run:
        start = time.perf_counter()
        await run.send_many(value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    async with _app(url, n, consumer=lambda event: None, gated=True) as run:
        await run.send_many(payload(size), n)
        start = time.perf_counter()
        run.counter.gate.set()
        await run.counter.wait()
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    async with _app(url, n, consumer=lambda event: None) as run:
        start = time.perf_counter()
        await asyncio.gather(run.send_many(payload(size), n), run.counter.wait())
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    samples: list[float] = []
    value = payload(size)
    async with _app(url, n, consumer=lambda e: samples.append(unstamp(e.headers["t"]))) as run:
        futures: list[Any] = []

        async def send(_: int) -> None:
            futures.append(await run.send(value, {"t": stamp()}))

        start = time.perf_counter()
        await pace(n, rate, send)
        await run.counter.wait()
        seconds = time.perf_counter() - start
        await asyncio.gather(*futures)
        return latency_result(n, size, seconds, samples)
