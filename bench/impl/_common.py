"""Helpers shared by the implementations under bench/impl (not a workload module)."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from channels.benchmark import Result, _payload, _result

__all__ = ["Result", "latency_result", "name", "pace", "payload", "result", "stamp", "unstamp"]

payload = _payload
result = _result


def name(tag: str) -> str:
    """A fresh topic/queue name (letters, digits, dashes: valid on every broker)."""
    return f"bench-{tag}-{uuid.uuid4().hex[:10]}"


def stamp() -> bytes:
    """The send time as text, as ``channels.benchmark.latency`` puts in its header ``t``."""
    return str(time.perf_counter_ns()).encode()


def unstamp(raw: bytes | str) -> float:
    """Milliseconds since the time in ``raw`` (made by :func:`stamp`)."""
    return (time.perf_counter_ns() - int(raw)) / 1e6


async def pace(n: int, rate: float, send: Callable[[int], Awaitable[None] | None]) -> None:
    """Call ``send(i)`` ``n`` times at ``rate`` per second (the same schedule as ours)."""
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending = send(i)
        if pending is not None:
            await pending


def latency_result(n: int, size: int, seconds: float, samples: list[float]) -> Result:
    samples.sort()
    q = statistics.quantiles(samples, n=1000, method="inclusive") if len(samples) > 1 else samples * 999
    out = _result("latency", n, size, seconds)
    out.p50_ms, out.p99_ms, out.p999_ms = q[499], q[989], q[998]
    return out
