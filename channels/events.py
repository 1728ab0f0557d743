"""Messages on the wire, decoded events, send results and pending sends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from channels.channel import Channel

__all__ = ["Event", "FutureMessage", "Message", "PendingMessage", "RecordMetadata"]

K = TypeVar("K")
V = TypeVar("V")


@dataclass(slots=True)
class Message:
    """A message as bytes, the way a driver sends and receives it.

    ``offset`` is the partition offset, or the broker's message id where there are no
    offsets. ``token`` belongs to the driver that produced the message (its ack handle).
    """

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    partition: int | None = None
    offset: int | str | None = None
    timestamp: float | None = None
    token: Any = field(default=None, repr=False, compare=False)
    redelivered: bool = False

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what size limits are checked against."""
        total = len(self.value or b"") + len(self.key or b"")
        for name, data in self.headers.items():
            total += len(name.encode("utf-8")) + len(data)
        return total


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where the broker put a message it confirmed."""

    topic: str
    partition: int | None = None
    offset: int | str | None = None
    timestamp: float | None = None


@dataclass(slots=True)
class PendingMessage:
    """A message accepted for sending but not yet handed to the transport."""

    channel: Channel[Any, Any]
    key: Any = None
    value: Any = None
    headers: Mapping[str, str | bytes] | None = None
    partition: int | None = None
    timestamp: float | None = None
    key_serializer: Any = None
    value_serializer: Any = None


class FutureMessage(Generic[K, V]):
    """A pending send; ``await`` it for the RecordMetadata once the broker confirmed."""

    __slots__ = ("future", "message")

    def __init__(
        self, message: PendingMessage, future: asyncio.Future[RecordMetadata] | None = None
    ):
        self.message = message
        self.future: asyncio.Future[RecordMetadata] = (
            future if future is not None else asyncio.get_running_loop().create_future()
        )

    def set_result(self, metadata: RecordMetadata) -> None:
        if not self.future.done():
            self.future.set_result(metadata)

    def set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def done(self) -> bool:
        return self.future.done()

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        return self.future.__await__()

    def __repr__(self) -> str:
        state = "done" if self.future.done() else "pending"
        return f"<FutureMessage {state} key={self.message.key!r}>"


AckCallback = Callable[["Event[Any, Any]"], Awaitable[None]]
NackCallback = Callable[["Event[Any, Any]", bool], Awaitable[None]]


class Event(Generic[K, V]):
    """A received message with its decoded key and value.

    ``ack()`` tells the broker the message was handled; ``nack(requeue=True)`` asks for it
    again. Both are idempotent: only the first of them has an effect. Used as an async
    context manager, the event is acked on a clean exit and nacked when the block raises.
    """

    __slots__ = ("_ack", "_nack", "_settled", "key", "message", "value")

    def __init__(
        self,
        key: K,
        value: V,
        message: Message,
        ack: AckCallback | None = None,
        nack: NackCallback | None = None,
    ) -> None:
        self.key = key
        self.value = value
        self.message = message
        self._ack = ack
        self._nack = nack
        self._settled = False

    @property
    def headers(self) -> dict[str, bytes]:
        return self.message.headers

    @property
    def acked(self) -> bool:
        """True once the event was acked or nacked."""
        return self._settled

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        if self._ack is not None:
            await self._ack(self)

    async def nack(self, requeue: bool = True) -> None:
        if self._settled:
            return
        if self._nack is not None:
            await self._nack(self, requeue)
        self._settled = True

    async def __aenter__(self) -> Event[K, V]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.ack()
        elif not issubclass(exc_type, asyncio.CancelledError | GeneratorExit):
            await self._nack_quietly()

    async def _nack_quietly(self) -> None:
        from channels.errors import CapabilityNotSupported

        try:
            await self.nack(requeue=True)
        except CapabilityNotSupported:
            # No nack on this broker: leaving the message unacked makes it come back.
            pass

    def __repr__(self) -> str:
        m = self.message
        return f"<Event {m.topic}[{m.partition}]@{m.offset} key={self.key!r} value={self.value!r}>"
