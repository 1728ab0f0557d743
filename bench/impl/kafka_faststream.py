"""FastStream's KafkaBroker (on aiokafka) with the settings of our Kafka driver.

``acks=all``, ``linger_ms=0``, ``max_batch_size=16384``; topics created beforehand with 4
partitions (as ``kafka_raw``); one subscriber in a group reading from the earliest offset,
``max_records=100`` per poll (our prefetch), FastStream's default ack policy (offsets
auto-committed). ``publish_batch`` uses ``no_confirm=True`` futures, then awaits them all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import Context
from faststream.kafka import KafkaBroker

from bench.impl import _faststream as fs
from bench.impl._common import Result
from bench.impl.kafka_raw import _create_named, _delete, _servers


class _Kafka:
    def broker(self, url: str) -> Any:
        return KafkaBroker(
            _servers(url),
            acks="all",
            linger_ms=0,
            max_batch_size=16384,
            enable_idempotence=False,
            logger=None,  # no per-message access log: its best case
        )

    async def prepare(self, url: str, topic: str, consumer: bool) -> Any:
        await _create_named(url, topic)
        return (url, topic)

    def subscribe(self, broker: Any, target: Any, handler: Callable[..., Any]) -> Any:
        subscriber = broker.subscriber(
            target[1],
            group_id=f"{target[1]}-g",
            auto_offset_reset="earliest",
            max_records=100,
            fetch_max_wait_ms=100,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        subscriber(handler)
        return subscriber

    async def ready(self, subscriber: Any) -> None:
        async with asyncio.timeout(30):
            while subscriber.consumer is None or not subscriber.consumer.assignment():  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.02)

    def publish(self, broker: Any, target: Any, value: bytes, headers: dict[str, str] | None) -> Awaitable[Any]:
        return broker.publish(value, target[1], headers=headers)  # type: ignore[no-any-return]

    async def publish_many(self, broker: Any, target: Any, value: bytes, n: int) -> None:
        futures = [await broker.publish(value, target[1], no_confirm=True) for _ in range(n)]
        await asyncio.gather(*futures)

    async def cleanup(self, url: str, target: Any) -> None:
        await _delete(url, target[1])


_ADAPTER = _Kafka()


def _bind(fn: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
    return functools.partial(fn, _ADAPTER)


publish_confirm = _bind(fs.publish_confirm)
publish_batch = _bind(fs.publish_batch)
consume = _bind(fs.consume)
end_to_end = _bind(fs.end_to_end)
latency = _bind(fs.make_latency(lambda: Context("message.headers")))
