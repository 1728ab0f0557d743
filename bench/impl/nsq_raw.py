"""ansq with the settings of our NSQ driver (transports/nsq.py).

One writer connection: ``PUB`` per message awaiting nsqd's ``OK`` (``publish_confirm``),
``MPUB`` of 500 bodies per command (``publish_batch``: our producer's batch size, which the
driver sends as one MPUB). One reader connection ``SUB topic channel`` with ``RDY 100``
(our default prefetch), ``FIN`` per message. The channel exists before anything is
published (the driver's ``declare`` creates it over HTTP; here the ``SUB`` does), so nsqd
keeps every message for it. Bodies are the raw payload (our driver adds its envelope for
keys and headers); for latency the stamp is prepended to the body, ``<ns>|payload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import ansq

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp

PREFETCH = 100
WINDOW = 500


def _host_port(url: str) -> tuple[str, int]:
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split(",")[0]
    host, _, port = netloc.rpartition(":")
    return (host, int(port)) if host else (netloc, 4150)


@contextlib.asynccontextmanager
async def _conns(url: str, topic: str) -> AsyncIterator[tuple[Any, Any]]:
    """(writer, reader): the reader is subscribed with RDY 0 (nothing flows yet)."""
    host, port = _host_port(url)
    writer = await ansq.open_connection(host, port)
    reader = await ansq.open_connection(host, port)
    try:
        await reader.subscribe(topic, "bench")
        yield writer, reader
    finally:
        for conn in (reader, writer):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


async def _publish_many(writer: Any, topic: str, value: bytes, n: int) -> None:
    for first in range(0, n, WINDOW):
        count = min(WINDOW, n - first)
        if count == 1:
            await writer.pub(topic, value)
        else:
            await writer.mpub(topic, [value] * count)


async def _drain(reader: Any, n: int, on_message: Any = None) -> None:
    await reader.rdy(PREFETCH)
    got = 0
    async with asyncio.timeout(120):
        async for message in reader.messages():
            if on_message is not None:
                on_message(message)
            await message.fin()
            got += 1
            if got >= n:
                return


async def publish_confirm(url: str, n: int, size: int) -> Result:
    topic = name("confirm")
    value = payload(size)
    async with _conns(url, topic) as (writer, _):
        start = time.perf_counter()
        for _ in range(n):
            await writer.pub(topic, value)
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    topic = name("batch")
    value = payload(size)
    async with _conns(url, topic) as (writer, _):
        start = time.perf_counter()
        await _publish_many(writer, topic, value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    topic = name("consume")
    async with _conns(url, topic) as (writer, reader):
        await _publish_many(writer, topic, payload(size), n)
        start = time.perf_counter()
        await _drain(reader, n)
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    topic = name("e2e")
    async with _conns(url, topic) as (writer, reader):
        start = time.perf_counter()
        await asyncio.gather(_publish_many(writer, topic, payload(size), n), _drain(reader, n))
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    topic = name("latency")
    value = payload(size)
    samples: list[float] = []

    def on_message(message: Any) -> None:
        samples.append(unstamp(bytes(message.body).split(b"|", 1)[0]))

    async with _conns(url, topic) as (writer, reader):
        receiver = asyncio.create_task(_drain(reader, n, on_message))
        sends: set[asyncio.Task[Any]] = set()

        def send(_: int) -> None:
            task = asyncio.create_task(writer.pub(topic, stamp() + b"|" + value))
            sends.add(task)
            task.add_done_callback(sends.discard)

        start = time.perf_counter()
        await pace(n, rate, send)
        await asyncio.wait_for(receiver, 120)
        seconds = time.perf_counter() - start
        if sends:
            await asyncio.gather(*sends)
        return latency_result(n, size, seconds, samples)
