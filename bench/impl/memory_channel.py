"""This library's in-process Channel, the same loops as the asyncio.Queue baseline.

``channels.Channel`` (no app, no broker): ``await put`` / ``await get``. ``end_to_end`` is
the target's case (a producer and a consumer task over a channel bounded at 1,000, like
the bounded ``asyncio.Queue``); ``publish_confirm`` and ``consume`` use an unbounded
channel like the baseline; ``publish_batch`` uses ``send_soon`` (our fire-and-forget call)
and then awaits every future in turn.
"""

from __future__ import annotations

import asyncio
import time

import channels
from channels.benchmark import Result, _payload, _result


async def publish_confirm(url: str, n: int, size: int) -> Result:
    channel: channels.Channel[None, bytes] = channels.Channel()
    value = _payload(size)
    start = time.perf_counter()
    for _ in range(n):
        await channel.put(value)
    return _result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    channel: channels.Channel[None, bytes] = channels.Channel()
    value = _payload(size)
    start = time.perf_counter()
    futures = [channel.send_soon(value=value) for _ in range(n)]
    for future in futures:  # each is awaited (a done one returns at once, without a loop turn)
        await future
    return _result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    channel: channels.Channel[None, bytes] = channels.Channel()
    value = _payload(size)
    for _ in range(n):
        await channel.put(value)
    start = time.perf_counter()
    for _ in range(n):
        await channel.get()
    return _result("consume", n, size, time.perf_counter() - start)


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
