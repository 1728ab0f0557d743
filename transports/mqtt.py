"""MQTT driver on aiomqtt 2.5.1 (paho-mqtt 2.2.0 underneath): ``mqtt://`` and ``mqtts://``.

URL: ``mqtt://[user:password@]host[:1883][?options]``, ``mqtts://...`` for TLS (port 8883).

Options (shared with ``gmqtt://``, see ``transports._mqtt_common``):

* ``version`` -- ``5`` (default) or ``3`` (MQTT 3.1.1; key and headers then travel in the
  envelope of ``channels.envelope``).
* ``qos`` -- ``1`` (default), ``0`` or ``2`` for every publish and subscription.
* ``client_id`` -- prefix of every client id (default ``anychannel``). Give each process
  that joins the same groups its own prefix (see "Sessions" below).
* ``keepalive`` -- seconds (default 60). ``connect_timeout`` -- seconds (default 10).
* ``stall_timeout`` -- seconds a member's window may stay full behind an unacked message
  before its session reconnects to get the held messages resent (default 30).
* ``session_expiry`` -- seconds a member's session outlives its connection (default 86400).
* ``clean_start`` -- ``true`` makes every session end with its connection (no
  at-least-once: the capabilities ``ack`` and ``persistent`` turn False).
* ``receive_maximum`` -- messages the broker may send a member before it acks (default: the
  stream's prefetch); this is the backpressure window.
* ``max_inflight`` -- publishes awaiting their PUBACK at once (default 100).
* ``max_message_size`` -- bytes (default 255 MiB, MQTT's packet limit minus headroom).
* ``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile`` -- TLS files (``mqtts://`` only).
* ``envelope`` -- ``off`` with ``version=3``: plain payloads for foreign readers (keys,
  headers and None then raise EncodeError). MQTT 5 uses no envelope either way.
* ``mandatory`` -- ``true`` (default): a QoS 1 send the broker answers with "no matching
  subscribers" (MQTT 5 PUBACK reason 0x10) fails with ``channels.errors.Unroutable``;
  ``false`` accepts it (the message is gone, as plain MQTT has it).

Mapping. topic = MQTT topic name; group = shared subscription ``$share/<group>/<topic>``
(every group gets every message, the members of a group compete); key, headers and a None
value = MQTT 5 user properties (``channels.key``, ``channels.none``, the header name; values
that are not text Mosquitto accepts travel in base64 under ``channels.key.b64`` /
``channels.b64.<name>`` / ``channels.hdr.<base64url name>``); the header ``content-type``
= the MQTT 5 content-type property. ``declare`` = the group's anchor session subscribed with a
long expiry, so QoS 1/2 messages published before anyone consumes are kept. QoS 1 with
manual acknowledgement: the PUBACK goes out only once the handler acked, in the order the
messages arrived (MQTT 5, 4.6.0-2). ``pattern=`` = the narrowest ``<prefix>/#`` filter the
regex allows, then a full regex match on each topic name (non-matching messages are acked
and dropped). A lost connection is re-established with the same session and resubscribed.

Reliance on aiomqtt internals (hence the pin ``aiomqtt==2.5.1``): aiomqtt has no manual-ack
option, so the driver reaches the paho client at ``aiomqtt.Client._client`` to call
``manual_ack_set(True)`` and ``ack(mid, qos)``, installs its own paho ``on_message`` (to see
the DUP flag and receive from the instant of CONNACK) and ``on_publish`` (publishing through
paho directly: aiomqtt's ``publish`` costs a task and a scan of its pending calls per
message), and watches ``Client._disconnected`` to notice a dropped connection. It also
replaces aiomqtt's socket reader (one packet per event-loop turn) by one that drains the
socket through paho's public ``loop_read``.

Capabilities (the same as ``gmqtt://``): persistent (MQTT 5, QoS 1, ``mandatory``: see
docs/drivers/mqtt.md, "Broker restarts"), consumer_groups, fanout_groups, ack, native
headers/keys (MQTT 5), patterns. Not: redelivery_on_nack (MQTT has no nack; an
unacked message comes back only when its session reconnects, so ``nack(requeue=True)``
raises CapabilityNotSupported and ``nack(requeue=False)`` acks), per_key_ordering (a shared
subscription spreads one key's messages over the members), replay_from_start (no history),
explicit_partitions, topic_check (an MQTT broker cannot tell whether a topic exists).

Sessions. Members have deterministic client ids ``<client_id>-<digest of group and
topic>-<slot>`` so that a restarted member resumes its session and gets its unacked
messages again. Two processes with the same ``client_id`` prefix would take each other's
sessions over; a session that hears DISCONNECT 0x8E, or loses its connection 5 times in
10 s (Mosquitto 2.0.11 closes a taken-over connection without a reason), stops its member
with ConnectionFailed instead of fighting.
Mosquitto keeps handing an offline member's session its share of a shared subscription; a
member that leaves while others stay therefore unsubscribes, and whatever the broker had
already queued for it waits until a member uses that slot again.

Ephemeral groups (``ephemeral=True``): every member is a session of its own (unique client
id ``<client_id>-<digest>-e<random>``, clean start, session expiry 0, no anchor) on the
shared subscription ``$share/<group>~ephemeral/<topic>``; the broker drops it with whatever
it held when its connection ends (closed or crashed), so an empty group keeps nothing.

QoS 2 with paho: PUBREC goes out on receipt and PUBCOMP after the ack; after a PUBREC the
broker never resends the message, and paho keeps it in memory only, so an unacked QoS 2
message is lost when its session's connection ends. With ``qos=2`` this driver therefore
declares ``ack`` False (the one capability where it differs from ``gmqtt://``, whose
PUBREC waits for the ack). QoS 1 is the at-least-once level.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from channels.errors import ConnectionFailed, MessageTooLarge
from transports._mqtt_common import (
    Incoming,
    Link,
    LinkConfig,
    MqttOptions,
    MqttTransportBase,
    WireMeta,
)

__all__ = ["MqttTransport"]


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _reason(exc: BaseException | None) -> int | None:
    rc = getattr(exc, "rc", None)
    if rc is None:
        return None
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


class AiomqttLink(Link):
    """One aiomqtt client = one MQTT connection; a new one for every (re)connection."""

    def __init__(self, opts: MqttOptions, config: LinkConfig) -> None:
        super().__init__(opts, config)
        self.client: aiomqtt.Client | None = None
        self._publishes: dict[int, asyncio.Future[int]] = {}
        self._entered = False
        self.session_present = False

    async def open(self) -> bool:
        opts, config = self.opts, self.config
        properties: Properties | None = None
        clean_session: bool | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if opts.v5:
            properties = _properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = config.session_expiry
            if config.receive_maximum is not None:
                properties.ReceiveMaximum = config.receive_maximum
            clean_start = config.clean_start
        else:
            clean_session = config.clean_start
        client = aiomqtt.Client(
            opts.host,
            opts.port,
            username=opts.username,
            password=opts.password,
            identifier=config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if opts.v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=clean_session,
            clean_start=clean_start,
            keepalive=opts.keepalive,
            timeout=opts.connect_timeout,
            properties=properties,
            max_inflight_messages=opts.max_inflight,
            tls_context=opts.tls,
        )
        client.pending_calls_threshold = 1 << 30  # batches are many pending publishes
        raw = client._client
        raw.manual_ack_set(True)
        raw.on_message = self._on_paho_message
        raw.on_publish = self._on_paho_publish

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
            self.session_present = bool(getattr(flags, "session_present", False))
            client._on_connect(c, userdata, flags, reason, props)

        raw.on_connect = on_connect
        self.client = client
        await client.__aenter__()
        self._entered = True
        client._disconnected.add_done_callback(self._on_disconnected)
        sock = raw.socket()
        if sock is not None:
            # aiomqtt's reader handles one packet per event-loop turn; this one drains what
            # the socket holds (the same work, far fewer loop turns under load).
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        return self.session_present

    def _read(self) -> None:
        client = self.client
        if client is None:
            return
        raw = client._client
        try:
            for _ in range(1000):
                if raw.loop_read() != paho.MQTT_ERR_SUCCESS:
                    break
                sock = raw.socket()
                if sock is None:
                    break
                pending = getattr(sock, "pending", None)
                if pending is not None and pending() > 0:
                    continue
                if not select.select([sock], [], [], 0)[0]:
                    break
        except Exception as exc:  # a broken connection: aiomqtt's reader does the same
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)

    def _on_paho_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.closed or self.config.on_message is None:
            return
        props = getattr(msg, "properties", None)
        user: list[tuple[str, str]] = []
        content_type: str | None = None
        if props is not None:
            user = list(getattr(props, "UserProperty", []) or [])
            content_type = getattr(props, "ContentType", None)
        self.config.on_message(
            self,
            Incoming(
                topic=msg.topic,
                payload=bytes(msg.payload),
                qos=msg.qos,
                dup=bool(msg.dup),
                user_properties=user,
                content_type=content_type,
                handle=(msg.mid, msg.qos) if msg.qos > 0 else None,
            ),
        )

    def _on_disconnected(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        self._fail_publishes("the connection dropped before the PUBACK")
        self._report_lost(_reason(exc))

    def _fail_publishes(self, text: str) -> None:
        publishes, self._publishes = self._publishes, {}
        for pub in publishes.values():
            if not pub.done():
                pub.set_exception(ConnectionFailed(text))

    async def subscribe(self, filters: Sequence[str], qos: int) -> None:
        assert self.client is not None
        for topic_filter in filters:
            if self.opts.v5:
                codes = await self.client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
            else:
                codes = await self.client.subscribe(topic_filter, qos=qos)
            for code in codes:
                value = getattr(code, "value", code)
                if isinstance(value, int) and value >= 0x80:
                    raise ConnectionFailed(
                        f"the broker refused the subscription {topic_filter!r} (reason {value:#x})"
                    )

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        assert self.client is not None
        await self.client.unsubscribe(list(filters))

    async def start_publish(
        self, topic: str, meta: WireMeta, qos: int
    ) -> asyncio.Future[int] | None:
        client = self.client
        if client is None or self.lost or self.closed:
            raise ConnectionFailed("not connected")
        properties: Properties | None = None
        if self.opts.v5 and (meta.user_properties or meta.content_type is not None):
            properties = _properties(PacketTypes.PUBLISH)
            if meta.user_properties:
                properties.UserProperty = meta.user_properties
            if meta.content_type is not None:
                properties.ContentType = meta.content_type
        # paho directly (aiomqtt's publish is one task, event and linear scan of its
        # pending calls per message): the PUBACK resolves the future in _on_paho_publish.
        info = client._client.publish(topic, meta.payload, qos, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            if info.rc == paho.MQTT_ERR_PAYLOAD_SIZE:
                raise MessageTooLarge(len(meta.payload), self.opts.max_message_size, topic=topic)
            raise ConnectionFailed(f"publish failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return None
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._publishes[info.mid] = done
        return done

    def _on_paho_publish(
        self, _client: Any, _userdata: Any, mid: int, reason: Any, _properties: Any
    ) -> None:
        done = self._publishes.pop(mid, None)
        if done is None or done.done():
            return
        code = getattr(reason, "value", 0)
        if isinstance(code, int) and code >= 0x80:
            done.set_exception(ConnectionFailed(f"the broker refused the publish: {reason}"))
        else:
            done.set_result(code if isinstance(code, int) else 0)

    def release(self, handle: Any) -> None:
        if self.client is None or self.closed or self.lost:
            return
        mid, qos = handle
        self.client._client.ack(mid, qos)

    async def close(self, keep_session: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        client = self.client
        if client is None or not self._entered:
            return
        disconnected = client._disconnected
        try:
            if not disconnected.done():
                properties: Properties | None = None
                if self.opts.v5 and not keep_session:
                    properties = _properties(PacketTypes.DISCONNECT)
                    properties.SessionExpiryInterval = 0
                client._client.disconnect(properties=properties)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(disconnected), self.opts.connect_timeout)
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
        finally:
            self._fail_publishes("the connection closed before the PUBACK")


class MqttTransport(MqttTransportBase):
    """MQTT 5 / 3.1.1 on aiomqtt; see the module docstring."""

    schemes = ("mqtt", "mqtts")
    tls_schemes: ClassVar[tuple[str, ...]] = ("mqtts",)
    qos2_redelivers: ClassVar[bool] = False  # paho sends PUBREC on receipt
    error_table: ClassVar[Sequence[tuple[Any, Any]]] = (
        ((aiomqtt.MqttError, OSError), ConnectionFailed),
    )

    def _new_link(self, config: LinkConfig) -> Link:
        return AiomqttLink(self.opts, config)

    @staticmethod
    def connack_code(exc: BaseException) -> int | None:
        if not isinstance(exc, MqttConnectError):
            return None
        rc = exc.rc
        return rc if isinstance(rc, int) else getattr(rc, "value", None)

    def native(self) -> Any:
        """The publisher's ``aiomqtt.Client`` (None while disconnected)."""
        link = self._publisher
        return link.client if isinstance(link, AiomqttLink) else None

    def client_version(self) -> str:
        return f"aiomqtt {_dist_version('aiomqtt')} (paho-mqtt {_dist_version('paho-mqtt')})"
