"""Baseline for memory://: a bare asyncio.Queue producer/consumer loop."""

from __future__ import annotations

import asyncio
import time

from channels.benchmark import Result, _payload, _result


async def publish_batch(url: str, n: int, size: int) -> Result:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    value = _payload(size)
    start = time.perf_counter()
    for _ in range(n):
        queue.put_nowait(value)
    return _result("publish_batch", n, size, time.perf_counter() - start)


async def publish_confirm(url: str, n: int, size: int) -> Result:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    value = _payload(size)
    start = time.perf_counter()
    for _ in range(n):
        await queue.put(value)
    return _result("publish_confirm", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    value = _payload(size)
    for _ in range(n):
        queue.put_nowait(value)
    start = time.perf_counter()
    for _ in range(n):
        await queue.get()
        queue.task_done()
    return _result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    """A producer task and a consumer task over one bounded queue."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
    value = _payload(size)

    async def produce() -> None:
        for _ in range(n):
            await queue.put(value)

    async def drain() -> None:
        for _ in range(n):
            await queue.get()

    start = time.perf_counter()
    await asyncio.gather(produce(), drain())
    return _result("end_to_end", n, size, time.perf_counter() - start)
