"""App: an id, a broker URL, the lifecycle, and the topics it declares."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from channels.channel import Channel
from channels.errors import (
    ChannelsError,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
)
from channels.producer import Producer
from channels.registry import get_transport_class
from channels.topic import Topic
from channels.url import BrokerURL, parse_url

if TYPE_CHECKING:
    from channels.topic import EventStream
    from transports.base import Transport

__all__ = ["DEFAULT_BROKER", "App"]

log = logging.getLogger("channels.app")

DEFAULT_BROKER = "memory://"

T = TypeVar("T")


def _broker_url(broker: str | BrokerURL | None) -> str | BrokerURL:
    """The broker argument, else $CHANNELS_BROKER, else memory://. An empty string given
    either way is an error, not a silent switch to the in-process broker."""
    if broker is not None:
        if isinstance(broker, str) and not broker.strip():
            raise ConfigurationError("broker URL is empty (leave it out for $CHANNELS_BROKER or memory://)")
        return broker
    env = os.environ.get("CHANNELS_BROKER")
    if env is not None:
        if not env.strip():
            raise ConfigurationError("$CHANNELS_BROKER is set but empty; unset it for memory://")
        return env
    return DEFAULT_BROKER


def _cancel_if_running(task: asyncio.Task[Any]) -> None:
    if not task.done():
        log.error("grace period over: cancelling the handlers still running")
        task.cancel()


class App:
    """The entry point: ``async with App("billing", broker="kafka://...") as app``.

    ``broker`` defaults to ``$CHANNELS_BROKER``, else ``memory://``. Starting connects the
    transport and declares every ``internal=True`` topic created so far; stopping flushes
    every pending send, closes every stream and then the transport. A stopped app stays
    closed: using it raises ``ClosedError``.
    """

    def __init__(
        self,
        id: str,
        *,
        broker: str | BrokerURL | None = None,
        connect_timeout: float = 30.0,
        close_timeout: float = 30.0,
        batch_size: int = 500,
        max_buffer: int = 10_000,
        retries: int | None = None,
        delivery_timeout: float = 60.0,
        wait_for_broker: float = 0.0,
    ) -> None:
        if not isinstance(id, str) or not id.strip():
            raise ConfigurationError(f"an App's id must be a non-empty string, not {id!r}")
        for name, number in (
            ("connect_timeout", connect_timeout),
            ("close_timeout", close_timeout),
            ("delivery_timeout", delivery_timeout),
        ):
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
                raise ConfigurationError(f"{name} must be a number of seconds > 0, not {number!r}")
        for name, count in (("batch_size", batch_size), ("max_buffer", max_buffer)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {count!r}")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise ConfigurationError(f"retries must be None or an int >= 0, not {retries!r}")
        self.id = id
        self.url = parse_url(_broker_url(broker))
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        seconds = wait_for_broker
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ConfigurationError(f"wait_for_broker must be >= 0 seconds, not {wait_for_broker!r}")
        self.wait_for_broker = wait_for_broker
        cls = get_transport_class(self.url.scheme)
        self.transport_object: Transport = cls(self.url)
        self.producer = Producer(
            self.transport_object,
            batch_size=batch_size,
            max_buffer=max_buffer,
            retries=retries,
            delivery_timeout=delivery_timeout,
        )
        self._topics: list[Topic[Any, Any]] = []
        self._streams: weakref.WeakSet[EventStream[Any, Any]] = weakref.WeakSet()
        #: sends held until their topic is known to exist (see Topic._hold)
        self._releases: set[asyncio.Future[None]] = set()
        self._state = "new"
        self._lock: asyncio.Lock | None = None
        self._shutdown_event: asyncio.Event | None = None
        self.undelivered = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state in ("closing", "closed")

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def transport(self) -> Transport:
        """The connected transport; ClosedError if the app is not running."""
        if self._state != "running":
            if self.closed:
                raise ClosedError(f"app {self.id!r} is closed", broker=self.url)
            raise ClosedError(
                f"app {self.id!r} is not started; use `async with app:` or `await app.start()`",
                broker=self.url,
            )
        return self.transport_object

    @property
    def capabilities(self) -> Any:
        return self.transport_object.capabilities

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(self) -> App:
        async with self._get_lock():
            if self._state == "running":
                return self
            if self.closed:
                raise ClosedError(f"app {self.id!r} is closed; create a new App", broker=self.url)
            self._state = "starting"
            try:
                await self._connect()
            except BaseException:
                self._state = "new"
                raise
            self.producer.start()
            self._state = "running"
        for topic in list(self._topics):
            if topic.internal:
                await topic.maybe_declare()
        return self

    async def _connect(self) -> None:
        """Connect the transport; while the broker is unreachable, try again until
        ``wait_for_broker`` seconds have passed (errors that are not retryable, such as
        refused credentials, end it at once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_broker
        delay = 0.2
        while True:
            try:
                try:
                    await asyncio.wait_for(self.transport_object.connect(), self.connect_timeout)
                except TimeoutError:
                    raise ConnectionFailed(
                        f"could not connect within {self.connect_timeout}s", broker=self.url
                    ) from None
                return
            except ChannelsError as exc:
                if exc.broker is None:
                    exc.set_broker(self.url)
                left = deadline - loop.time()
                if not exc.retryable or left <= 0:
                    raise
                log.warning("app %s: %s; trying again in %.1fs", self.id, exc, min(delay, left))
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)

    async def stop(self) -> int:
        """Flush, close streams and transport. Returns how many sends were not delivered."""
        async with self._get_lock():
            if self._state == "closed":
                return self.undelivered
            was_running = self._state == "running"
            self._state = "closing"
            try:
                if was_running:
                    if self._releases:
                        await asyncio.wait(set(self._releases), timeout=self.close_timeout)
                    self.undelivered = await self.producer.close(self.close_timeout)
                    if self.undelivered:
                        log.error(
                            "app %s closed with %d undelivered message(s): refused, failed or "
                            "still unsent at close (each send's future holds its error)",
                            self.id,
                            self.undelivered,
                        )
                for stream in list(self._streams):
                    try:
                        await asyncio.wait_for(stream.close(), self.close_timeout)
                    except (TimeoutError, ChannelsError) as exc:
                        log.warning("closing a stream failed: %s", exc)
                if was_running:
                    try:
                        await asyncio.wait_for(self.transport_object.close(), self.close_timeout)
                    except TimeoutError:
                        # Not raised: stop() runs in `async with` exits and finally blocks,
                        # where an error would hide the one being handled. What was not
                        # delivered is counted above either way.
                        log.error(
                            "app %s: the transport did not close within %ss (broker %s); its "
                            "connections were dropped",
                            self.id,
                            self.close_timeout,
                            self.url,
                        )
            finally:
                self._state = "closed"
        return self.undelivered

    async def __aenter__(self) -> App:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- graceful shutdown ---------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`request_shutdown` was called: streams stop fetching."""
        return self._shutdown_event is not None and self._shutdown_event.is_set()

    def request_shutdown(self) -> None:
        """Stop fetching: every stream ends after the event being handled (acked if the
        handler finished). Pending sends are flushed when the app stops."""
        if self._shutdown_event is None:
            self._shutdown_event = asyncio.Event()
        self._shutdown_event.set()

    def install_signal_handlers(self, task: asyncio.Task[Any] | None = None, grace: float = 10.0) -> Callable[[], None]:
        """On SIGTERM or SIGINT: request a shutdown, and cancel ``task`` if it has not
        finished ``grace`` seconds later (or at a second signal). Returns a function that
        removes the handlers."""
        loop = asyncio.get_running_loop()
        if self._shutdown_event is None:
            self._shutdown_event = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal(signum: int) -> None:
            if self.shutting_down:
                log.warning("second %s: cancelling now", signal.Signals(signum).name)
                if task is not None:
                    task.cancel()
                return
            log.warning(
                "%s: stopping; in-flight handlers have %.0fs to finish",
                signal.Signals(signum).name,
                grace,
            )
            self.request_shutdown()
            if task is not None:
                loop.call_later(grace, _cancel_if_running, task)

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)

        def remove() -> None:
            for signum in signals:
                loop.remove_signal_handler(signum)

        return remove

    def run(self, main: Callable[[], Awaitable[T]], *, grace: float = 10.0) -> T:
        """Start the app, run ``main()`` with SIGTERM/SIGINT handled, then stop.

        On a signal, streams stop fetching, ``main`` gets ``grace`` seconds to finish its
        in-flight work, pending sends are flushed and acks committed; what could not be
        delivered is logged (and kept in :attr:`undelivered`).
        """

        async def runner() -> T:
            async with self:
                task = asyncio.ensure_future(main())
                remove = self.install_signal_handlers(task, grace)
                try:
                    return await task
                finally:
                    remove()

        return asyncio.run(runner())

    # -- factories -----------------------------------------------------------------------

    def topic(self, *names: str, **options: Any) -> Topic[Any, Any]:
        """A Topic of this app; see :class:`channels.Topic` for the options."""
        if self.closed:
            raise ClosedError(f"app {self.id!r} is closed", broker=self.url)
        topic: Topic[Any, Any] = Topic(self, *names, **options)
        self._topics.append(topic)
        return topic

    def channel(self, *, key_type: Any = None, value_type: Any = None, maxsize: int | None = None) -> Channel[Any, Any]:
        """An in-process channel (no broker)."""
        return Channel(self, key_type=key_type, value_type=value_type, maxsize=maxsize)

    def info(self) -> Mapping[str, Any]:
        return {
            "id": self.id,
            "broker": self.url.redacted(),
            "driver": type(self.transport_object).__name__,
            "capabilities": self.transport_object.capabilities.as_dict(),
        }

    def __repr__(self) -> str:
        return f"<App {self.id!r} {self.url.redacted()} {self._state}>"
