"""The ZeroMQ driver (pyzmq's asyncio sockets), talking to ``channels zmq-broker``.

URLs: ``zmq://HOST:PORT`` (the broker's ROUTER port, default 5560) and
``zmq+ipc:///path/to/socket`` (the broker bound with ``--bind ipc:///path/to/socket``).

URL options:

* ``publish_timeout`` -- seconds to wait for the broker's confirm of a publish (default 30);
  a publish the broker parked because a group queue is full counts against it.
* ``connect_timeout`` -- seconds to wait for the broker at connect and for subscribe,
  declare and unsubscribe answers (default 5).
* ``heartbeat`` -- seconds between pings (default 1); the broker lets a member leave
  after ``--member-timeout`` seconds of silence (default 5) and requeues what it held.
* ``linger`` -- seconds ``close()`` lets unsent frames go out before dropping them (default 1).
* ``max_message_size`` -- bytes (default 8 MiB; the broker refuses above its own limit).

Semantic mapping: one DEALER socket per transport carries requests, deliveries and acks
to the broker's ROUTER (see ``transports._zmq_broker`` for the frames and the device).
Topics and groups live in the broker: inside a group each message goes to one member
(keyed messages by a hash of the key, so a key's order holds while membership is stable),
and every group gets every message. Topic, key, headers and value travel as separate
frames, so no envelope is used and a None value stays distinct from ``b""``.
``publish`` returns once the broker routed the message; ``RecordMetadata.offset`` is the
broker's sequence number within the topic (partition None). ``subscribe`` returns once the
broker registered the member (no slow-joiner loss). ``declare(topic, group)`` creates the
group's queue in the broker, so later messages wait there for the group.

Ephemeral groups (``spec.ephemeral``): the group frame of ``SUB`` carries the broker's
ephemeral marker (see ``transports._zmq_broker``). The broker creates the group with its
first member and deletes it, with what it holds, when the last member leaves: on
``close()`` (``UNSUB``), or ``--member-timeout`` seconds after its process died or went
silent. It is a separate group from an ordinary group of the same name. A broker older than
the marker refuses such a subscription (``CapabilityNotSupported``) and keeps nothing.

Capabilities: consumer groups, fan-out groups, per-key ordering, native headers and keys,
patterns, topic check (a topic exists once declared internal, subscribed to or published
to), and acks: the broker keeps each delivered message until it is acked, puts it back on
``nack(requeue=True)``, when the member leaves or when it goes silent. Flow control: the
broker sends a member at most ``prefetch`` unacked messages.

What it cannot do: nothing is persistent (a broker restart loses queued and unacked
messages, and the topics it knew), there is no replay from the start, no explicit
partitions. The fan-out port for plain SUB sockets is at-most-once (PUB/SUB rules).
``close()`` returns within about ``connect_timeout + linger`` seconds and logs, and counts
in ``undelivered``, publishes the broker never confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.asyncio

from channels.capabilities import Capabilities
from channels.errors import (
    CapabilityNotSupported,
    ChannelsError,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
)
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports._zmq_broker import (
    DEFAULT_PORT,
    F_KEY,
    F_NONE,
    F_REDELIVERED,
    META,
    SEQ,
    group_frame,
    pack_seqs,
)
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport, translate_errors

__all__ = ["ZmqTransport", "decode_frames", "encode_frames"]

log = logging.getLogger(__name__)

_OPTIONS = ("publish_timeout", "connect_timeout", "heartbeat", "linger", "max_message_size")

_ERRORS: list[tuple[type[BaseException] | tuple[type[BaseException], ...], type[ChannelsError]]] = [
    (zmq.ZMQError, ConnectionFailed),
    (OSError, ConnectionFailed),
]


def encode_frames(message: Message) -> list[bytes]:
    """The broker's frames for ``message``: topic, value, meta, key, header pairs."""
    flags = 0
    if message.value is None:
        flags |= F_NONE
    if message.key is not None:
        flags |= F_KEY
    frames = [
        message.topic.encode("utf-8"),
        message.value or b"",
        META.pack(flags, message.timestamp or 0.0, 0),
        message.key or b"",
    ]
    for name, data in message.headers.items():
        frames.append(name.encode("utf-8"))
        frames.append(data)
    return frames


def decode_frames(frames: Sequence[bytes]) -> Message:
    """A Message from the broker's frames (the inverse of :func:`encode_frames`)."""
    flags, ts, offset = META.unpack(frames[2])
    headers = {
        frames[i].decode("utf-8"): bytes(frames[i + 1]) for i in range(4, len(frames) - 1, 2)
    }
    return Message(
        frames[0].decode("utf-8"),
        None if flags & F_NONE else bytes(frames[1]),
        bytes(frames[3]) if flags & F_KEY else None,
        headers,
        None,
        offset,
        ts,
        None,
        bool(flags & F_REDELIVERED),
    )


