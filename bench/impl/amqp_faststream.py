"""FastStream's RabbitBroker (on aio-pika) with the settings of our AMQP driver.

The same topology as ``amqp_raw`` (a durable topic exchange, a durable queue bound with
``#``, declared before publishing); a channel with publisher confirms and
``prefetch_count=100``; persistent, mandatory publishes, confirmed one by one
(``publish_confirm``) or in windows of 500 (``publish_batch``); the subscriber acks after
the handler (FastStream's default ack policy).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
from faststream import Context
from faststream.rabbit import Channel, ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

from bench.impl import _faststream as fs
from bench.impl._common import Result


class _Rabbit:
    def broker(self, url: str) -> Any:
        return RabbitBroker(
            url,
            default_channel=Channel(prefetch_count=100, publisher_confirms=True),
            logger=None,  # no per-message access log: its best case
        )

    async def prepare(self, url: str, topic: str, consumer: bool) -> Any:
        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel()
            await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(f"{topic}.g", durable=True)
            await queue.bind(topic, "#")
        finally:
            await conn.close()
        return (
            RabbitExchange(topic, type=ExchangeType.TOPIC, durable=True),
            RabbitQueue(f"{topic}.g", durable=True, routing_key="#"),
        )

    def subscribe(self, broker: Any, target: Any, handler: Callable[..., Any]) -> Any:
        exchange, queue = target
        subscriber = broker.subscriber(queue, exchange)
        subscriber(handler)
        return subscriber

    async def ready(self, subscriber: Any) -> None:
        return None  # start() returns once basic.consume is confirmed

    def publish(self, broker: Any, target: Any, value: bytes, headers: dict[str, str] | None) -> Awaitable[Any]:
        return broker.publish(  # type: ignore[no-any-return]
            value, exchange=target[0], persist=True, mandatory=True, headers=headers
        )

    async def publish_many(self, broker: Any, target: Any, value: bytes, n: int) -> None:
        await fs.windows(lambda: self.publish(broker, target, value, None), n)

    async def cleanup(self, url: str, target: Any) -> None:
        exchange, queue = target
        with contextlib.suppress(Exception):
            conn = await aio_pika.connect(url)
            try:
                channel = await conn.channel()
                await channel.queue_delete(queue.name)
                await channel.exchange_delete(exchange.name)
            finally:
                await conn.close()


_ADAPTER = _Rabbit()


def _bind(fn: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
    return functools.partial(fn, _ADAPTER)


publish_confirm = _bind(fs.publish_confirm)
publish_batch = _bind(fs.publish_batch)
consume = _bind(fs.consume)
end_to_end = _bind(fs.end_to_end)
latency = _bind(fs.make_latency(lambda: Context("message.headers")))
