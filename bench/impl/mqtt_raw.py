"""aiomqtt with the settings of our ``mqtt://`` driver (transports/mqtt.py).

MQTT 5, QoS 1 for every publish and subscription, receive maximum 100 (our prefetch), at
most 100 publishes awaiting their
PUBACK (``max_inflight``), sessions that outlive their connection (session expiry one
day, clean start only the first time), a shared subscription ``$share/<group>/<topic>``
made before anything is published (what ``declare`` and the stream do; for the
publish-only workloads the group session subscribes and goes offline, like the driver's
"anchor" session, so the broker queues for it and no consumer runs in this process). Publishing awaits
each PUBACK (``publish_confirm``) or windows of 500 messages (``publish_batch``: our
producer's batch size). Payloads are the raw bytes; the latency stamp travels in a user
property ``t``, as our header does. aiomqtt acknowledges on receipt (it has no manual-ack
option), our driver after the handler: the raw side does slightly less work here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.impl._common import Result, latency_result, name, pace, payload, result, stamp, unstamp

QOS = 1
WINDOW = 500


def _host_port(url: str) -> tuple[str, int]:
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":")
    return (host, int(port)) if host else (netloc, 1883)


@contextlib.asynccontextmanager
async def _client(url: str, identifier: str | None = None, expiry: int = 86_400) -> AsyncIterator[aiomqtt.Client]:
    host, port = _host_port(url)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry
    props.ReceiveMaximum = 100  # our driver: the stream's prefetch
    client = aiomqtt.Client(
        host,
        port,
        identifier=identifier or f"bench-raw-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        properties=props,
        max_inflight_messages=100,
    )
    client.pending_calls_threshold = 1 << 30
    async with client:
        yield client


async def _publish_many(client: aiomqtt.Client, topic: str, value: bytes, n: int) -> None:
    for first in range(0, n, WINDOW):
        await asyncio.gather(*(client.publish(topic, value, qos=QOS) for _ in range(min(WINDOW, n - first))))


@contextlib.asynccontextmanager
async def _subscribed(url: str, topic: str) -> AsyncIterator[aiomqtt.Client]:
    async with _client(url) as client:
        await client.subscribe(f"$share/g/{topic}", qos=QOS)
        yield client


@contextlib.asynccontextmanager
async def _anchored(url: str, topic: str) -> AsyncIterator[None]:
    """A group session that subscribed and went offline: the broker keeps its messages
    (what our ``declare`` does). Dropped at the end (a clean start with expiry 0)."""
    identifier = f"bench-raw-anchor-{uuid.uuid4().hex[:12]}"
    async with _client(url, identifier) as anchor:
        await anchor.subscribe(f"$share/g/{topic}", qos=QOS)
    try:
        yield
    finally:
        async with _client(url, identifier, expiry=0):
            pass


async def _drain(client: aiomqtt.Client, n: int, on_message: Any = None) -> None:
    got = 0
    async with asyncio.timeout(120):
        async for message in client.messages:
            if on_message is not None:
                on_message(message)
            got += 1
            if got >= n:
                return


async def publish_confirm(url: str, n: int, size: int) -> Result:
    topic = name("confirm")
    value = payload(size)
    async with _anchored(url, topic), _client(url) as pub:
        start = time.perf_counter()
        for _ in range(n):
            await pub.publish(topic, value, qos=QOS)
        return result("publish_confirm", n, size, time.perf_counter() - start)


async def publish_batch(url: str, n: int, size: int) -> Result:
    topic = name("batch")
    value = payload(size)
    async with _anchored(url, topic), _client(url) as pub:
        start = time.perf_counter()
        await _publish_many(pub, topic, value, n)
        return result("publish_batch", n, size, time.perf_counter() - start)


async def consume(url: str, n: int, size: int) -> Result:
    topic = name("consume")
    async with _subscribed(url, topic) as sub, _client(url) as pub:
        await _publish_many(pub, topic, payload(size), n)
        start = time.perf_counter()
        await _drain(sub, n)
        return result("consume", n, size, time.perf_counter() - start)


async def end_to_end(url: str, n: int, size: int) -> Result:
    topic = name("e2e")
    async with _subscribed(url, topic) as sub, _client(url) as pub:
        start = time.perf_counter()
        await asyncio.gather(_publish_many(pub, topic, payload(size), n), _drain(sub, n))
        return result("end_to_end", n, size, time.perf_counter() - start)


async def latency(url: str, n: int, size: int, rate: float = 1000.0) -> Result:
    topic = name("latency")
    value = payload(size)
    samples: list[float] = []

    def on_message(message: aiomqtt.Message) -> None:
        props = dict(message.properties.UserProperty)  # type: ignore[union-attr]
        samples.append(unstamp(props["t"]))

    async with _subscribed(url, topic) as sub, _client(url) as pub:
        reader = asyncio.create_task(_drain(sub, n, on_message))
        sends: set[asyncio.Task[None]] = set()

        def send(_: int) -> None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("t", stamp().decode())]
            task = asyncio.create_task(pub.publish(topic, value, qos=QOS, properties=props))
            sends.add(task)
            task.add_done_callback(sends.discard)

        start = time.perf_counter()
        await pace(n, rate, send)
        await asyncio.wait_for(reader, 120)
        seconds = time.perf_counter() - start
        if sends:
            await asyncio.gather(*sends)
        return latency_result(n, size, seconds, samples)
