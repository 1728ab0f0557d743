"""faust-streaming's in-memory channel, the same loop as the asyncio.Queue baseline.

``app.channel(maxsize=1000)``, one iterator clone as the reader, ``put``/``get`` (its
cheapest public path; ``send(value=...)`` wraps every value in a future message and an
event first and is about four times slower). Faust's flow control is resumed by hand,
which a running Faust worker does at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import faust

from bench.impl._common import Result, payload, result


async def end_to_end(url: str, n: int, size: int) -> Result:
    logging.getLogger("faust").setLevel(logging.ERROR)
    app = faust.App(f"bench-{uuid.uuid4().hex[:8]}", broker="memory://", web_enabled=False)
    app.flow_control.resume()
    channel = app.channel(maxsize=1000)
    reader = channel.clone(is_iterator=True)
    value = payload(size)

    async def produce() -> None:
        for _ in range(n):
            await channel.put(value)  # type: ignore[arg-type]  # Faust accepts raw values here

    async def drain() -> None:
        for _ in range(n):
            await reader.get()

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(produce(), drain()), 120)
    return result("end_to_end", n, size, time.perf_counter() - start)
