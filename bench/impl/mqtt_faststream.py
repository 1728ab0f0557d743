"""FastStream's MQTTBroker (on zmqtt) with the settings of our ``mqtt://`` driver.

MQTT 5, QoS 1 publishes and a QoS 1 shared subscription ``$share/g/<topic>``. No receive
maximum: with ``receive_maximum=100`` zmqtt 0.2.5 closes the connection ("Broker exceeded
the Receive Maximum of 100 unacknowledged QoS 1/2 messages") against Mosquitto.
Publish-only workloads first leave an offline group session behind, as ``mqtt_raw`` does
(what our ``declare`` makes), so the broker keeps the messages and no consumer runs here.
Publishes are confirmed one by one or in windows of 500. FastStream's MQTT support uses
the zmqtt client, not aiomqtt/paho like ``mqtt_raw``.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import Context
from faststream.mqtt import MQTTBroker, QoS

from bench.impl import _faststream as fs
from bench.impl._common import Result
from bench.impl.mqtt_raw import _client


class _Mqtt:
    def broker(self, url: str) -> Any:
        return MQTTBroker(
            url.split("?", 1)[0],
            client_id=f"bench-fs-{uuid.uuid4().hex[:12]}",
            version="5.0",
            logger=None,  # no per-message access log: its best case
        )

    async def prepare(self, url: str, topic: str, consumer: bool) -> Any:
        anchor = None
        if not consumer:
            anchor = f"bench-fs-anchor-{uuid.uuid4().hex[:12]}"
            async with _client(url, anchor) as client:
                await client.subscribe(f"$share/g/{topic}", qos=1)
        return (topic, anchor, url)

    def subscribe(self, broker: Any, target: Any, handler: Callable[..., Any]) -> Any:
        subscriber = broker.subscriber(target[0], qos=QoS.AT_LEAST_ONCE, shared="g")
        subscriber(handler)
        return subscriber

    async def ready(self, subscriber: Any) -> None:
        return None  # start() returns after SUBACK

    def publish(self, broker: Any, target: Any, value: bytes, headers: dict[str, str] | None) -> Awaitable[Any]:
        return broker.publish(  # type: ignore[no-any-return]
            value, target[0], qos=QoS.AT_LEAST_ONCE, headers=headers
        )

    async def publish_many(self, broker: Any, target: Any, value: bytes, n: int) -> None:
        await fs.windows(lambda: self.publish(broker, target, value, None), n)

    async def cleanup(self, url: str, target: Any) -> None:
        if target[1] is not None:
            with contextlib.suppress(Exception):
                async with _client(url, target[1], expiry=0):
                    pass


_ADAPTER = _Mqtt()


def _bind(fn: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
    return functools.partial(fn, _ADAPTER)


publish_confirm = _bind(fs.publish_confirm)
publish_batch = _bind(fs.publish_batch)
consume = _bind(fs.consume)
end_to_end = _bind(fs.end_to_end)
latency = _bind(fs.make_latency(lambda: Context("message.headers")))
