"""The RabbitMQ driver (AMQP 0-9-1, on aio-pika).

URL: ``amqp://user:password@host:5672/vhost`` or ``amqps://...`` (TLS). The path is the
virtual host (``/`` or empty: the default vhost ``/``; ``/%2F`` also means ``/``).

Mapping
    topic      a durable exchange named after the topic (type ``topic`` by default)
    group      a durable queue ``<topic>.<group>`` bound to the exchange with ``#``:
               every group gets every message, the members of a group compete for it
    key        header ``x-channels-key`` (a byte array, exact bytes); it is also used as
               the routing key when it is UTF-8 of at most 255 bytes, for foreign readers
    headers    AMQP header table, our values sent as byte arrays (type ``x``)
    None       an empty body with header ``x-channels-null``; stripped on receive
    ack/nack   ``basic.ack`` / ``basic.nack(requeue=True)`` / ``basic.reject`` (no requeue)
    declare    internal topic: exchange + group queue + binding; source topic: passive
               exchange check (``TopicNotFound`` when missing), then group queue + binding
    send       persistent delivery mode, publisher confirms: ``publish`` returns once the
               broker confirmed (for durable queues: written to disk)
    backpressure  ``basic.qos(prefetch_count=prefetch)`` per subscription
    ephemeral  a group of ``SubscriptionSpec.ephemeral``: a queue ``<topic>.<group>.ephemeral``
               (classic, durable, ``auto_delete``, ``x-expires``), declared and bound by
               each member just before it consumes, never by ``declare``; see below

Headers from foreign producers: every AMQP field type arrives as bytes, by one rule:
byte arrays as they are; strings UTF-8 (a long string that is not UTF-8: its raw bytes);
integers in decimal (``b"42"``); booleans ``b"true"``/``b"false"``; floats and decimals
as Python ``repr``/``str`` text (``b"1.5"``); timestamps as whole seconds since the epoch
(``b"1767225600"``); void as ``b""``; nested tables and arrays as compact JSON with the same
rule inside (byte arrays as text, invalid UTF-8 replaced by U+FFFD). Header names starting
with ``x-channels-`` are reserved for the driver. A foreign message has key None unless it
carries ``x-channels-key``; its routing key is not used as a key.

URL options
    prefetch            qos window for every subscription, replacing the stream's own
                        (default: the stream's prefetch, 100 unless set)
    confirm_timeout     seconds to wait for a batch's publisher confirms (default 30)
    connection_timeout  seconds for connecting, and for waiting on a reconnect before an
                        operation fails with ``ConnectionFailed`` (default 10)
    heartbeat           AMQP heartbeat in seconds (default 30; 0 disables)
    reconnect_max_delay longest pause between reconnect attempts, seconds (default 5)
    exchange_type       ``topic`` (default) or ``fanout``: the type of exchanges we create
    mandatory           ``true`` (default): a message no queue is bound for is returned by
                        the broker and ``publish`` raises :class:`Unroutable`; ``false``:
                        such messages are dropped by the broker silently, as AMQP does
                        (not raised for topics this transport had ephemeral members on)
    queue_type          ``classic`` (default) or ``quorum``: the type of group queues
    max_message_size    bytes of key + value + headers accepted (default 16 MiB; RabbitMQ's
                        own default limit is 128 MiB)
    ssl_cafile, ssl_certfile, ssl_keyfile  TLS files (amqps)
    verify              ``true`` (default): check the server certificate and host name

Topic settings: ``retention`` (seconds) becomes the group queue's ``x-message-ttl``;
``replicas`` becomes ``x-quorum-initial-group-size`` for quorum queues; ``config`` keys
starting with ``x-`` are queue arguments (numeric strings sent as integers, ``true`` /
``false`` as booleans) and ``binding_key`` replaces ``#`` (useful for a foreign direct
exchange). ``partitions`` is ignored (RabbitMQ queues have none); ``compacting=True``
raises ``CapabilityNotSupported``. A group queue declared again with other arguments fails
with ``ConfigurationError`` (RabbitMQ's PRECONDITION_FAILED).

Capabilities: persistent, consumer groups, fan-out groups, ack, redelivery on nack, native
headers and keys, topic check. Not supported, and why:

* ``per_key_ordering``: the members of a group share one queue, and RabbitMQ hands its
  messages round-robin to them, so two messages of one key can be handled at once by two
  members. (With a single member per group, order is kept except after a requeue.)
* ``patterns``: topic exchange wildcards are not Python regular expressions, and RabbitMQ
  cannot list exchanges without the management plugin.
* ``replay_from_start``: a queue keeps only what arrived after it was declared.
* ``explicit_partitions``: there are no partitions.

Reconnects are the driver's own (aio-pika's robust connection is not used, see
aio-pika#594): when the connection drops, one task reconnects with bounded backoff;
every subscription then opens a new channel, declares its queues again and consumes (also
when the broker cancels its consumer, e.g. because its queue was deleted).
Messages received on the lost channel and not yet acked are redelivered by the broker;
acking them afterwards does nothing. Publishing waits up to ``connection_timeout`` for
the connection and fails with ``ConnectionFailed`` (retryable) after that.

Ephemeral groups (``SubscriptionSpec.ephemeral``, e.g. ``channels tail``): the group's queue
is ``<topic>.<group>.ephemeral``, so it never clashes with the durable queue of a lasting
group of the same name (both can exist side by side, each getting every message). It is
declared ``auto_delete``: RabbitMQ deletes it, with what it holds, when its last consumer
goes -- a closed stream, a closed channel or connection, a process that died (the socket
closes, or the heartbeat times out). It is durable, not transient, because RabbitMQ 4
deprecates (4.3 refuses) non-exclusive transient queues; the ``x-expires`` argument
(:data:`EPHEMERAL_EXPIRES_MS`, 30 s without a consumer; a topic's ``config`` ``x-expires``
replaces it) removes it even when auto-delete never fires: a member that died between
declaring and consuming, or a queue recovered by a broker restart after its members were
gone. It is always a classic queue (quorum queues cannot auto-delete). While the group has
no member no queue is bound, so a message sent then is kept for nobody (with the default
``mandatory=true`` its send fails with :class:`Unroutable`, as for any topic without a
group). A member that loses its channel or connection finds the queue gone and
declares it again: what was sent in between is lost, as for any new member.

Timestamps travel as AMQP timestamps, which have whole-second resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp import constants as pamqp_constants

from channels.capabilities import Capabilities
from channels.errors import (
    AuthenticationFailed,
    CapabilityNotSupported,
    ChannelsError,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
    Unroutable,
)
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport, translate_errors

__all__ = ["EPHEMERAL_EXPIRES_MS", "EPHEMERAL_SUFFIX", "AmqpTransport", "Unroutable", "header_bytes"]

log = logging.getLogger("channels.transports.amqp")

T = TypeVar("T")

_OPTIONS = (
    "prefetch",
    "confirm_timeout",
    "connection_timeout",
    "heartbeat",
    "reconnect_max_delay",
    "exchange_type",
    "mandatory",
    "queue_type",
    "max_message_size",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "verify",
)
_EXCHANGE_TYPES = ("topic", "fanout")
_QUEUE_TYPES = ("classic", "quorum")

RESERVED_PREFIX = "x-channels-"
KEY_HEADER = "x-channels-key"
NULL_HEADER = "x-channels-null"

#: AMQP short strings (exchange, queue, routing key) hold at most 255 bytes
_SHORTSTR = 255
#: pamqp refuses exchange names longer than this (characters) before they are sent
_EXCHANGE_MAX = 127
#: field names in a header table hold at most 128 bytes (pamqp would truncate them)
_FIELD_NAME = 128
#: the content header (with every header) must fit in one frame; RabbitMQ's frame_max is
#: 128 KiB by default, and a bigger header frame closes the connection
_MAX_HEADER_BYTES = 120 * 1024
_ACK_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 5.0

#: the queue of an ephemeral group is ``<topic>.<group>`` + this
EPHEMERAL_SUFFIX = ".ephemeral"
#: ``x-expires`` of an ephemeral group's queue: deleted after this long without a consumer
#: (the safety net under ``auto_delete``)
EPHEMERAL_EXPIRES_MS = 30_000
#: queue arguments a quorum queue needs; an ephemeral (classic, auto-delete) queue drops them
_QUORUM_ARGUMENTS = ("x-queue-type", "x-quorum-initial-group-size")
#: tries of declare + consume of an ephemeral queue that another member's leaving deleted
#: in between (the consume fails with NOT_FOUND)
_EPHEMERAL_TRIES = 5


def _check_name_characters(what: str, name: str) -> None:
    """Refuse at the call what pamqp (by its own DOMAIN_REGEX: a topic is an exchange name,
    a group is part of a queue name) would refuse later with a bare ValueError."""
    allowed = pamqp_constants.DOMAIN_REGEX["exchange-name" if what == "topic" else "queue-name"]
    if not allowed.fullmatch(name):
        bad = sorted({c for c in name if not allowed.fullmatch(c)})
        raise ConfigurationError(
            f"{what} name {name[:60]!r} has characters the AMQP client (pamqp) refuses in "
            f"exchange and queue names: {''.join(bad)!r}; allowed are ASCII letters, digits, "
            "space and - _ . : @ # , / +"
        )


_ERRORS: list[tuple[type[BaseException] | tuple[type[BaseException], ...], type[ChannelsError]]] = [
    ((amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError), AuthenticationFailed),
    (
        (
            amqp_errors.IncompatibleProtocolError,
            amqp_errors.ChannelAccessRefused,
            amqp_errors.ChannelPreconditionFailed,
            amqp_errors.ChannelLockedResource,
            amqp_errors.ConnectionNotAllowed,
        ),
        ConfigurationError,
    ),
    (TimeoutError, Timeout),
    (
        (
            amqp_errors.AMQPError,
            amqp_errors.ChannelInvalidStateError,
            ConnectionError,
            OSError,
        ),
        ConnectionFailed,
    ),
]


def header_bytes(value: Any) -> bytes:
    """One AMQP header value as bytes, by the rule in the module docstring."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float):
        return repr(value).encode()
    if isinstance(value, dict | list | tuple):
        text = json.dumps(_json_value(value), separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")
    return str(_json_value(value)).encode("utf-8")


def _json_value(value: Any) -> Any:
    """A header value as JSON data (nested tables and arrays)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _queue_argument(name: str, raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(raw)
    except ValueError:
        return raw


@dataclass(eq=False)
class _Delivery:
    """The ack handle of a received message: the channel it came on and its tag."""

    channel: AbstractChannel
    tag: int
    settled: bool = False


@dataclass(frozen=True)
class _GroupQueue:
    topic: TopicSpec
    group: str
    queue: str
    arguments: dict[str, Any]
    binding_key: str
    #: an ephemeral group's queue: auto-delete with x-expires, declared by its members
    ephemeral: bool = False


class AmqpTransport(Transport):
    """RabbitMQ through aio-pika; see the module docstring for the mapping and options."""

    schemes = ("amqp", "amqps")

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_options(_OPTIONS)
        self.tls = url.scheme == "amqps"
        if len(url.hosts) > 1:
            raise ConfigurationError("the amqp driver connects to one host", broker=url)
        self.prefetch: int | None = url.option("prefetch", 0) or None
        if self.prefetch is not None and self.prefetch < 1:
            raise ConfigurationError("prefetch must be >= 1", broker=url)
        self.confirm_timeout = url.option("confirm_timeout", 30.0)
        self.connection_timeout = url.option("connection_timeout", 10.0)
        self.heartbeat = url.option("heartbeat", 30)
        self.reconnect_max_delay = url.option("reconnect_max_delay", 5.0)
        self.exchange_type = url.option("exchange_type", "topic")
        self.mandatory = url.option("mandatory", True)
        self.queue_type = url.option("queue_type", "classic")
        self.verify = url.option("verify", True)
        self.ssl_cafile: str | None = url.option("ssl_cafile", "") or None
        self.ssl_certfile: str | None = url.option("ssl_certfile", "") or None
        self.ssl_keyfile: str | None = url.option("ssl_keyfile", "") or None
        if self.exchange_type not in _EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange_type must be one of {', '.join(_EXCHANGE_TYPES)}, "
                f"not {self.exchange_type!r}",
                broker=url,
            )
        if self.queue_type not in _QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type must be one of {', '.join(_QUEUE_TYPES)}, not {self.queue_type!r}",
                broker=url,
            )
        for name in ("confirm_timeout", "connection_timeout", "reconnect_max_delay"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be > 0", broker=url)
        if self.heartbeat < 0:
            raise ConfigurationError("heartbeat must be >= 0", broker=url)
        if not self.tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ConfigurationError("ssl_* options need an amqps:// URL", broker=url)
        path = unquote(url.path[1:]) if url.path.startswith("/") else unquote(url.path)
        self.vhost = path or "/"
        self._caps = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout_groups=True,
            per_key_ordering=False,
            ack=True,
            redelivery_on_nack=True,
            replay_from_start=False,
            native_headers=True,
            native_keys=True,
            patterns=False,
            explicit_partitions=False,
            topic_check=True,
            max_message_size=url.option("max_message_size", 16 * 1024 * 1024),
        )
        self._conn: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._connected_once = False
        self._reconnector: asyncio.Task[None] | None = None
        self._pub: AbstractChannel | None = None
        self._pub_lock = asyncio.Lock()
        self._exchanges: set[str] = set()
        #: topics this transport had ephemeral members on: returned messages are no error
        self._subs: set[_Consumer] = set()
        #: how many times the connection was opened (tests read it)
        self.connections_opened = 0

    # -- errors ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        with translate_errors(_ERRORS, self.url, what):
            yield

    # -- capabilities and names --------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def validate_topic_name(self, name: str) -> None:
        if len(name) > _EXCHANGE_MAX:
            raise ConfigurationError(
                f"topic name {name[:40]!r}... is longer than {_EXCHANGE_MAX} characters "
                "(the limit the AMQP client, pamqp, puts on exchange names)"
            )
        _check_name_characters("topic", name)
        if name.startswith("amq."):
            raise ConfigurationError(
                f"topic name {name!r}: names starting with 'amq.' are reserved by RabbitMQ"
            )

    def _group_queue(self, topic: TopicSpec, group: str, ephemeral: bool = False) -> _GroupQueue:
        self.validate_topic_name(topic.name)
        if not group:
            raise ConfigurationError("a group name must not be empty", broker=self.url)
        queue = f"{topic.name}.{group}{EPHEMERAL_SUFFIX if ephemeral else ''}"
        if len(queue.encode("utf-8")) > _SHORTSTR:
            form = f"<topic>.<group>{EPHEMERAL_SUFFIX}" if ephemeral else "<topic>.<group>"
            raise ConfigurationError(
                f"queue name {queue[:40]!r}... ({form}) is longer than {_SHORTSTR} bytes",
                broker=self.url,
            )
        _check_name_characters("group", group)
        if topic.compacting:
            raise CapabilityNotSupported(
                "compacting", "RabbitMQ queues are not compacted",
                driver=type(self).__name__, broker=self.url,
            )
        arguments: dict[str, Any] = {}
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            if topic.replicas is not None:
                arguments["x-quorum-initial-group-size"] = topic.replicas
        if topic.retention is not None:
            arguments["x-message-ttl"] = int(topic.retention * 1000)
        binding_key = "#"
        for name, raw in topic.config.items():
            if name == "binding_key":
                binding_key = raw
            elif name.startswith("x-"):
                arguments[name] = _queue_argument(name, raw)
            else:
                raise ConfigurationError(
                    f"unknown topic config {name!r} for RabbitMQ: use 'x-...' queue arguments "
                    "or 'binding_key'",
                    broker=self.url,
                )
        if ephemeral:
            # classic (quorum queues cannot auto-delete), and gone after a while unused
            arguments = {"x-expires": EPHEMERAL_EXPIRES_MS} | {
                k: v for k, v in arguments.items() if k not in _QUORUM_ARGUMENTS or k in topic.config
            }
        return _GroupQueue(topic, group, queue, arguments, binding_key, ephemeral)

    # -- connection --------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_cafile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return context

    async def _open_connection(self) -> AbstractConnection:
        host, port = self.url.host_list(5671 if self.tls else 5672)[0] if self.url.hosts else (
            "localhost", 5671 if self.tls else 5672,
        )
        with self._errors("connect"):
            try:
                context = self._ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"TLS setup failed: {exc}", broker=self.url) from exc
            conn = await aio_pika.connect(
                host=host,
                port=port,
                login=self.url.username or "guest",
                password=self.url.password or "guest",
                virtualhost=self.vhost,
                ssl=self.tls,
                ssl_context=context,
                timeout=self.connection_timeout,
                heartbeat=self.heartbeat,
                client_properties={"connection_name": "anychannel"},
            )
        conn.close_callbacks.add(self._on_connection_closed)
        self.connections_opened += 1
        return conn

    def _on_connection_closed(self, sender: Any, exc: BaseException | None = None) -> None:
        if sender is not self._conn:
            return
        self._ready.clear()
        self._pub = None
        if self._closing:
            return
        log.warning("connection to %s lost (%s); reconnecting", self.url.redacted(), exc)
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(
                self._reconnect(), name="channels-amqp-reconnect"
            )

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                conn = await self._open_connection()
            except Exception as exc:  # whatever it was, keep trying: the loop must not die
                log.warning(
                    "reconnect to %s failed: %s; next try in %.1fs", self.url.redacted(), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
                continue
            if self._closing:
                with contextlib.suppress(Exception):
                    await _bounded(conn.close(), _CLOSE_TIMEOUT)
                return
            self._conn = conn
            self._ready.set()
            log.info("reconnected to %s", self.url.redacted())
            return

    async def _connection(self) -> AbstractConnection:
        """The open connection, waiting up to ``connection_timeout`` for a reconnect."""
        if self._closing or not self._connected_once:
            raise ClosedError("amqp transport is not connected", broker=self.url)
        if not self._ready.is_set():
            try:
                await _bounded(self._ready.wait(), self.connection_timeout)
            except TimeoutError:
                raise ConnectionFailed(
                    f"no connection to the broker within {self.connection_timeout}s (reconnecting)",
                    broker=self.url,
                ) from None
        if self._closing:
            raise ClosedError("amqp transport is closed", broker=self.url)
        assert self._conn is not None
        return self._conn

    async def connect(self) -> None:
        if self._connected_once and not self._closing:
            return
        self._closing = False
        self._conn = await self._open_connection()
        self._connected_once = True
        self._ready.set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._ready.set()  # wake waiters; they see _closing
        # at once: each close is bounded, and a dead broker must not add them up
        await asyncio.gather(*(sub.close() for sub in list(self._subs)), return_exceptions=True)
        self._subs.clear()
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(BaseException):
                await self._reconnector
        conn, self._conn = self._conn, None
        self._pub = None
        if conn is not None:
            try:
                await _bounded(conn.close(), _CLOSE_TIMEOUT)
            except Exception as exc:  # a dead connection: nothing left to release
                log.debug("closing the connection: %s", exc)

    # -- declaring ---------------------------------------------------------------------

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        self.validate_topic_name(topic.name)
        queue = self._group_queue(topic, group) if group is not None else None
        conn = await self._connection()
        await self._declare(conn, topic, queue)

    async def _declare(
        self, conn: AbstractConnection, topic: TopicSpec, queue: _GroupQueue | None
    ) -> None:
        with self._errors(f"declare {topic.name!r}"):
            channel = await conn.channel(publisher_confirms=False)
            try:
                if topic.internal:
                    await channel.declare_exchange(topic.name, self.exchange_type, durable=True)
                else:
                    try:
                        await channel.declare_exchange(topic.name, passive=True)
                    except amqp_errors.ChannelNotFoundEntity as exc:
                        raise TopicNotFound(topic.name, broker=self.url) from exc
                self._exchanges.add(topic.name)
                if queue is not None:
                    declared = await channel.declare_queue(
                        queue.queue, durable=True, arguments=queue.arguments or None
                    )
                    await declared.bind(topic.name, routing_key=queue.binding_key)
            finally:
                if not channel.is_closed:
                    with contextlib.suppress(Exception):
                        await _bounded(channel.close(), _CLOSE_TIMEOUT)

    async def _ensure_exchange(self, conn: AbstractConnection, name: str) -> None:
        """Publishing to a missing exchange closes the channel: check new names first."""
        if name in self._exchanges:
            return
        await self._declare(conn, TopicSpec(name, internal=False), None)

    # -- publishing --------------------------------------------------------------------

    async def _publish_channel(self, conn: AbstractConnection) -> aiormq.abc.AbstractChannel:
        async with self._pub_lock:
            if self._pub is None or self._pub.is_closed:
                with self._errors("open a channel"):
                    self._pub = await conn.channel(publisher_confirms=True, on_return_raises=False)
            with self._errors("open a channel"):
                return await self._pub.get_underlay_channel()

    def _outgoing(self, message: Message) -> tuple[bytes, str, spec.Basic.Properties, str, float]:
        headers: dict[str, Any] = {}
        size = 0
        for name, value in message.headers.items():
            if name.startswith(RESERVED_PREFIX):
                raise EncodeError(f"header names starting with {RESERVED_PREFIX!r} are reserved")
            raw_name = name.encode("utf-8")
            if len(raw_name) > _FIELD_NAME:
                raise EncodeError(
                    f"header name {name[:40]!r}... is longer than {_FIELD_NAME} bytes"
                )
            headers[name] = bytearray(value)
            size += len(raw_name) + len(value) + 6
        routing_key = ""
        if message.key is not None:
            headers[KEY_HEADER] = bytearray(message.key)
            size += len(message.key) + 20
            if len(message.key) <= _SHORTSTR:
                with contextlib.suppress(UnicodeDecodeError):
                    routing_key = message.key.decode("utf-8")
        if message.value is None:
            headers[NULL_HEADER] = True
        if size > _MAX_HEADER_BYTES:
            raise MessageTooLarge(size, _MAX_HEADER_BYTES, topic=message.topic, broker=self.url)
        timestamp = message.timestamp if message.timestamp is not None else time.time()
        message_id = uuid.uuid4().hex
        properties = spec.Basic.Properties(
            delivery_mode=2,
            headers=headers or None,
            message_id=message_id,
            timestamp=dt.datetime.fromtimestamp(int(timestamp), dt.UTC),
        )
        return message.value or b"", routing_key, properties, message_id, timestamp

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        if not messages:
            return []
        outgoing = [self._outgoing(m) for m in messages]
        conn = await self._connection()
        for name in dict.fromkeys(m.topic for m in messages):
            await self._ensure_exchange(conn, name)
        channel = await self._publish_channel(conn)
        with self._errors("publish"):
            try:
                async with asyncio.timeout(self.confirm_timeout):
                    results = await asyncio.gather(
                        *(
                            channel.basic_publish(
                                body,
                                exchange=m.topic,
                                routing_key=routing_key,
                                properties=properties,
                                mandatory=self.mandatory,
                            )
                            for m, (body, routing_key, properties, _, _) in zip(
                                messages, outgoing, strict=True
                            )
                        ),
                        return_exceptions=True,
                    )
            except TimeoutError:
                raise Timeout(
                    f"the broker did not confirm {len(messages)} message(s) within "
                    f"{self.confirm_timeout}s",
                    broker=self.url,
                ) from None
            returned = 0
            for message, result in zip(messages, results, strict=True):
                if isinstance(result, amqp_errors.ChannelNotFoundEntity):
                    self._exchanges.discard(message.topic)
                    raise TopicNotFound(message.topic, broker=self.url) from result
                if isinstance(result, amqp_errors.DeliveryError):
                    raise ConnectionFailed(
                        f"the broker refused a message on {message.topic!r} (basic.nack, e.g. a "
                        "full queue with x-overflow=reject-publish)",
                        broker=self.url,
                    ) from result
                if isinstance(result, BaseException):
                    raise result
                if isinstance(result, DeliveredMessage):
                    returned += 1
            if returned:
                raise Unroutable(
                    f"{returned} of {len(messages)} message(s) reached no queue (no group is "
                    f"declared on the topic; use ?mandatory=false to allow this)",
                    returned,
                    broker=self.url,
                )
        return [
            RecordMetadata(m.topic, None, message_id, timestamp)
            for m, (_, _, _, message_id, timestamp) in zip(messages, outgoing, strict=True)
        ]

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(self, spec_: SubscriptionSpec) -> Subscription:
        if spec_.pattern is not None:
            raise CapabilityNotSupported(
                "pattern subscriptions", "RabbitMQ cannot list exchanges over AMQP",
                driver=type(self).__name__, broker=self.url,
            )
        if spec_.from_beginning:
            raise CapabilityNotSupported(
                "from_beginning", "a queue keeps only what arrived after it was declared",
                driver=type(self).__name__, broker=self.url,
            )
        if not spec_.topics:
            raise ConfigurationError("a subscription needs at least one topic", broker=self.url)
        queues = [self._group_queue(topic, spec_.group, spec_.ephemeral) for topic in spec_.topics]
        consumer = _Consumer(self, queues, self.prefetch or max(1, spec_.prefetch))
        await consumer.start()
        self._subs.add(consumer)
        return consumer

    def native(self) -> Any:
        if self._conn is None:
            raise ClosedError("amqp transport is not connected", broker=self.url)
        return self._conn

    def client_version(self) -> str:
        return f"aio-pika {aio_pika.__version__}"


class _Consumer(Subscription):
    """One group member: a channel of its own, consuming every group queue of the spec.

    Deliveries are put on an asyncio queue by the consumer callback, so ``receive`` can be
    cancelled at any point without losing one. When the channel or the connection dies,
    a supervisor task opens a new channel and consumes again; what was buffered from the
    dead channel is dropped (the broker redelivers it).
    """

    def __init__(self, transport: AmqpTransport, queues: list[_GroupQueue], prefetch: int) -> None:
        self.transport = transport
        self.queues = queues
        self.prefetch = prefetch
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._cancels: set[asyncio.Task[None]] = set()
        #: how many times the member consumed again after losing its channel
        self.restarts = 0

    async def start(self) -> None:
        await self._setup()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="channels-amqp-consumer"
        )

    async def _setup(self) -> None:
        for attempt in range(1, _EPHEMERAL_TRIES + 1):
            try:
                await self._setup_once()
                return
            except amqp_errors.ChannelNotFoundEntity as exc:
                # an ephemeral queue we had just declared was deleted before we consumed
                # (its last member left in between): declare it again
                if attempt == _EPHEMERAL_TRIES:
                    raise ConnectionFailed(
                        f"consume: the queue vanished {attempt} times: {exc}", broker=self.transport.url
                    ) from exc
                log.debug("an ephemeral queue vanished before consuming (%s); again", exc)

    async def _setup_once(self) -> None:
        transport = self.transport
        conn = await transport._connection()
        for queue in self.queues:
            # an ephemeral queue is declared on the consuming channel, just before
            # basic.consume: one that exists without a consumer is soon deleted
            await transport._declare(conn, queue.topic, None if queue.ephemeral else queue)
        vanished: amqp_errors.ChannelNotFoundEntity | None = None
        with transport._errors("consume"):
            channel = await conn.channel(publisher_confirms=False)
            # Deliveries can arrive before the last basic.consume returns: the channel is
            # current from now on, so the callback keeps them.
            self._channel = channel
            try:
                await channel.set_qos(prefetch_count=self.prefetch)
                underlay = await channel.get_underlay_channel()
                underlay.on_consumer_cancel_callbacks.add(self._cancelled_by_broker(channel))
                for queue in self.queues:
                    if queue.ephemeral:
                        declared = await channel.declare_queue(
                            queue.queue, durable=True, auto_delete=True, arguments=queue.arguments
                        )
                        await declared.bind(queue.topic.name, routing_key=queue.binding_key)
                    try:
                        await underlay.basic_consume(
                            queue.queue, self._callback(channel, queue.topic.name), no_ack=False
                        )
                    except amqp_errors.ChannelNotFoundEntity as exc:
                        if not queue.ephemeral:
                            raise
                        vanished = exc
                        break
            except BaseException:
                self._channel = None
                with contextlib.suppress(Exception):
                    await _bounded(channel.close(), _CLOSE_TIMEOUT)
                raise
            if vanished is not None:
                self._channel = None
                with contextlib.suppress(Exception):
                    await _bounded(channel.close(), _CLOSE_TIMEOUT)
        if vanished is not None:
            raise vanished  # untranslated: _setup tries again
        if self._closed:
            self._channel = None
            with contextlib.suppress(Exception):
                await _bounded(channel.close(), _CLOSE_TIMEOUT)

    def _callback(self, channel: AbstractChannel, topic: str) -> Any:
        async def on_message(delivered: DeliveredMessage) -> None:
            if self._closed or channel is not self._channel:
                return  # not acked: the broker redelivers it once the channel is gone
            self._inbox.put_nowait(_incoming(topic, delivered, channel))

        return on_message

    def _cancelled_by_broker(self, channel: AbstractChannel) -> Any:
        """The broker cancelled a consumer (its queue was deleted, a quorum queue moved):
        close the channel, so the supervisor declares the queue again and consumes."""

        def on_cancel(frame: Any) -> None:
            if self._closed or channel is not self._channel:
                return
            log.warning("the broker cancelled a consumer on %s; consuming again", self.queues[0].queue)
            task = asyncio.get_running_loop().create_task(_bounded(channel.close(), _CLOSE_TIMEOUT))
            self._cancels.add(task)
            task.add_done_callback(self._cancels.discard)

        return on_cancel

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._closed:
            channel = self._channel
            if channel is not None:
                await channel.closed()
                if self._closed:
                    return
                log.warning("consumer channel on %s lost; consuming again", self.queues[0].queue)
                self._channel = None
            try:
                await self._setup()
            except ChannelsError as exc:
                if not exc.retryable and not isinstance(exc, ClosedError):
                    self._fail(exc)
                    return
                if self._closed or self.transport._closing:
                    return
                log.warning("consuming again failed: %s; next try in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.transport.reconnect_max_delay)
                continue
            except Exception as exc:
                log.warning("consuming again failed: %r; next try in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.transport.reconnect_max_delay)
                continue
            delay = 0.1
            self.restarts += 1

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._inbox.put_nowait(None)

    def _live(self, message: Message) -> bool:
        token = message.token
        return (
            isinstance(token, _Delivery)
            and token.channel is self._channel
            and not token.channel.is_closed
        )

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            if self._closed:
                raise ClosedError("subscription is closed", broker=self.transport.url)
            if self._error is not None:
                raise self._error
            first = await self._inbox.get()
            batch: list[Message] = []
            item: Message | None = first
            while True:
                if item is None:
                    self._inbox.put_nowait(None)  # keep waking other receivers
                    break
                if self._live(item):
                    batch.append(item)
                if len(batch) >= max_messages or self._inbox.empty():
                    break
                item = self._inbox.get_nowait()
            if batch:
                return batch

    async def _settle(self, messages: Sequence[Message], what: str, requeue: bool) -> None:
        for message in messages:
            token = message.token
            if not isinstance(token, _Delivery) or token.settled:
                continue
            token.settled = True
            channel = token.channel
            if channel is not self._channel or channel.is_closed:
                log.debug("%s of a delivery from a lost channel dropped (it is redelivered)", what)
                continue
            try:
                underlay = await channel.get_underlay_channel()
                # The frame is queued for the connection's writer (wait=False: no round trip
                # per message; a full write queue still makes us wait, bounded). Frames of a
                # channel go out in order, so a later channel close never overtakes an ack.
                # asyncio.timeout, not wait_for: a cancellation of the caller is never lost.
                async with asyncio.timeout(_ACK_TIMEOUT):
                    if what == "ack":
                        await underlay.basic_ack(token.tag, wait=False)
                    elif requeue:
                        await underlay.basic_nack(token.tag, requeue=True, wait=False)
                    else:
                        await underlay.basic_reject(token.tag, requeue=False, wait=False)
            except (
                amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, OSError, TimeoutError
            ) as exc:
                log.debug("%s dropped, channel is gone (%r); the broker redelivers", what, exc)

    async def ack(self, messages: Sequence[Message]) -> None:
        await self._settle(messages, "ack", False)

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        await self._settle(messages, "nack", requeue)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            try:
                await _bounded(channel.close(), _CLOSE_TIMEOUT)
            except Exception as exc:
                log.debug("closing a consumer channel: %r", exc)
        self.transport._subs.discard(self)


async def _bounded(aw: Awaitable[T], seconds: float) -> T:
    """``await aw`` for at most ``seconds`` (TimeoutError after that).

    ``asyncio.timeout`` rather than ``wait_for``: in Python 3.11 ``wait_for`` can swallow
    the caller's cancellation when the inner task has just finished.
    """
    async with asyncio.timeout(seconds):
        return await aw


def _incoming(topic: str, delivered: DeliveredMessage, channel: AbstractChannel) -> Message:
    properties = delivered.header.properties
    raw_headers: Mapping[str, Any] = properties.headers or {}
    headers: dict[str, bytes] = {}
    key: bytes | None = None
    null = False
    for name, value in raw_headers.items():
        if name == KEY_HEADER:
            key = header_bytes(value)
        elif name == NULL_HEADER:
            null = True
        elif name.startswith(RESERVED_PREFIX):
            continue
        else:
            headers[name] = header_bytes(value)
    stamp = properties.timestamp
    timestamp: float | None = None
    if isinstance(stamp, dt.datetime):
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        timestamp = stamp.timestamp()
    delivery = delivered.delivery
    tag = getattr(delivery, "delivery_tag", 0) or 0
    return Message(
        topic,
        None if null else delivered.body,
        key,
        headers,
        None,
        properties.message_id,
        timestamp,
        _Delivery(channel, tag),
        bool(getattr(delivery, "redelivered", False)),
    )