class _ZmqSubscription(Subscription):
    def __init__(self, transport: ZmqTransport, sub_id: bytes, spec: SubscriptionSpec) -> None:
        self.transport = transport
        self.sub_id = sub_id
        self.spec = spec
        self.buffer: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def deliver(self, seq: int, message: Message) -> None:
        message.token = (self, seq)
        self.buffer.append(message)
        self.wake.set()

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            if self.closed:
                raise ClosedError("subscription is closed", broker=self.transport.url)
            if self.buffer:
                count = min(max(1, max_messages), len(self.buffer))
                return [self.buffer.popleft() for _ in range(count)]
            self.wake.clear()
            await self.wake.wait()

    def _seqs(self, messages: Sequence[Message]) -> list[int]:
        return [
            m.token[1]
            for m in messages
            if isinstance(m.token, tuple) and len(m.token) == 2 and m.token[0] is self
        ]

    async def ack(self, messages: Sequence[Message]) -> None:
        seqs = self._seqs(messages)
        if seqs and not self.closed:
            await self.transport._send(b"ACK", self.sub_id, pack_seqs(seqs))

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        seqs = self._seqs(messages)
        if seqs and not self.closed:
            await self.transport._send(
                b"NACK", self.sub_id, b"1" if requeue else b"0", pack_seqs(seqs)
            )

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        self.buffer.clear()  # the broker requeues everything this member held
        self.transport._subs.pop(self.sub_id, None)
        if self.transport._socket is not None:
            try:
                await self.transport._request(b"UNSUB", self.sub_id)
            except ChannelsError as exc:
                log.warning(
                    "leaving the group on %s: %s (the broker times the member out)",
                    self.transport.url,
                    exc,
                )


