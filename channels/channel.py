"""Channel: an in-process buffer of events with subscribers; no broker involved."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from channels.errors import ClosedError, ConfigurationError, EncodeError, Timeout
from channels.events import Event, FutureMessage, Message, PendingMessage, RecordMetadata

if TYPE_CHECKING:
    from channels.app import App

__all__ = ["Channel"]

K = TypeVar("K")
V = TypeVar("V")

_MESSAGE_SLOT = Event.__dict__["message"]


class _ChannelEvent(Event[K, V]):
    """An event put by ``Channel.put``: its Message is only built if someone asks for it.

    ``put`` is the in-process hot path; most readers only use ``key`` and ``value``.
    """

    __slots__ = ("_label", "_offset", "_ts")

    def __init__(self, value: V, label: str, offset: int, ts: float, key: K | None = None) -> None:
        self.key = key  # type: ignore[assignment]
        self.value = value
        self._ack = None
        self._nack = None
        self._settled = False
        self._label = label
        self._offset = offset
        self._ts = ts

    @property
    def message(self) -> Message:
        try:
            return _MESSAGE_SLOT.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:
            message = Message(self._label, None, None, {}, 0, self._offset, self._ts)
            _MESSAGE_SLOT.__set__(self, message)
            return message

    @message.setter
    def message(self, message: Message) -> None:
        _MESSAGE_SLOT.__set__(self, message)


class Channel(Generic[K, V]):
    """A buffer of events inside one process.

    ``put``/``send`` deliver to this channel and every clone of it (each has its own
    buffer); iterating reads this channel's buffer. With ``maxsize`` a full buffer makes
    senders wait: nothing is ever dropped.
    """

    def __init__(
        self,
        app: App | None = None,
        *,
        key_type: Any = None,
        value_type: Any = None,
        maxsize: int | None = None,
        _root: Channel[Any, Any] | None = None,
    ) -> None:
        if maxsize is not None and maxsize < 0:
            raise ConfigurationError("maxsize must be >= 0 (0 or None: unbounded)")
        self.app = app
        self.key_type = key_type
        self.value_type = value_type
        self.maxsize = maxsize
        self._queue: asyncio.Queue[Event[K, V]] | None = None
        self._root: Channel[Any, Any] = _root if _root is not None else self
        self._subscribers: list[Channel[Any, Any]] = []
        self._root._subscribers.append(self)
        self._label = f"channel-{id(self._root):x}"
        self._declared = False
        self._declare_lock: asyncio.Lock | None = None
        self._offset = 0
        self._backlog = 0  # send_soon calls still waiting in tasks (keeps their order)
        self._closed = False

    # -- buffer -----------------------------------------------------------------

    @property
    def queue(self) -> asyncio.Queue[Event[K, V]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self.maxsize or 0)
        return self._queue

    @property
    def label(self) -> str:
        return self._label

    def empty(self) -> bool:
        return self._queue is None or self._queue.empty()

    def clone(self, **kwargs: Any) -> Channel[K, V]:
        """A new subscriber of the same stream, with its own buffer and options."""
        options: dict[str, Any] = {
            "key_type": self.key_type,
            "value_type": self.value_type,
            "maxsize": self.maxsize,
        }
        options.update(kwargs)
        return Channel(self.app, _root=self._root, **options)

    # -- sending -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.label} is closed")
        if self.app is not None and self.app.closed:
            raise ClosedError(f"app {self.app.id!r} is closed")

    def _check_types(self, key: Any, value: Any) -> None:
        """``key_type`` / ``value_type`` given as classes are checked, as a Topic's codecs do."""
        for role, wanted, given in (("key", self.key_type, key), ("value", self.value_type, value)):
            if wanted is not None and given is not None and isinstance(wanted, type):
                try:
                    matches = isinstance(given, wanted)
                except TypeError:  # a parameterized generic (list[int]): not checked here
                    continue
                if not matches:
                    raise EncodeError(
                        f"{self.label}: the {role} must be a {wanted.__name__}, not {type(given).__name__}"
                    )

    async def put(self, value: V) -> None:
        """Deliver ``value`` to this channel and its clones (waits while a buffer is full)."""
        if self._closed or (self.app is not None and self.app.closed):
            self._check_open()
        if self.value_type is not None:
            self._check_types(None, value)
        root = self._root
        subscribers = root._subscribers
        if len(subscribers) != 1 or root._backlog:
            await self.send(value=value)
            return
        offset = root._offset
        root._offset = offset + 1
        queue = subscribers[0].queue
        event: Event[K, V] = _ChannelEvent(value, self._label, offset, time.time())
        if queue.full():
            await queue.put(event)
        else:
            queue.put_nowait(event)

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
        self._check_open()
        self._check_types(key, value)
        root = self._root
        offset = root._offset
        root._offset += 1
        ts = timestamp if timestamp is not None else time.time()
        raw_headers = (
            {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in headers.items()}
            if headers
            else None
        )
        label = self.label
        for sub in root._subscribers:
            message = Message(
                label, None, None, dict(raw_headers) if raw_headers else {}, 0, offset, ts
            )
            queue = sub.queue
            if queue.full():
                await queue.put(Event(key, value, message))
            else:
                queue.put_nowait(Event(key, value, message))
        return RecordMetadata(label, 0, offset, ts)

    def as_future_message(
        self,
        key: K | None = None,
        value: V | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        partition: int | None = None,
        timestamp: float | None = None,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage[K, V]:
        """A message prepared for :meth:`publish_message`, not yet sent."""
        return FutureMessage(
            PendingMessage(
                self, key, value, headers, partition, timestamp, key_serializer, value_serializer
            )
        )

    async def publish_message(
        self, fut: FutureMessage[K, V], wait: bool = True
    ) -> RecordMetadata | FutureMessage[K, V]:
        """Send a prepared message; with ``wait`` return its metadata, else the future."""
        pending = fut.message
        if wait:
            try:
                metadata = await self.send(
                    key=pending.key,
                    value=pending.value,
                    headers=pending.headers,
                    partition=pending.partition,
                    timestamp=pending.timestamp,
                    key_serializer=pending.key_serializer,
                    value_serializer=pending.value_serializer,
                )
            except BaseException as exc:
                fut.set_exception(exc)
                raise
            fut.set_result(metadata)
            return metadata
        task = asyncio.ensure_future(self.publish_message(fut, wait=True))
        task.add_done_callback(_consume_exception)
        return fut

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
        """Queue a send without waiting; await the returned future for its metadata."""
        self._check_open()
        self._check_types(key, value)
        fut = self.as_future_message(
            key, value, headers, partition, timestamp, key_serializer, value_serializer
        )
        root = self._root
        subscribers = root._subscribers
        if (
            not root._backlog
            and not headers
            and (
                not subscribers[0].queue.full()
                if len(subscribers) == 1
                else all(not sub.queue.full() for sub in subscribers)
            )
        ):
            # Room everywhere: deliver now, in order, without a task per message.
            offset = root._offset
            root._offset = offset + 1
            ts = timestamp if timestamp is not None else time.time()
            for sub in subscribers:
                sub.queue.put_nowait(_ChannelEvent(value, self._label, offset, ts, key))
            fut.set_result(RecordMetadata(self._label, 0, offset, ts))
            return fut
        root._backlog += 1
        task = asyncio.ensure_future(self.publish_message(fut, wait=True))
        task.add_done_callback(root._backlog_done)
        return fut

    def _backlog_done(self, task: asyncio.Future[Any]) -> None:
        self._backlog -= 1
        _consume_exception(task)

    # -- declaring ------------------------------------------------------------------

    async def declare(self) -> None:
        """Create what this channel needs on the server (nothing for an in-process channel)."""

    async def maybe_declare(self) -> None:
        """Declare once, however many tasks ask at the same time."""
        if self._declared:
            return
        if self._declare_lock is None:
            self._declare_lock = asyncio.Lock()
        async with self._declare_lock:
            if not self._declared:
                await self.declare()
                self._declared = True

    # -- receiving ------------------------------------------------------------------

    async def get(self, *, timeout: float | None = None) -> Event[K, V]:
        """The next event; raise ``channels.errors.Timeout`` after ``timeout`` seconds."""
        if self._closed or (self.app is not None and self.app.closed):
            self._check_open()
        queue = self.queue
        if not queue.empty():
            return queue.get_nowait()
        if timeout is None:
            return await queue.get()
        try:
            async with asyncio.timeout(timeout):
                return await queue.get()
        except TimeoutError:
            raise Timeout(f"no event on {self.label} within {timeout}s") from None

    def __aiter__(self) -> AsyncIterator[Event[K, V]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event[K, V]]:
        while True:
            yield await self.get()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def _consume_exception(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
