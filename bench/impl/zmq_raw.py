"""Plain pyzmq against the same ``channels zmq-broker``: the smallest client of its protocol.

ZeroMQ has no broker of its own, so "the raw client" is a pyzmq DEALER socket that speaks
the broker's frames directly (``transports._zmq_broker``: ``PUB``/``DECLARE``/``SUB``,
deliveries ``MSG``, one-way ``ACK``), with nothing else: no reconnect, no pings, no
envelope, no error mapping, no timeouts. The broker does exactly the same work for it as for
our driver (routing to the group queue, confirm, credit-based delivery, acks), so the ratio
is the cost of our driver and core. Settings as ours: the group queue is declared before
publishing, ``prefetch`` 100, publishes confirmed one by one (``publish_confirm``) or in
windows of 500 requests in flight (``publish_batch``), every message acked.
(Plain PUB/SUB through the broker's fan-out/intake ports would be at-most-once, without
confirms, acks or kept messages: not comparable to any workload here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp
from transports._zmq_broker import META, SEQ, pack_seqs

PREFETCH = 100
WINDOW = 500
_NO_META = META.pack(0, 0.0, 0)


def _endpoint(url: str) -> str:
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    return f"tcp://{netloc}" if ":" in netloc else f"tcp://{netloc}:5560"


class _Client:
    """One DEALER socket; replies are matched to requests by id, deliveries queued."""

    def __init__(self, url: str) -> None:
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(_endpoint(url))
        self.ids = itertools.count()
        self.waiting: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self.inbox: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if frames[0] == b"MSG":
                self.inbox.put_nowait(frames)
            else:
                fut = self.waiting.pop(frames[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(frames)

    def request(self, *frames: bytes) -> asyncio.Future[list[bytes]]:
        req = str(next(self.ids)).encode()
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[req] = fut
        self.sock.send_multipart([frames[0], req, *frames[1:]])
        return fut

    async def call(self, *frames: bytes) -> list[bytes]:
        reply = await asyncio.wait_for(self.request(*frames), 30)
        if reply[0] != b"OK":
            raise RuntimeError(f"zmq-broker refused {frames[0]!r}: {reply[2:]!r}")
        return reply

    def publish(self, topic: bytes, value: bytes, *headers: bytes) -> asyncio.Future[list[bytes]]:
        return self.request(b"PUB", topic, value, _NO_META, b"", *headers)

    def close(self) -> None:
        self.task.cancel()
        self.sock.close(0)


@contextlib.asynccontextmanager
async def _setup(url: str, tag: str, subscribe: bool) -> AsyncIterator[tuple[_Client, bytes]]:
    client = _Client(url)
    topic = name(tag).encode()
    try:
        await client.call(b"DECLARE", topic, b"bench", b"1")
        if subscribe:
            await client.call(b"SUB", b"s1", b"bench", str(PREFETCH).encode(), b"", topic)
        yield client, topic
    finally:
        client.close()


async def _publish_many(client: _Client, topic: bytes, value: bytes, n: int) -> None:
    for first in range(0, n, WINDOW):
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.publish(topic, value) for _ in range(min(WINDOW, n - first)))),
            60,
        )
        if any(r[0] != b"OK" for r in replies):
            raise RuntimeError("zmq-broker refused a publish")


async def _drain(client: _Client, n: int, on_message: Any = None) -> None:
    got = 0
    async with asyncio.timeout(120):
        while got < n:
            frames = await client.inbox.get()
            # [MSG, sub_id, seq, topic, value, meta, key, *headers]
            if on_message is not None:
                on_message(frames)
            client.sock.send_multipart([b"ACK", b"s1", pack_seqs([SEQ.unpack(frames[2])[0]])])
            got += 1


async def publish_confirm(url: str, n: int, size: int) -> Result:
    async with _setup(url, "confirm", subscribe=False) as (client, topic):
        value = payload(size)
        start = time.perf_counter()
        for _ in range(n):
            reply = await asyncio.wait_for(client.publish(topic, value), 30)
            if reply[0] != b"OK":
                raise RuntimeError("zmq-broker refused a publish")
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    async with _setup(url, "batch", subscribe=False) as (client, topic):
        value = payload(size)
        start = time.perf_counter()
        await _publish_many(client, topic, value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    async with _setup(url, "consume", subscribe=True) as (client, topic):
        await _publish_many(client, topic, payload(size), n)
        start = time.perf_counter()
        await _drain(client, n)
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    async with _setup(url, "e2e", subscribe=True) as (client, topic):
        start = time.perf_counter()
        await asyncio.gather(_publish_many(client, topic, payload(size), n), _drain(client, n))
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    async with _setup(url, "latency", subscribe=True) as (client, topic):
        value = payload(size)
        samples: list[float] = []
        reader = asyncio.create_task(_drain(client, n, lambda frames: samples.append(unstamp(frames[8]))))
        sent: list[asyncio.Future[list[bytes]]] = []

        def send(_: int) -> None:
            sent.append(client.publish(topic, value, b"t", stamp()))

        start = time.perf_counter()
        await pace(n, rate, send)
        await asyncio.wait_for(reader, 120)
        seconds = time.perf_counter() - start
        await asyncio.wait_for(asyncio.gather(*sent), 30)
        return latency_result(n, size, seconds, samples)


__all__ = ["consume", "end_to_end", "latency", "publish_batch", "publish_confirm"]
