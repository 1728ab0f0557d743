"""The send path shared by every driver: validation, envelope, batching and retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from channels.errors import ChannelsError, ClosedError, Timeout
from channels.events import Message, RecordMetadata

if TYPE_CHECKING:
    from transports.base import Transport

__all__ = ["Producer"]

log = logging.getLogger("channels.producer")

#: longest pause between two tries of a batch
MAX_BACKOFF = 2.0


class Producer:
    """Collects messages and hands them to the transport in ordered batches.

    One flusher task publishes one batch at a time, so messages reach the broker in the
    order they were accepted. A batch failing with a retryable error (a dropped
    connection, a broker restarting) is tried again with growing pauses (at most
    ``retries`` times if given); any other error fails every message of the batch, and a
    driver may fail single messages of a batch on their own. Retries stop once ``delivery_timeout`` seconds
    have passed since the batch was first tried, so a send always ends in bounded time.
    ``send`` waits while ``max_buffer`` messages are queued; ``send_soon`` never waits.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int = 500,
        max_buffer: int = 10_000,
        retries: int | None = None,
        retry_backoff: float = 0.2,
        delivery_timeout: float = 60.0,
    ) -> None:
        self.transport = transport
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.delivery_timeout = delivery_timeout
        self._buffer: deque[tuple[Message, asyncio.Future[RecordMetadata]]] = deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.failed = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="channels-producer")

    def enqueue(self, message: Message) -> asyncio.Future[RecordMetadata]:
        if self._closed:
            raise ClosedError("the producer is closed")
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._buffer.append((message, fut))
        self._idle.clear()
        self._wakeup.set()
        if len(self._buffer) >= self.max_buffer:
            self._space.clear()
        return fut

    async def send(self, message: Message) -> RecordMetadata:
        while not self._space.is_set():
            await self._space.wait()
        return await self.enqueue(message)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            # Let other tasks add to the batch before it goes out.
            await asyncio.sleep(0)
            if not self._buffer:
                self._wakeup.clear()
                self._idle.set()
                continue
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            if len(self._buffer) < self.max_buffer:
                self._space.set()
            await self._publish(batch)

    async def _publish(self, batch: list[tuple[Message, asyncio.Future[RecordMetadata]]]) -> None:
        live = [(m, f) for m, f in batch if not f.cancelled()]
        attempt = 0
        deadline = time.monotonic() + self.delivery_timeout
        while live:
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                try:
                    async with asyncio.timeout(remaining):
                        results = await self.transport.publish([m for m, _ in live])
                except TimeoutError:
                    raise Timeout(
                        f"the broker did not confirm within the delivery timeout of {self.delivery_timeout}s",
                        broker=self.transport.url,
                    ) from None
            except asyncio.CancelledError:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(ClosedError("the producer closed before the broker confirmed"))
                raise
            except ChannelsError as exc:
                delay = min(self.retry_backoff * (2**attempt), MAX_BACKOFF)
                if (
                    exc.retryable
                    and (self.retries is None or attempt < self.retries)
                    and not self._closed
                    and time.monotonic() + delay < deadline
                ):
                    attempt += 1
                    log.warning("send failed (%s); try %d in %.1fs", exc, attempt + 1, delay)
                    await asyncio.sleep(delay)
                    continue
                self._fail(live, exc)
            except Exception as exc:
                self._fail(live, exc)
            else:
                for (_, fut), md in zip(live, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(md, BaseException):
                        self.failed += 1
                        fut.set_exception(md)
                    else:
                        fut.set_result(md)
            return

    def _fail(self, batch: list[tuple[Message, asyncio.Future[RecordMetadata]]], exc: BaseException) -> None:
        self.failed += len(batch)
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything accepted so far was confirmed or failed."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            raise Timeout(f"{self.pending} message(s) still unsent after {timeout}s") from None

    async def close(self, timeout: float | None = 30.0) -> int:
        """Flush, then stop. Returns how many messages could not be delivered."""
        if self._closed:
            return 0
        try:
            if self._task is not None:
                await self.flush(timeout)
        except Timeout:
            log.error("closing with %d unsent message(s)", self.pending)
        self._closed = True
        undelivered = 0
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._buffer:
            _, fut = self._buffer.popleft()
            if not fut.done():
                undelivered += 1
                fut.set_exception(ClosedError("the app closed before this message was sent"))
        self._space.set()
        self._idle.set()
        return undelivered + self.failed
