"""Topic: a named channel backed by a broker through the app's transport."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from channels import codecs, envelope
from channels.channel import Channel
from channels.errors import (
    CapabilityNotSupported,
    ClosedError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    Timeout,
)
from channels.events import Event, FutureMessage, Message, PendingMessage, RecordMetadata
from transports.base import Subscription, SubscriptionSpec, TopicSpec, check_topic_name

if TYPE_CHECKING:
    from channels.app import App

__all__ = ["EventStream", "Topic"]

log = logging.getLogger("channels.topic")

K = TypeVar("K")
V = TypeVar("V")

AckPolicy = Literal["auto", "manual"]
DecodePolicy = Literal["raise", "skip", "dead_letter"]
_ACK_POLICIES = ("auto", "manual")
_DECODE_POLICIES = ("raise", "skip", "dead_letter")


class Topic(Channel[K, V]):
    """A named stream on the broker.

    ``internal=True`` topics are created and configured by us at declare time; source
    topics are never created or altered (a missing one is ``TopicNotFound``). Iterating a
    topic joins ``group`` (default: the app id): every group gets every message, and inside
    a group each message goes to one member.
    """

    def __init__(
        self,
        app: App,
        *names: str,
        pattern: str | None = None,
        key_type: Any = None,
        value_type: Any = None,
        key_serializer: codecs.CodecArg = None,
        value_serializer: codecs.CodecArg = None,
        partitions: int | None = None,
        replicas: int | None = None,
        retention: float | None = None,
        compacting: bool | None = None,
        config: Mapping[str, str] | None = None,
        internal: bool = False,
        group: str | None = None,
        maxsize: int | None = None,
        acks: AckPolicy = "auto",
        from_beginning: bool = False,
        on_decode_error: DecodePolicy = "raise",
        ephemeral: bool = False,
    ) -> None:
        super().__init__(app, key_type=key_type, value_type=value_type, maxsize=maxsize)
        self.app: App = app
        if not names and pattern is None:
            raise ConfigurationError("a topic needs a name or a pattern")
        if names and pattern is not None:
            raise ConfigurationError("give topic names or a pattern, not both")
        for name in names:
            check_topic_name(name)
            app.transport_object.validate_topic_name(name)
        if pattern is not None:
            import re

            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigurationError(f"invalid topic pattern {pattern!r}: {exc}") from exc
        if acks not in _ACK_POLICIES:
            raise ConfigurationError(f"acks must be one of {_ACK_POLICIES}, not {acks!r}")
        if on_decode_error not in _DECODE_POLICIES:
            raise ConfigurationError(f"on_decode_error must be one of {_DECODE_POLICIES}, not {on_decode_error!r}")
        if partitions is not None and partitions < 1:
            raise ConfigurationError("partitions must be >= 1")
        if replicas is not None and replicas < 1:
            raise ConfigurationError("replicas must be >= 1")
        if maxsize is not None and maxsize < 1:
            raise ConfigurationError("a topic's maxsize (its prefetch window) must be >= 1")
        self.names: tuple[str, ...] = names
        self.pattern = pattern
        self.key_serializer = key_serializer
        self.value_serializer = value_serializer
        self.partitions = partitions
        self.replicas = replicas
        self.retention = retention
        self.compacting = compacting
        self.config: dict[str, str] = dict(config or {})
        self.internal = internal
        self.group = group or app.id
        #: the group exists only while it has members (see SubscriptionSpec.ephemeral)
        self.ephemeral = ephemeral
        self.acks: AckPolicy = acks
        self.from_beginning = from_beginning
        self.on_decode_error: DecodePolicy = on_decode_error
        self._key_codec = codecs.resolve(key_type, key_serializer, "key")
        self._value_codec = codecs.resolve(value_type, value_serializer)
        self._default_stream: EventStream[K, V] | None = None
        #: the topic is known to exist on the broker (declared, or checked on first send)
        self._sendable = False
        self._held: list[tuple[Message, asyncio.Future[RecordMetadata]]] = []
        self._release: asyncio.Future[None] | None = None

    # -- identity -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The first topic name (or the pattern)."""
        return self.names[0] if self.names else f"pattern:{self.pattern}"

    @property
    def label(self) -> str:
        return self.name

    @property
    def specs(self) -> tuple[TopicSpec, ...]:
        return tuple(
            TopicSpec(
                name,
                internal=self.internal,
                partitions=self.partitions,
                replicas=self.replicas,
                retention=self.retention,
                compacting=self.compacting,
                config=self.config,
            )
            for name in self.names
        )

    def clone(self, **kwargs: Any) -> Topic[K, V]:
        """The same topic with some options changed (e.g. ``group=``)."""
        options: dict[str, Any] = {
            "pattern": self.pattern,
            "key_type": self.key_type,
            "value_type": self.value_type,
            "key_serializer": self.key_serializer,
            "value_serializer": self.value_serializer,
            "partitions": self.partitions,
            "replicas": self.replicas,
            "retention": self.retention,
            "compacting": self.compacting,
            "config": self.config,
            "internal": self.internal,
            "group": self.group,
            "maxsize": self.maxsize,
            "acks": self.acks,
            "from_beginning": self.from_beginning,
            "on_decode_error": self.on_decode_error,
            "ephemeral": self.ephemeral,
        }
        names = kwargs.pop("names", self.names)
        options.update(kwargs)
        return self.app.topic(*names, **options)

    def native(self) -> Any:
        """The driver's client library object."""
        return self.app.transport.native()

    # -- sending ----------------------------------------------------------------------

    def prepare(
        self,
        key: Any = None,
        value: Any = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
        key_serializer: codecs.CodecArg = None,
        value_serializer: codecs.CodecArg = None,
        topic: str | None = None,
    ) -> Message:
        """Encode and validate one message for the wire; raises before anything is sent."""
        if not self.names:
            raise ConfigurationError("cannot send to a pattern topic; name the topic")
        target = topic or self.names[0]
        transport = self.app.transport
        caps = transport.capabilities
        key_codec = self._key_codec if key_serializer is None else codecs.resolve(self.key_type, key_serializer, "key")
        value_codec = (
            self._value_codec if value_serializer is None else codecs.resolve(self.value_type, value_serializer)
        )
        raw_key = key_codec.dumps(key)
        raw_value = value_codec.dumps(value)
        raw_headers = encode_headers(headers)
        if partition is not None:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise ConfigurationError(f"partition must be an int, not {type(partition).__name__}")
            if not caps.explicit_partitions:
                raise CapabilityNotSupported(
                    "explicit partitions", driver=type(transport).__name__, broker=self.app.url
                )
            if partition < 0:
                raise ConfigurationError("partition must be >= 0")
        if caps.uses_envelope:
            message = Message(target, envelope.wrap(raw_key, raw_value, raw_headers), None, {}, partition)
        else:
            message = Message(target, raw_value, raw_key, raw_headers, partition)
        message.timestamp = timestamp
        size = message.size
        if size > caps.max_message_size:
            raise MessageTooLarge(size, caps.max_message_size, topic=target, broker=self.app.url)
        return message

    async def send(
        self,
        *,
        key: K | None = None,
        value: V | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> RecordMetadata:
        """Send one message and return once the broker confirmed it."""
        message = self.prepare(key, value, headers, partition, timestamp, key_serializer, value_serializer)
        if not self._sendable:
            return await self._hold(message)
        return await self.app.producer.send(message)

    def send_soon(
        self,
        *,
        key: K | None = None,
        value: V | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage[K, V]:
        """Queue a message; it goes out in the next batch and is flushed on close.

        Bad input raises here, at the call. Await the returned future for its metadata.
        """
        pending = PendingMessage(self, key, value, headers, partition, timestamp, key_serializer, value_serializer)
        message = self.prepare(key, value, headers, partition, timestamp, key_serializer, value_serializer)
        if not self._sendable:
            return FutureMessage(pending, self._hold(message))
        return FutureMessage(pending, self.app.producer.enqueue(message))

    async def put(self, value: V) -> None:
        """Send ``value`` with no key (the same as ``send(value=value)``)."""
        await self.send(value=value)

    async def publish_message(
        self, fut: FutureMessage[K, V], wait: bool = True
    ) -> RecordMetadata | FutureMessage[K, V]:
        p = fut.message
        message = self.prepare(
            p.key,
            p.value,
            p.headers,
            p.partition,
            p.timestamp,
            p.key_serializer,
            p.value_serializer,
        )
        inner = self.app.producer.enqueue(message) if self._sendable else self._hold(message)
        inner.add_done_callback(lambda f: _copy_outcome(f, fut))
        if not wait:
            return fut
        return await fut

    def _hold(self, message: Message) -> asyncio.Future[RecordMetadata]:
        """Keep ``message`` until the topic is known to exist (created if internal, checked
        if a source topic), then hand it and every message held with it to the producer, in
        order. A missing source topic fails them all with TopicNotFound: sending never
        creates a source topic, on any driver."""
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._held.append((message, fut))
        if self._release is None:
            self._release = asyncio.ensure_future(self._release_held())
            self.app._releases.add(self._release)
        return fut

    async def _release_held(self) -> None:
        try:
            if not self._sendable:
                transport = self.app.transport
                for spec in self.specs:
                    await transport.declare(spec, None)
                self._sendable = True
        except BaseException as exc:
            held, self._held = self._held, []
            for _, fut in held:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            if self._release is not None:
                self.app._releases.discard(self._release)
            self._release = None
        held, self._held = self._held, []
        for message, fut in held:
            if fut.done():
                continue
            inner = self.app.producer.enqueue(message)
            inner.add_done_callback(functools.partial(_chain, target=fut))

    # -- declaring ------------------------------------------------------------------------

    async def declare(self) -> None:
        """Create the topic (internal topics) and what keeps messages for our group
        (nothing for an ephemeral group).

        For a source topic nothing is created; a missing one raises TopicNotFound where
        the driver can tell.
        """
        transport = self.app.transport
        for spec in self.specs:
            # an ephemeral group gets nothing kept for it before its members arrive
            await transport.declare(spec, None if self.ephemeral else self.group)
        self._sendable = True

    # -- receiving ------------------------------------------------------------------------

    def events(
        self,
        *,
        acks: AckPolicy | None = None,
        prefetch: int | None = None,
        from_beginning: bool | None = None,
    ) -> EventStream[K, V]:
        """A new member of this topic's group: an async iterator and context manager."""
        return EventStream(
            self,
            acks=acks or self.acks,
            prefetch=prefetch or self.maxsize or 100,
            from_beginning=self.from_beginning if from_beginning is None else from_beginning,
        )

    def __aiter__(self) -> EventStream[K, V]:
        return self.events()

    async def get(self, *, timeout: float | None = None) -> Event[K, V]:
        """The next event of this topic's default stream (auto-acked on the next get)."""
        if self._default_stream is None:
            self._default_stream = self.events()
        return await self._default_stream.get(timeout=timeout)

    def empty(self) -> bool:
        stream = self._default_stream
        return stream is None or not stream._buffer

    def decode(self, message: Message) -> Event[K, V]:
        """Turn a wire message into an Event (envelope, then codecs)."""
        if self.app.transport_object.capabilities.uses_envelope and message.value is not None:
            try:
                key, value, headers = envelope.unwrap(message.value)
            except DecodeError as exc:
                exc.raw = message
                raise
            message = Message(
                message.topic,
                value,
                key,
                headers,
                message.partition,
                message.offset,
                message.timestamp,
                message.token,
                message.redelivered,
            )
        try:
            key_obj = self._key_codec.loads(message.key)
            value_obj = self._value_codec.loads(message.value)
        except DecodeError as exc:
            exc.raw = message
            if exc.broker is None:
                exc.set_broker(self.app.url)
            raise
        return Event(key_obj, value_obj, message)


#: header names the drivers use for what their broker lacks; refused on every driver alike
RESERVED_HEADER_PREFIXES = ("x-channels-", "channels.")


def encode_headers(headers: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    if not headers:
        return {}
    if not isinstance(headers, Mapping):
        raise EncodeError(f"headers must be a mapping of str to bytes or str, not {type(headers).__name__}")
    out: dict[str, bytes] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise EncodeError(f"header names must be non-empty str, not {name!r}")
        if name.startswith(RESERVED_HEADER_PREFIXES):
            raise EncodeError(
                f"header {name!r}: names starting with {' or '.join(RESERVED_HEADER_PREFIXES)} are reserved "
                "for the drivers (keys, None values, encodings)"
            )
        if isinstance(value, str):
            out[name] = value.encode("utf-8")
        elif isinstance(value, bytes | bytearray | memoryview):
            out[name] = bytes(value)
        else:
            raise EncodeError(f"header {name!r} must be bytes or str, not {type(value).__name__}")
    return out


async def _first_or_nothing(
    receive: Coroutine[Any, Any, list[Message]], stop: asyncio.Event, timeout: float | None
) -> list[Message]:
    """Run ``receive`` until it returns or ``stop`` is set (then cancel it: receive is
    cancel-safe, so nothing is lost)."""
    task = asyncio.ensure_future(receive)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task in done:
        return task.result()
    if stopper in done:
        return []
    raise TimeoutError


def _chain(src: asyncio.Future[RecordMetadata], target: asyncio.Future[RecordMetadata]) -> None:
    if target.done():
        return
    if src.cancelled():
        target.cancel()
    elif src.exception() is not None:
        target.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        target.set_result(src.result())


def _copy_outcome(src: asyncio.Future[RecordMetadata], dst: FutureMessage[Any, Any]) -> None:
    if src.cancelled():
        dst.future.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        dst.set_result(src.result())


class EventStream(AsyncIterator[Event[K, V]]):
    """One member of a topic's group.

    With ``acks="auto"`` an event is acked when the next one is asked for, and the last
    one when the ``async with`` block exits cleanly. With ``acks="manual"`` the code calls
    ``event.ack()`` / ``event.nack()`` (or uses ``async with event:``). Events handed out
    and never acked are redelivered once the stream closes, where the broker can.
    """

    def __init__(self, topic: Topic[K, V], *, acks: AckPolicy, prefetch: int, from_beginning: bool):
        self.topic = topic
        self.acks = acks
        self.prefetch = prefetch
        self.from_beginning = from_beginning
        self._sub: Subscription | None = None
        self._buffer: deque[Message] = deque()
        self._last: Event[K, V] | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self.received = 0

    async def start(self) -> EventStream[K, V]:
        """Join the group now; after this returns, later messages reach this member."""
        async with self._start_lock:
            if self._closed:
                raise ClosedError(f"stream on {self.topic.name!r} is closed")
            if self._sub is not None:
                return self
            app = self.topic.app
            transport = app.transport
            caps = transport.capabilities
            if self.from_beginning and not caps.replay_from_start:
                raise CapabilityNotSupported(
                    "from_beginning",
                    "the broker keeps no history to replay",
                    driver=type(transport).__name__,
                    broker=app.url,
                )
            if self.topic.pattern is not None and not caps.patterns:
                raise CapabilityNotSupported("pattern subscriptions", driver=type(transport).__name__, broker=app.url)
            await self.topic.maybe_declare()
            spec = SubscriptionSpec(
                self.topic.specs,
                self.topic.group,
                pattern=self.topic.pattern,
                from_beginning=self.from_beginning,
                prefetch=self.prefetch,
                ephemeral=self.topic.ephemeral,
            )
            self._sub = await transport.subscribe(spec)
            app._streams.add(self)
        return self

    async def __aenter__(self) -> EventStream[K, V]:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(clean=exc_type is None)

    def __aiter__(self) -> EventStream[K, V]:
        return self

    async def __anext__(self) -> Event[K, V]:
        try:
            return await self.get()
        except ClosedError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    async def get(self, *, timeout: float | None = None) -> Event[K, V]:
        """The next event; raise ``channels.errors.Timeout`` after ``timeout`` seconds."""
        if self._sub is None:
            await self.start()
        if self.acks == "auto" and self._last is not None:
            await self._last.ack()
            self._last = None
        while True:
            if self._closed:
                raise ClosedError(f"stream on {self.topic.name!r} is closed")
            if self.topic.app.shutting_down:
                await self.close(clean=True)
                raise ClosedError(f"stream on {self.topic.name!r} is closed: the app is shutting down")
            if not self._buffer:
                await self._fill(timeout)
                continue
            message = self._buffer.popleft()
            try:
                event = self.topic.decode(message)
            except DecodeError as exc:
                if await self._handle_decode_error(exc, message):
                    continue
                raise
            event._ack = self._ack
            event._nack = self._nack
            self.received += 1
            if self.acks == "auto":
                self._last = event
            return event

    async def _fill(self, timeout: float | None) -> None:
        """Wait for the next batch; returns early (empty) when the app starts shutting down."""
        assert self._sub is not None
        receive = self._sub.receive(self.prefetch)
        shutdown = self.topic.app._shutdown_event
        try:
            if shutdown is None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the inner call finishing.
                async with asyncio.timeout(timeout):
                    batch = await receive
            else:
                batch = await _first_or_nothing(receive, shutdown, timeout)
        except TimeoutError:
            raise Timeout(
                f"no message on {self.topic.name!r} within {timeout}s",
                broker=self.topic.app.url,
            ) from None
        self._buffer.extend(batch)

    async def _handle_decode_error(self, exc: DecodeError, message: Message) -> bool:
        policy = self.topic.on_decode_error
        if policy == "raise":
            return False
        if policy == "dead_letter":
            # the message as sent (its envelope, where the driver uses one, taken off)
            sent = exc.raw if exc.raw is not None else message
            dlq = f"{message.topic}.dlq"
            headers = dict(sent.headers)
            headers["channels-error"] = str(exc).encode("utf-8", "replace")
            headers["channels-source-topic"] = message.topic.encode("utf-8")
            dead = self.topic.app.topic(dlq, internal=True, value_serializer="raw", key_serializer="raw")
            await dead.maybe_declare()
            await dead.send(key=sent.key, value=sent.value, headers=headers)
            log.warning("undecodable message on %s sent to %s: %s", message.topic, dlq, exc)
        else:
            log.warning("skipping undecodable message on %s: %s", message.topic, exc)
        assert self._sub is not None
        await self._sub.ack([message])
        return True

    async def ack_message(self, message: Message) -> None:
        """Ack a wire message directly (e.g. ``DecodeError.raw`` under the raise policy)."""
        if self._sub is None:
            raise ClosedError("stream not started")
        await self._sub.ack([message])

    async def _ack(self, event: Event[Any, Any]) -> None:
        if self._sub is None:
            raise ClosedError("stream not started")
        await self._sub.ack([event.message])

    async def _nack(self, event: Event[Any, Any], requeue: bool) -> None:
        if self._sub is None:
            raise ClosedError("stream not started")
        caps = self.topic.app.transport_object.capabilities
        if requeue and not caps.redelivery_on_nack:
            raise CapabilityNotSupported(
                "nack(requeue=True)",
                "unacked messages come back only after a reconnect",
                driver=type(self.topic.app.transport_object).__name__,
                broker=self.topic.app.url,
            )
        message = event.message
        later: list[Message] = []
        if requeue and message.partition is not None and self._buffer:
            # Messages of the same partition already fetched go back too, so the partition
            # is delivered again in order (drivers that seek back ignore them).
            key = (message.topic, message.partition)
            later = [m for m in self._buffer if (m.topic, m.partition) == key]
            if later:
                self._buffer = deque(m for m in self._buffer if (m.topic, m.partition) != key)
        await self._sub.nack([message, *later], requeue)

    async def close(self, *, clean: bool = False) -> None:
        """Leave the group. With ``clean`` (a block that exited without error) the last
        auto-acked event is acked first; anything else unacked goes back to the broker."""
        if self._closed:
            return
        if clean and self.acks == "auto" and self._last is not None and self._sub is not None:
            await self._last.ack()
        self._last = None
        self._closed = True
        self._buffer.clear()
        sub, self._sub = self._sub, None
        self.topic.app._streams.discard(self)
        if sub is not None:
            await sub.close()
