"""Workloads that measure this library's own API on any broker.

Used by ``channels bench URL`` and by the side-by-side harness in ``bench/``. Each
workload runs on a fresh topic and group, and returns plain numbers.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from channels.app import App
from channels.topic import Topic

__all__ = ["Result", "consume", "latency", "publish_batch", "publish_confirm", "run_all"]


@dataclass
class Result:
    workload: str
    messages: int
    size: int
    seconds: float
    msgs_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _payload(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def _topic(app: App, tag: str) -> Topic[Any, Any]:
    return app.topic(f"bench-{tag}-{uuid.uuid4().hex[:10]}", internal=True, group=f"bench-{tag}")


def _result(workload: str, n: int, size: int, seconds: float) -> Result:
    return Result(workload, n, size, seconds, n / seconds if seconds > 0 else 0.0)


async def publish_confirm(url: str, n: int, size: int) -> Result:
    """``await topic.send()`` one message at a time: each waits for the broker's confirm."""
    async with App("bench", broker=url) as app:
        topic = _topic(app, "confirm")
        await topic.declare()
        value = _payload(size)
        start = time.perf_counter()
        for _ in range(n):
            await topic.send(value=value)
        return _result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    """``send_soon`` for every message, then wait until all are confirmed."""
    async with App("bench", broker=url) as app:
        topic = _topic(app, "batch")
        await topic.declare()
        value = _payload(size)
        start = time.perf_counter()
        for _ in range(n):
            topic.send_soon(value=value)
        await app.producer.flush()
        return _result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    """Read ``n`` messages of a pre-filled topic (auto-acked), timed from the first get."""
    async with App("bench", broker=url) as app:
        topic = _topic(app, "consume")
        await topic.declare()
        value = _payload(size)
        async with topic.events() as stream:
            for _ in range(n):
                topic.send_soon(value=value)
            await app.producer.flush()
            start = time.perf_counter()
            for _ in range(n):
                await stream.get(timeout=60)
            return _result("consume", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    """Send ``n`` messages at ``rate`` per second; measure send-to-receive latency."""
    async with App("bench", broker=url) as app:
        topic = _topic(app, "latency")
        await topic.declare()
        value = _payload(size)
        samples: list[float] = []
        async with topic.events() as stream:

            async def receive() -> None:
                for _ in range(n):
                    event = await stream.get(timeout=60)
                    sent = int(event.headers["t"])
                    samples.append((time.perf_counter_ns() - sent) / 1e6)

            reader = asyncio.create_task(receive())
            interval = 1.0 / rate
            start = time.perf_counter()
            for i in range(n):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                topic.send_soon(value=value, headers={"t": str(time.perf_counter_ns())})
            await asyncio.wait_for(reader, 120)
            seconds = time.perf_counter() - start
        samples.sort()
        q = (
            statistics.quantiles(samples, n=1000, method="inclusive")
            if len(samples) > 1
            else samples * 999
        )
        result = _result("latency", n, size, seconds)
        result.p50_ms, result.p99_ms, result.p999_ms = q[499], q[989], q[998]
        return result


WORKLOADS = {
    "publish_confirm": publish_confirm,
    "publish_batch": publish_batch,
    "consume": consume,
    "latency": latency,
}


async def run_all(url: str, n: int, size: int) -> list[Result]:
    confirm_n = max(1, n // 10)
    return [
        await publish_confirm(url, confirm_n, size),
        await publish_batch(url, n, size),
        await consume(url, n, size),
        await latency(url, max(1, n // 10), size),
    ]
