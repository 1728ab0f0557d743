"""The workloads written once for FastStream; each broker module supplies an adapter.

FastStream runs a handler per message (decoding, its middleware and dependency injection):
that per-message pipeline is what the comparison measures. Handlers take the body as
``bytes`` (no decoding beyond FastStream's own); the latency stamp travels in a header ``t``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp

WINDOW = 500


class Adapter(Protocol):
    def broker(self, url: str) -> Any: ...

    async def prepare(self, url: str, topic: str, consumer: bool) -> Any:
        """Create what keeps messages for the group; returns a broker-specific target."""

    def subscribe(self, broker: Any, target: Any, handler: Callable[..., Any]) -> Any: ...

    async def ready(self, subscriber: Any) -> None:
        """Wait until the subscriber receives (joined its group)."""

    def publish(self, broker: Any, target: Any, value: bytes, headers: dict[str, str] | None) -> Awaitable[Any]:
        """Publish and wait for the broker's confirm."""

    async def publish_many(self, broker: Any, target: Any, value: bytes, n: int) -> None: ...

    async def cleanup(self, url: str, target: Any) -> None: ...


@contextlib.asynccontextmanager
async def _running(
    adapter: Adapter, url: str, tag: str, handler: Callable[..., Any] | None
) -> AsyncIterator[tuple[Any, Any]]:
    topic = name(tag)
    target = await adapter.prepare(url, topic, consumer=handler is not None)
    broker = adapter.broker(url)
    subscriber = adapter.subscribe(broker, target, handler) if handler is not None else None
    try:
        await broker.start()
        if subscriber is not None:
            await adapter.ready(subscriber)
        yield broker, target
    finally:
        await broker.stop()
        await adapter.cleanup(url, target)


class _Counter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.got = 0
        self.done = asyncio.Event()
        self.samples: list[float] = []

    def hit(self) -> None:
        self.got += 1
        if self.got >= self.n:
            self.done.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.done.wait(), 120)


def _quiet() -> None:
    for logger in ("faststream", "faststream.access"):
        logging.getLogger(logger).setLevel(logging.ERROR)


async def publish_confirm(adapter: Adapter, url: str, n: int, size: int) -> Result:
    _quiet()
    value = payload(size)
    async with _running(adapter, url, "confirm", None) as (broker, target):
        start = time.perf_counter()
        for _ in range(n):
            await adapter.publish(broker, target, value, None)
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(adapter: Adapter, url: str, n: int, size: int) -> Result:
    _quiet()
    value = payload(size)
    async with _running(adapter, url, "batch", None) as (broker, target):
        start = time.perf_counter()
        await adapter.publish_many(broker, target, value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(adapter: Adapter, url: str, n: int, size: int) -> Result:
    _quiet()
    counter = _Counter(n)
    gate = asyncio.Event()

    async def handler(body: bytes) -> None:
        await gate.wait()  # the topic is pre-filled first, as in our consume workload
        counter.hit()

    async with _running(adapter, url, "consume", handler) as (broker, target):
        await adapter.publish_many(broker, target, payload(size), n)
        start = time.perf_counter()
        gate.set()
        await counter.wait()
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(adapter: Adapter, url: str, n: int, size: int) -> Result:
    _quiet()
    counter = _Counter(n)

    async def handler(body: bytes) -> None:
        counter.hit()

    async with _running(adapter, url, "e2e", handler) as (broker, target):
        start = time.perf_counter()
        await asyncio.gather(adapter.publish_many(broker, target, payload(size), n), counter.wait())
        return result("end_to_end", n, size, time.perf_counter() - start)


def make_latency(context: Callable[[], Any]) -> Callable[..., Awaitable[Result]]:
    """``context()`` gives FastStream's parameter default that injects the headers."""

    async def latency(adapter: Adapter, url: str, n: int, size: int, rate: float = 1000.0) -> Result:
        _quiet()
        counter = _Counter(n)

        async def handler(body: bytes, headers: Any = context()) -> None:  # noqa: B008 - FastStream DI
            counter.samples.append(unstamp(headers["t"]))
            counter.hit()

        value = payload(size)
        async with _running(adapter, url, "latency", handler) as (broker, target):
            sends: set[asyncio.Future[Any]] = set()

            def send(_: int) -> None:
                fut = asyncio.ensure_future(adapter.publish(broker, target, value, {"t": stamp().decode()}))
                sends.add(fut)
                fut.add_done_callback(sends.discard)

            start = time.perf_counter()
            await pace(n, rate, send)
            await counter.wait()
            seconds = time.perf_counter() - start
            if sends:
                await asyncio.gather(*sends)
            return latency_result(n, size, seconds, counter.samples)

    return latency


async def windows(publish: Callable[[], Awaitable[Any]], n: int) -> None:
    """``n`` publishes, at most ``WINDOW`` awaiting their confirm at once (our batch size)."""
    for first in range(0, n, WINDOW):
        await asyncio.gather(*(publish() for _ in range(min(WINDOW, n - first))))
