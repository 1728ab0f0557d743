"""MQTT driver on gmqtt 0.8.0: ``gmqtt://`` and ``gmqtts://``.

The same broker, URL options, semantics and capabilities as ``mqtt://`` (aiomqtt); every
MQTT rule lives in ``transports._mqtt_common`` and this module only does gmqtt's I/O. See
``transports.mqtt`` for the options and the mapping. ``gmqtt://host:1883`` talks plain MQTT
to the broker; ``gmqtts://`` uses TLS (port 8883 by default).

How gmqtt is driven:

* ``Client(client_id, optimistic_acknowledgement=False)`` sends the PUBACK (PUBREC for
  QoS 2) when the asynchronous ``on_message`` returns. ``on_message`` therefore waits until
  the in-order acknowledgement queue releases the message, i.e. until the handler acked it
  and every message that arrived earlier was released.
* gmqtt's own reconnection is switched off: the shared layer reconnects with a fresh client
  object, so a connection that is gone can never acknowledge a message of the next one
  (packet identifiers repeat). When a connection ends, its client's acknowledgement sender
  (``Client._package_handler._send_command_with_mid_callback``, a gmqtt 0.8.0 internal,
  hence the pin ``gmqtt==0.8.0``) is silenced before pending ``on_message`` calls return.
* gmqtt's ``publish`` returns nothing to await; the driver passes its own persistent
  storage (a ``gmqtt.storage.PersistentStorage`` subclass) whose removal on PUBACK/PUBCOMP
  resolves the publish, and limits publishes in flight to ``max_inflight`` because gmqtt
  raises when the broker's receive maximum is exhausted.

QoS 2 with gmqtt: the PUBREC waits for the ack and PUBREL/PUBCOMP follow at once, so an
unacked QoS 2 message is redelivered like a QoS 1 one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

import gmqtt
from gmqtt.storage import PersistentStorage

from channels.errors import ConnectionFailed
from transports._mqtt_common import (
    Incoming,
    Link,
    LinkConfig,
    MqttOptions,
    MqttTransportBase,
    WireMeta,
)

__all__ = ["GmqttTransport"]

_client_log = logging.getLogger("transports.gmqtt.client")


class _ConfirmingStorage(PersistentStorage):  # type: ignore[misc]
    """gmqtt's in-flight store, which also resolves a future per PUBACK / PUBCOMP with the
    reason code the broker gave (gmqtt itself does not look at a PUBACK's reason code)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: dict[int, asyncio.Future[int]] = {}
        #: reason codes of PUBACK / PUBREC packets, noted before gmqtt removes the message
        self.reasons: dict[int, int] = {}
        self.last_mid: int | None = None

    def push_message(self, mid: int, raw_package: Any) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        reason = self.reasons.pop(mid, 0)
        fut = self.waiters.pop(mid, None)
        if fut is not None and not fut.done():
            if reason >= 0x80:
                fut.set_exception(
                    ConnectionFailed(f"the broker refused the publish (reason {reason:#x})")
                )
            else:
                fut.set_result(reason)

    def note_reason(self, packet: bytes) -> None:
        """Keep the reason code of a PUBACK / PUBREC (MQTT 5; absent means success)."""
        if len(packet) >= 3:
            (mid,) = struct.unpack("!H", packet[:2])
            self.reasons[mid] = packet[2]

    def fail_all(self, exc: BaseException) -> None:
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiters.clear()


def _mute(client: Any) -> None:
    """No acknowledgement leaves this client any more (its connection is over)."""
    with contextlib.suppress(AttributeError):
        client._package_handler._send_command_with_mid_callback = lambda *a, **k: None


def _note_reasons(client: Any, storage: _ConfirmingStorage) -> None:
    """Let ``storage`` see the reason code of every PUBACK and PUBREC before gmqtt handles
    it (gmqtt looks up its packet handlers by name on the handler object)."""
    handler = client._package_handler
    for name in ("_handle_puback_packet", "_handle_pubrec_packet"):
        original = getattr(handler, name)

        def noting(cmd: int, packet: bytes, _original: Any = original) -> None:
            storage.note_reason(packet)
            _original(cmd, packet)

        setattr(handler, name, noting)


class GmqttLink(Link):
    """One gmqtt client = one MQTT connection; a new one for every (re)connection."""

    def __init__(self, opts: MqttOptions, config: LinkConfig) -> None:
        super().__init__(opts, config)
        self.client: Any = None
        self.storage = _ConfirmingStorage()
        self._waiting: set[asyncio.Future[int]] = set()
        #: on_message calls whose message was released (acked) but that may not have
        #: returned yet: close() lets them return so their PUBACKs go out first
        self._releasing: set[asyncio.Task[Any]] = set()
        self._tasks: dict[asyncio.Future[int], asyncio.Task[Any]] = {}
        self._subacks: dict[int, asyncio.Future[Sequence[int]]] = {}
        self._unsubacks: dict[int, asyncio.Future[None]] = {}
        self._inflight = asyncio.Semaphore(min(opts.max_inflight, 65_000))
        self._connected = False
        self.session_present = False

    async def open(self) -> bool:
        opts, config = self.opts, self.config
        props: dict[str, Any] = {}
        if opts.v5:
            props["session_expiry_interval"] = config.session_expiry
            if config.receive_maximum is not None:
                props["receive_maximum"] = config.receive_maximum
        client = gmqtt.Client(
            config.client_id,
            clean_session=config.clean_start,
            optimistic_acknowledgement=False,
            persistent_storage=self.storage,
            logger=_client_log,
            **props,
        )
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_connect = self._on_connect
        if opts.username is not None:
            client.set_auth_credentials(opts.username, opts.password)
        _note_reasons(client, self.storage)
        if config.silent:
            _mute(client)  # a session that only subscribes (the group's anchor) never acks
        self.client = client
        version = gmqtt.constants.MQTTv50 if opts.v5 else gmqtt.constants.MQTTv311
        try:
            await client.connect(
                opts.host, opts.port, ssl=opts.tls or False, keepalive=opts.keepalive,
                version=version, raise_exc=True,
            )
        except BaseException:
            client._is_active = False  # no background reconnect of a refused attempt
            _mute(client)
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise
        self._connected = True
        return self.session_present

    def _on_connect(self, _client: Any, flags: Any, _rc: Any, _properties: Any) -> None:
        self.session_present = bool(flags)

    async def _on_message(
        self, _client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        if self.closed or self.lost or self.config.on_message is None:
            # This client is muted: returning sends nothing, and the session's next
            # connection gets the message again. (The anchor session has no on_message
            # consumer and is muted from the start.)
            return 0
        user = [tuple(pair) for pair in properties.get("user_property", [])]
        content = properties.get("content_type")
        waiter: asyncio.Future[int] | None = None
        if qos > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.add(waiter)
        self.config.on_message(
            self,
            Incoming(
                topic=topic,
                payload=bytes(payload),
                qos=qos,
                dup=bool(properties.get("dup")),
                user_properties=user,
                content_type=content[0] if content else None,
                handle=waiter,
            ),
        )
        if waiter is None:
            return 0
        task = asyncio.current_task()
        if task is not None:
            self._tasks[waiter] = task
        try:
            return await waiter
        finally:
            self._waiting.discard(waiter)
            self._tasks.pop(waiter, None)

    def release(self, handle: Any) -> None:
        if self.closed or self.lost:
            return
        if handle is not None and not handle.done():
            task = self._tasks.get(handle)
            if task is not None:
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
            handle.set_result(0)  # on_message returns 0: gmqtt sends the PUBACK

    def _on_disconnect(self, client: Any, packet: Any = None, exc: Any = None) -> None:
        client._is_active = False  # gmqtt would reconnect by itself; the shared layer does
        if self.closed:
            return
        reason: int | None = None
        if isinstance(packet, bytes | bytearray) and packet:
            reason = packet[0]
        self._end(ConnectionFailed("the connection dropped before the PUBACK"))
        self._report_lost(reason)

    def _end(self, exc: BaseException) -> None:
        if self.client is not None:
            _mute(self.client)
        self.storage.fail_all(exc)
        for fut in list(self._subacks.values()) + list(self._unsubacks.values()):
            if not fut.done():
                fut.set_exception(exc)
        # on_message calls still waiting return now; their acknowledgements go nowhere.
        for waiter in list(self._waiting):
            if not waiter.done():
                waiter.set_result(0)

    def _on_subscribe(self, _client: Any, mid: int, qos: Sequence[int], _props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(qos)

    def _on_unsubscribe(self, _client: Any, mid: int, _codes: Any) -> None:
        fut = self._unsubacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _check_live(self) -> None:
        if self.client is None or self.closed or self.lost or not self._connected:
            raise ConnectionFailed("not connected")

    async def subscribe(self, filters: Sequence[str], qos: int) -> None:
        for topic_filter in filters:
            self._check_live()
            fut: asyncio.Future[Sequence[int]] = asyncio.get_running_loop().create_future()
            mid = self.client.subscribe(topic_filter, qos=qos)
            self._subacks[mid] = fut
            codes = await fut
            for code in codes:
                if code >= 0x80:
                    raise ConnectionFailed(
                        f"the broker refused the subscription {topic_filter!r} (reason {code:#x})"
                    )

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        self._check_live()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mid = self.client.unsubscribe(list(filters))
        self._unsubacks[mid] = fut
        await fut

    async def start_publish(
        self, topic: str, meta: WireMeta, qos: int
    ) -> asyncio.Future[int] | None:
        self._check_live()
        kwargs: dict[str, Any] = {}
        if self.opts.v5:
            if meta.user_properties:
                kwargs["user_property"] = meta.user_properties
            if meta.content_type is not None:
                kwargs["content_type"] = meta.content_type
        if qos == 0:
            self.client.publish(topic, meta.payload, qos=0, **kwargs)
            return None
        await self._inflight.acquire()
        try:
            self._check_live()
            self.storage.last_mid = None
            self.client.publish(topic, meta.payload, qos=qos, **kwargs)
            mid = self.storage.last_mid
            if mid is None:
                raise ConnectionFailed("gmqtt did not store the publish")
        except BaseException:
            self._inflight.release()
            raise
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda _: self._inflight.release())
        self.storage.waiters[mid] = fut
        return fut

    async def close(self, keep_session: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        client = self.client
        if client is None:
            return
        if self._releasing:
            # gmqtt sends a PUBACK from the done-callback of its on_message task; those
            # callbacks run before asyncio.wait's own, so after this they are written.
            with contextlib.suppress(Exception):
                await asyncio.wait(set(self._releasing), timeout=self.opts.connect_timeout)
        _mute(client)
        try:
            if self._connected and not self.lost:
                properties: dict[str, Any] = {}
                if self.opts.v5 and not keep_session:
                    properties["session_expiry_interval"] = 0
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        client.disconnect(**properties), self.opts.connect_timeout
                    )
        finally:
            client._is_active = False
            self._end(ConnectionFailed("the connection closed before the PUBACK"))


class GmqttTransport(MqttTransportBase):
    """MQTT 5 / 3.1.1 on gmqtt; see the module docstring and ``transports.mqtt``."""

    schemes = ("gmqtt", "gmqtts")
    tls_schemes: ClassVar[tuple[str, ...]] = ("gmqtts",)
    error_table: ClassVar[Sequence[tuple[Any, Any]]] = (
        ((gmqtt.MQTTConnectError, OSError, OverflowError), ConnectionFailed),
    )

    def _new_link(self, config: LinkConfig) -> Link:
        return GmqttLink(self.opts, config)

    @staticmethod
    def connack_code(exc: BaseException) -> int | None:
        code = getattr(exc, "_code", None) if isinstance(exc, gmqtt.MQTTConnectError) else None
        return code if isinstance(code, int) else None

    def native(self) -> Any:
        """The publisher's ``gmqtt.Client`` (None while disconnected)."""
        link = self._publisher
        return link.client if isinstance(link, GmqttLink) else None

    def client_version(self) -> str:
        return f"gmqtt {_dist_version('gmqtt')}"
