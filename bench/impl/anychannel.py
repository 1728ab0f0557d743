"""This library's Topic API on any broker (the workloads of channels.benchmark)."""

from __future__ import annotations

import asyncio
import time

from channels.app import App
from channels.benchmark import (
    Result,
    _payload,
    _result,
    _topic,
    consume,
    latency,
    publish_batch,
    publish_confirm,
)

__all__ = ["consume", "end_to_end", "latency", "publish_batch", "publish_confirm"]


async def end_to_end(url: str, n: int, size: int) -> Result:
    """A producer task and a consumer stream on one topic, concurrently."""
    async with App("bench", broker=url) as app:
        topic = _topic(app, "e2e")
        await topic.declare()
        value = _payload(size)
        async with topic.events() as stream:

            async def produce() -> None:
                for _ in range(n):
                    topic.send_soon(value=value)
                    if app.producer.pending >= 1000:
                        await asyncio.sleep(0)

            async def drain() -> None:
                for _ in range(n):
                    await stream.get(timeout=60)

            start = time.perf_counter()
            await asyncio.gather(produce(), drain())
            return _result("end_to_end", n, size, time.perf_counter() - start)
