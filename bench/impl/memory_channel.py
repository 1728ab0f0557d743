"""This library's in-process Channel, the same loop as the asyncio.Queue baseline."""

from __future__ import annotations

import asyncio
import time

import channels
from channels.benchmark import Result, _payload, _result


async def end_to_end(url: str, n: int, size: int) -> Result:
    channel: channels.Channel[None, bytes] = channels.Channel(maxsize=1000)
    value = _payload(size)

    async def produce() -> None:
        for _ in range(n):
            await channel.put(value)

    async def drain() -> None:
        for _ in range(n):
            await channel.get()

    start = time.perf_counter()
    await asyncio.gather(produce(), drain())
    return _result("end_to_end", n, size, time.perf_counter() - start)
