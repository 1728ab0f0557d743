"""Plain pyzmq sockets and anychannel Topics on the same ``channels zmq-broker``.

Uses the shared broker (``CHANNELS_TEST_ZMQ_URL``, default ``zmq://127.0.0.1:5560``): its
fan-out XPUB port is PORT+1 and its intake port for plain PUB sockets is PORT+2.

Plain PUB/SUB has no subscription handshake, so both tests first send probes until one
gets through (the slow-joiner window), then check that every later message arrives.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import zmq
import zmq.asyncio

import channels
from channels.errors import Timeout
from channels.url import parse_url

pytestmark = pytest.mark.brokers

URL = os.environ.get("CHANNELS_TEST_ZMQ_URL", "zmq://127.0.0.1:5560")
_parsed = parse_url(URL)
HOST = _parsed.host or "127.0.0.1"
PORT = _parsed.port or 5560
FANOUT = f"tcp://{HOST}:{PORT + 1}"
INTAKE = f"tcp://{HOST}:{PORT + 2}"


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


async def test_plain_sub_socket_receives_what_a_topic_sends(ctx: zmq.asyncio.Context) -> None:
    name = f"interop-{uuid.uuid4().hex[:10]}"
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, name.encode())
    sub.connect(FANOUT)
    async with channels.App("interop", broker=URL) as app:
        # not declared: no group keeps these messages, the fan-out port is the only reader
        topic = app.topic(name, internal=True, key_type=str, value_serializer="raw")
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the SUB socket never got a probe"
            await topic.send(value=b"probe")
            if await sub.poll(200):
                break
        while await sub.poll(100):  # drop the probes
            await sub.recv_multipart()
        values = [f"m{i}".encode() for i in range(50)] + [b""]
        for value in values:
            await topic.send(key="k", value=value, headers={"h": b"\x00"})
        got: list[bytes] = []
        for _ in values:
            assert await sub.poll(5000), f"only {len(got)} of {len(values)} arrived"
            frames = await sub.recv_multipart()
            assert frames[0] == name.encode()
            assert frames[3] == b"k" and frames[4:] == [b"h", b"\x00"]
            got.append(frames[1])
        assert got == values


async def test_plain_pub_socket_reaches_a_topic(ctx: zmq.asyncio.Context) -> None:
    name = f"interop-{uuid.uuid4().hex[:10]}"
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(INTAKE)
    async with channels.App("interop", broker=URL) as app:
        topic = app.topic(name, internal=True, value_serializer="raw")
        async with topic.events() as stream:
            deadline = time.monotonic() + 10
            while True:
                assert time.monotonic() < deadline, "the broker never got a probe"
                await pub.send_multipart([name.encode(), b"probe"])
                try:
                    event = await stream.get(timeout=0.2)
                except Timeout:
                    continue
                break
            values = [f"m{i}".encode() for i in range(50)] + [b""]
            for value in values:
                await pub.send_multipart([name.encode(), value])
            await pub.send_multipart([name.encode(), b"end"])
            got: list[bytes | None] = []
            while True:
                event = await asyncio.wait_for(stream.get(), 5)
                assert event.key is None and event.headers == {}
                if event.value == b"end":
                    break
                if event.value != b"probe":
                    got.append(event.value)
            assert got == values