class ZmqTransport(Transport):
    """Driver for ``channels zmq-broker``; see the module docstring."""

    schemes = ("zmq", "zmq+ipc")

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_options(_OPTIONS)
        if url.scheme == "zmq+ipc":
            path = (url.host or "") + url.path
            if not path:
                raise ConfigurationError("zmq+ipc:// needs a socket path", broker=url)
            self.endpoint = f"ipc://{path}"
        elif url.scheme == "zmq":
            hosts = url.host_list(DEFAULT_PORT)
            if len(hosts) != 1:
                raise ConfigurationError("zmq:// takes exactly one broker host", broker=url)
            host, port = hosts[0]
            self.endpoint = f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"
        else:
            raise ConfigurationError(f"scheme {url.scheme}:// is not served by the zmq driver")
        self.publish_timeout = url.option("publish_timeout", 30.0)
        self.connect_timeout = url.option("connect_timeout", 5.0)
        self.heartbeat = url.option("heartbeat", 1.0)
        self.linger = url.option("linger", 1.0)
        self._caps = Capabilities(
            persistent=False,
            consumer_groups=True,
            fanout_groups=True,
            per_key_ordering=True,
            ack=True,
            redelivery_on_nack=True,
            replay_from_start=False,
            native_headers=True,
            native_keys=True,
            patterns=True,
            explicit_partitions=False,
            topic_check=True,
            max_message_size=url.option("max_message_size", 8 * 1024 * 1024),
        )
        self._ctx: zmq.asyncio.Context | None = None
        self._socket: zmq.asyncio.Socket | None = None
        self._pending: dict[bytes, asyncio.Future[list[bytes]]] = {}
        self._subs: dict[bytes, _ZmqSubscription] = {}
        self._req_ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()
        self._epoch: bytes | None = None
        self._poke = asyncio.Event()
        self._monitor: zmq.asyncio.Socket | None = None
        #: (topic, group) pairs declared, declared again when the broker restarted
        self._declared: set[tuple[bytes, bytes]] = set()
        self.undelivered = 0

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    # -- plumbing --------------------------------------------------------------------------

    def _map(self, what: str = "") -> contextlib.AbstractContextManager[None]:
        return translate_errors(_ERRORS, self.url, what)

    async def _send(self, *frames: bytes) -> None:
        sock = self._socket
        if sock is None:
            raise ClosedError("zmq transport is not connected", broker=self.url)
        with self._map("send"):
            async with self._send_lock:
                await sock.send_multipart(list(frames))

    async def _request(
        self, command: bytes, *args: bytes, timeout: float | None = None
    ) -> list[bytes]:
        future = self._start_request(command, *args)
        await self._send_request(command, future, *args)
        return await self._await_reply(command, future, timeout or self.connect_timeout)

    def _start_request(self, command: bytes, *args: bytes) -> asyncio.Future[list[bytes]]:
        req = str(next(self._req_ids)).encode()
        future: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        future.req_id = req  # type: ignore[attr-defined]
        self._pending[req] = future
        return future

    async def _send_request(
        self, command: bytes, future: asyncio.Future[list[bytes]], *args: bytes
    ) -> None:
        req: bytes = future.req_id  # type: ignore[attr-defined]
        try:
            await self._send(command, req, *args)
        except BaseException:
            self._pending.pop(req, None)
            raise

    async def _await_reply(
        self, command: bytes, future: asyncio.Future[list[bytes]], timeout: float
    ) -> list[bytes]:
        req: bytes = future.req_id  # type: ignore[attr-defined]
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise ConnectionFailed(
                f"no answer from the zmq broker to {command.decode()} within {timeout}s",
                broker=self.url,
            ) from None
        finally:
            self._pending.pop(req, None)
        if reply[0] == b"ERR":
            code = reply[2] if len(reply) > 2 else b""
            text = reply[3].decode("utf-8", "replace") if len(reply) > 3 else ""
            raise _broker_error(code, text, self)
        return reply[2:]

    async def _reader(self) -> None:
        sock = self._socket
        assert sock is not None
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            kind = frames[0]
            try:
                if kind == b"MSG":
                    sub = self._subs.get(frames[1])
                    if sub is not None and not sub.closed:
                        sub.deliver(SEQ.unpack(frames[2])[0], decode_frames(frames[3:]))
                elif kind in (b"OK", b"ERR"):
                    future = self._pending.get(frames[1])
                    if future is not None and not future.done():
                        future.set_result(frames)
            except Exception:  # a malformed frame must not stop the reader
                log.exception("malformed frames from the zmq broker at %s", self.url)

    async def _watch_connections(self, monitor: zmq.asyncio.Socket) -> None:
        """Ping at once when the connection to the broker is (re)established."""
        while True:
            try:
                await monitor.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            self._poke.set()

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.heartbeat)
            self._poke.clear()
            active = [sub_id for sub_id, sub in self._subs.items() if not sub.closed]
            try:
                reply = await self._request(b"PING", *active, timeout=max(3 * self.heartbeat, 1.0))
            except ChannelsError as exc:
                log.warning("zmq broker %s not answering: %s", self.url, exc)
                continue
            epoch, missing = reply[0], reply[1:]
            if self._epoch is not None and epoch != self._epoch:
                log.warning("zmq broker %s restarted: declaring and joining again", self.url)
                for name, group in list(self._declared):
                    try:
                        await self._request(b"DECLARE", name, group, b"1")
                    except ChannelsError as exc:
                        log.warning("declaring %r again failed: %s", name, exc)
            self._epoch = epoch
            for sub_id in missing:
                sub = self._subs.get(sub_id)
                if sub is None or sub.closed:
                    continue
                sub.buffer.clear()  # the broker requeued them (or lost them, if it restarted)
                try:
                    await self._join(sub)
                except ChannelsError as exc:
                    log.warning("joining %s again failed: %s", sub.spec.group, exc)

    async def _join(self, sub: _ZmqSubscription) -> None:
        spec = sub.spec
        try:
            await self._request(
                b"SUB",
                sub.sub_id,
                group_frame(spec.group, spec.ephemeral),
                str(max(1, spec.prefetch)).encode(),
                (spec.pattern or "").encode("utf-8"),
                *(t.name.encode("utf-8") for t in spec.topics),
            )
        except ChannelsError as exc:
            if spec.ephemeral and isinstance(exc, _Refused) and exc.code == b"protocol":
                # a broker from before ephemeral groups: it refused and created nothing
                raise CapabilityNotSupported(
                    "ephemeral groups",
                    f"the zmq broker at {self.endpoint} predates them; run a newer "
                    "`channels zmq-broker`",
                    driver=type(self).__name__,
                    broker=self.url,
                ) from exc
            raise

    # -- the contract ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._socket is not None:
            return
        self._ctx = zmq.asyncio.Context()
        try:
            sock = self._ctx.socket(zmq.DEALER)
            self._socket = sock
            sock.setsockopt(zmq.LINGER, int(self.linger * 1000))
            sock.setsockopt(zmq.ROUTING_ID, b"ch-" + os.urandom(12))
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            if self.endpoint.startswith("tcp://["):
                sock.setsockopt(zmq.IPV6, 1)
            with self._map("connect"):
                sock.connect(self.endpoint)
            self._tasks = [asyncio.create_task(self._reader(), name=f"zmq-reader {self.url}")]
            try:
                reply = await self._request(b"HELLO")
            except ChannelsError as exc:
                raise ConnectionFailed(
                    f"no zmq broker answering at {self.endpoint} "
                    "(start one with `channels zmq-broker`)",
                    broker=self.url,
                ) from exc
            self._epoch = reply[0]
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self._monitor = monitor
        except BaseException:
            # Failed or cancelled (an App's connect timeout): nothing was accepted yet, so
            # the sockets go at once. A context left to the garbage collector would block
            # the whole process in term() on a socket it can no longer see.
            self._abort()
            raise
        self._tasks.append(asyncio.create_task(self._heartbeat(), name=f"zmq-heartbeat {self.url}"))
        self._tasks.append(
            asyncio.create_task(self._watch_connections(monitor), name=f"zmq-monitor {self.url}")
        )

    async def _wind_down(self) -> None:
        """The graceful part of close(): members leave, publishes get their answers."""
        for sub in list(self._subs.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.close(), self.connect_timeout)
        self._subs.clear()
        publishes = [f for f in self._pending.values() if getattr(f, "command", b"") == b"PUB"]
        if publishes:
            await asyncio.wait(publishes, timeout=self.connect_timeout)
            lost = sum(1 for f in publishes if not f.done())
            if lost:
                self.undelivered += lost
                log.warning(
                    "closing %s: %d publish(es) not confirmed by the broker", self.url, lost
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def _abort(self) -> None:
        """Drop the connection now: cancel the tasks, close the sockets without lingering."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        sock, self._socket = self._socket, None
        monitor, self._monitor = self._monitor, None
        ctx, self._ctx = self._ctx, None
        for each in (monitor, sock):
            if each is not None:
                each.close(linger=0)
        if ctx is not None:
            ctx.term()  # immediate: every socket of this context is closed

    async def close(self) -> None:
        if self._socket is None:
            return
        try:
            await self._wind_down()
        except BaseException:
            self._abort()  # cancelled while closing: still leave no socket behind
            raise
        sock, self._socket = self._socket, None
        ctx, self._ctx = self._ctx, None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClosedError("zmq transport closed", broker=self.url))
                future.exception()  # retrieved: nobody else may look
        self._pending.clear()
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        sock.close(linger=int(self.linger * 1000))
        if ctx is not None:
            # LINGER bounds term(): unsent frames are dropped after ``linger`` seconds.
            await asyncio.to_thread(ctx.term)

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        name, group_name = topic.name.encode("utf-8"), (group or "").encode("utf-8")
        await self._request(b"DECLARE", name, group_name, b"1" if topic.internal else b"0")
        self._declared.add((name, group_name))

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        if self._socket is None:
            raise ClosedError("zmq transport is not connected", broker=self.url)
        futures = []
        for message in messages:
            future = self._start_request(b"PUB")
            future.command = b"PUB"  # type: ignore[attr-defined]
            futures.append(future)
            await self._send_request(b"PUB", future, *encode_frames(message))
        deadline = time.monotonic() + self.publish_timeout
        results = []
        for message, future in zip(messages, futures, strict=True):
            try:
                reply = await self._await_reply(
                    b"PUB", future, max(0.0, deadline - time.monotonic())
                )
            except ConnectionFailed as exc:
                raise Timeout(
                    f"the zmq broker did not confirm a publish to {message.topic!r} within "
                    f"{self.publish_timeout}s (it may still deliver it)",
                    broker=self.url,
                ) from exc
            results.append(RecordMetadata(message.topic, None, int(reply[0]), float(reply[1])))
        return results

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        if self._socket is None:
            raise ClosedError("zmq transport is not connected", broker=self.url)
        sub = _ZmqSubscription(self, os.urandom(8), spec)
        self._subs[sub.sub_id] = sub
        try:
            await self._join(sub)
        except BaseException:
            self._subs.pop(sub.sub_id, None)
            raise
        return sub

    def native(self) -> Any:
        return self._socket

    def client_version(self) -> str:
        return f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})"


def _broker_error(code: bytes, text: str, transport: ZmqTransport) -> ChannelsError:
    if code == b"notfound":
        return TopicNotFound(text, broker=transport.url)
    if code == b"toolarge":
        limit = int(text) if text.isdigit() else 0
        return MessageTooLarge(0, limit, broker=transport.url)
    if code == b"busy":
        return Timeout(f"zmq broker busy: {text}", broker=transport.url)
    return _Refused(code, text, transport)


class _Refused(ChannelsError):
    """The broker answered ``ERR code text`` with a code the portable layer has no class for."""

    def __init__(self, code: bytes, text: str, transport: ZmqTransport) -> None:
        super().__init__(
            f"zmq broker refused: {code.decode('utf-8', 'replace')} {text}", broker=transport.url
        )
        self.code = code
