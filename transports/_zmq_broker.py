"""The ``channels zmq-broker`` device: topics and groups over ZeroMQ.

ZeroMQ has no broker. This module is a small one: a single-threaded loop over three
sockets, holding everything in memory (nothing is persistent).

Ports (``--bind tcp://HOST:PORT``; every port can also be given explicitly):

* ``PORT``     ROUTER: the ``zmq://`` driver's DEALER sockets (requests, deliveries, acks).
* ``PORT + 1`` XPUB: fan-out of every published message to plain SUB sockets.
* ``PORT + 2`` SUB (bound, subscribed to everything): intake from plain PUB sockets.

For ``--bind ipc://PATH`` the fan-out and intake endpoints are ``ipc://PATH.out`` and
``ipc://PATH.in``.

Message frames (the same on the ROUTER, the fan-out and the intake port)::

    [topic, value, meta, key, name1, value1, name2, value2, ...]

``topic`` is UTF-8, ``value`` the raw payload (empty for None, see ``meta``), ``meta`` is
``struct("!Bdq")``: flags (1 = value is None, 2 = key present, 4 = redelivered),
timestamp (seconds since the epoch) and the broker's sequence number of the message in its
topic; ``key`` is empty when absent; header names are UTF-8, header values raw bytes.
Foreign publishers only need ``[topic, value]``: further frames are ignored, and the
message arrives with key None and no headers. Foreign subscribers read frames 0 and 1.

Groups: each topic keeps one queue per group. Keyed messages go to one of 64 slots by a
CRC-32 of the key and a slot belongs to one member (slot mod members), so a key's messages
reach one member in order while membership is stable; keyless messages go to any member
with credit. Every group gets every message. A message published to a topic without any
group is only fanned out (nobody keeps it).

Flow control: a member's credit is its prefetch minus the messages it holds unacked. The
broker sends only with credit. A group queue holds at most ``--max-queued`` messages; when
one of a topic's groups is full, publishes to that topic are parked (not answered) until
room frees, so publishers wait instead of the broker dropping or growing. At most
``--max-parked`` publishes wait per topic; beyond that the broker answers ``busy`` and the
driver raises ``channels.errors.Timeout``.

Acks: the broker keeps every delivered message until the member acks it; a nack with
requeue, the member leaving, or the member going silent for ``--member-timeout`` seconds
(clients ping every second) puts it back at the head of its queue, marked redelivered.

Ephemeral groups: a group frame that starts with the byte ``0xFF`` (:data:`EPHEMERAL`,
never part of UTF-8, so no group name can clash with it) names an ephemeral group: the rest
of the frame is the UTF-8 name. The broker creates it when its first member subscribes and
deletes it, with everything it holds (queued and unacked messages), when its last member
leaves (``UNSUB``), its client is dropped or goes silent for ``--member-timeout`` seconds;
publishes parked for it are then answered. An ephemeral group and an ordinary group of the
same name are two separate groups. ``DECLARE`` with an ephemeral group creates only the
topic (nothing is kept for a group that has no member). A broker older than this marker
refuses it (``ERR protocol``: the frame is not UTF-8) and creates nothing.

Driver protocol (DEALER -> ROUTER), every request ``[command, request_id, args...]`` is
answered ``[b"OK" | b"ERR", request_id, ...]``:

* ``HELLO`` -> ``OK epoch``; ``PING *sub_ids`` -> ``OK epoch *missing_sub_ids`` (the
  subscriptions the broker does not know, after a restart or a timeout: the driver
  subscribes them again);
* ``DECLARE topic group internal`` -> ``OK`` or ``ERR notfound topic``;
* ``PUB *message`` -> ``OK sequence timestamp`` once routed (or ``ERR busy|toolarge``);
* ``SUB sub_id group prefetch pattern *topics`` / ``UNSUB sub_id`` -> ``OK`` (``group``
  with the ``0xFF`` marker for an ephemeral group, see above);
* one-way ``ACK sub_id seqs`` and ``NACK sub_id requeue seqs`` (seqs packed ``!q``).

Deliveries are ``[b"MSG", sub_id, seq, *message]``.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import signal
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import zmq

log = logging.getLogger("channels.zmq_broker")

META = struct.Struct("!Bdq")
SEQ = struct.Struct("!q")
F_NONE = 1
F_KEY = 2
F_REDELIVERED = 4

#: first byte of a group frame naming an ephemeral group (not UTF-8: no group name has it)
EPHEMERAL = b"\xff"

SLOTS = 64
DEFAULT_PORT = 5560
FANOUT_OFFSET = 1
INTAKE_OFFSET = 2


def derived_endpoints(bind: str) -> tuple[str, str]:
    """The fan-out (XPUB) and intake (SUB) endpoints that go with a ROUTER endpoint."""
    if bind.startswith("ipc://"):
        return bind + ".out", bind + ".in"
    match = re.fullmatch(r"(tcp://.+):(\d+)", bind)
    if not match:
        raise ValueError(f"cannot derive ports from {bind!r}; give --fanout and --intake")
    host, port = match.group(1), int(match.group(2))
    return f"{host}:{port + FANOUT_OFFSET}", f"{host}:{port + INTAKE_OFFSET}"


def group_frame(name: str, ephemeral: bool = False) -> bytes:
    """The wire form of a group name (with the ephemeral marker when ``ephemeral``)."""
    return (EPHEMERAL if ephemeral else b"") + name.encode("utf-8")


def parse_group(frame: bytes) -> tuple[str, bool]:
    """``(name, ephemeral)`` from a group frame (the inverse of :func:`group_frame`)."""
    if frame.startswith(EPHEMERAL):
        return frame[len(EPHEMERAL) :].decode("utf-8"), True
    return frame.decode("utf-8"), False


def pack_seqs(seqs: Sequence[int]) -> bytes:
    return struct.pack(f"!{len(seqs)}q", *seqs)


def unpack_seqs(data: bytes) -> list[int]:
    return list(struct.unpack(f"!{len(data) // 8}q", data))


@dataclass
class _Stored:
    topic: str
    frames: list[bytes]  # the message frames; frames[2] is re-packed on delivery
    seq: int
    redelivered: bool = False


@dataclass(eq=False)
class _Member:
    client: _Client
    sub_id: bytes
    prefetch: int
    #: a member of an ephemeral group (on every topic it joins)
    ephemeral: bool = False
    groups: list[_Group] = field(default_factory=list)
    inflight: dict[int, tuple[_Group, int, _Stored]] = field(default_factory=dict)

    @property
    def credit(self) -> int:
        return self.prefetch - len(self.inflight)


@dataclass(eq=False)
class _Group:
    topic: _Topic
    name: str
    slots: list[deque[_Stored]] = field(default_factory=lambda: [deque() for _ in range(SLOTS)])
    members: list[_Member] = field(default_factory=list)
    queued: int = 0
    #: lives only while it has members (deleted with what it holds when the last one leaves)
    ephemeral: bool = False


@dataclass(eq=False)
class _Topic:
    name: str
    #: by (name, ephemeral): an ephemeral group never shares a queue with an ordinary one
    groups: dict[tuple[str, bool], _Group] = field(default_factory=dict)
    seq: int = 0
    rr: int = 0
    draining: bool = False
    parked: deque[tuple[bytes, bytes, list[bytes]]] = field(default_factory=deque)

    def group(self, name: str, ephemeral: bool = False) -> _Group:
        group = self.groups.get((name, ephemeral))
        if group is None:
            group = self.groups[(name, ephemeral)] = _Group(self, name, ephemeral=ephemeral)
        return group


@dataclass(eq=False)
class _Client:
    identity: bytes
    last_seen: float
    members: dict[bytes, _Member] = field(default_factory=dict)


class ZmqBroker:
    """The device; ``run()`` serves until ``stop()`` (or SIGTERM/SIGINT under ``main``)."""

    def __init__(
        self,
        binds: Sequence[str] = (f"tcp://127.0.0.1:{DEFAULT_PORT}",),
        fanout: Sequence[str] | None = None,
        intake: Sequence[str] | None = None,
        *,
        max_queued: int = 100_000,
        max_parked: int = 10_000,
        member_timeout: float = 5.0,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.binds = list(binds)
        if fanout is None or intake is None:
            derived = [derived_endpoints(b) for b in self.binds]
            fanout = fanout if fanout is not None else [d[0] for d in derived]
            intake = intake if intake is not None else [d[1] for d in derived]
        self.fanout_binds = list(fanout)
        self.intake_binds = list(intake)
        self.max_queued = max_queued
        self.max_parked = max_parked
        self.member_timeout = member_timeout
        self.max_message_size = max_message_size
        self.epoch = uuid.uuid4().hex[:12].encode()
        self.topics: dict[str, _Topic] = {}
        self.clients: dict[bytes, _Client] = {}
        self.patterns: list[tuple[re.Pattern[str], str, _Member]] = []
        self.delivery_seq = 0
        self.stats = {
            "published": 0,
            "delivered": 0,
            "redelivered": 0,
            "acked": 0,
            "fanout_dropped": 0,
            "intake_dropped": 0,
            "unrouted": 0,
            "ephemeral_deleted": 0,
        }
        self._running = False
        self.ctx: zmq.Context[Any] | None = None

    # -- sockets ---------------------------------------------------------------------------

    def _open(self) -> None:
        self.ctx = ctx = zmq.Context()
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.xpub = ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, 100_000)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.intake = ctx.socket(zmq.SUB)
        self.intake.setsockopt(zmq.SUBSCRIBE, b"")
        self.intake.setsockopt(zmq.LINGER, 0)
        for sock, endpoints in (
            (self.router, self.binds),
            (self.xpub, self.fanout_binds),
            (self.intake, self.intake_binds),
        ):
            if any(e.startswith("tcp://[") for e in endpoints):
                sock.setsockopt(zmq.IPV6, 1)
            for endpoint in endpoints:
                sock.bind(endpoint)

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._open()
        log.info(
            "zmq-broker serving: router %s, fan-out %s, intake %s",
            self.binds,
            self.fanout_binds,
            self.intake_binds,
        )
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        poller.register(self.intake, zmq.POLLIN)
        self._running = True
        next_sweep = time.monotonic() + 0.5
        try:
            while self._running:
                events = dict(poller.poll(200))
                if self.router in events:
                    for _ in range(1000):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                if self.intake in events:
                    for _ in range(1000):
                        try:
                            frames = self.intake.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self._handle_foreign(frames)
                        except Exception:
                            log.exception("intake: handling a foreign message failed")
                if self.xpub in events:
                    for _ in range(1000):
                        try:
                            self.xpub.recv_multipart(zmq.NOBLOCK)  # subscriptions: XPUB filters
                        except zmq.Again:
                            break
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + 0.5
                    self._sweep(now)
        finally:
            for sock in (self.router, self.xpub, self.intake):
                sock.close(linger=0)
            assert self.ctx is not None
            self.ctx.term()
            log.info("zmq-broker stopped: %s", self.stats)

    # -- requests --------------------------------------------------------------------------

    def _reply(self, identity: bytes, *frames: bytes) -> None:
        try:
            self.router.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.info("client %s unreachable for a reply (%s)", identity.hex(), exc)
            self._drop_client(identity)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        identity, command, args = frames[0], frames[1], frames[2:]
        client = self.clients.get(identity)
        if client is None:
            client = self.clients[identity] = _Client(identity, time.monotonic())
        client.last_seen = time.monotonic()
        try:
            if command == b"ACK":
                self._settle(client, args[0], unpack_seqs(args[1]), ack=True, requeue=False)
                return
            if command == b"NACK":
                self._settle(
                    client, args[0], unpack_seqs(args[2]), ack=False, requeue=args[1] == b"1"
                )
                return
            req = args[0]
            rest = args[1:]
            if command == b"PUB":
                self._publish(identity, req, rest)
            elif command == b"HELLO":
                self._reply(identity, b"OK", req, self.epoch)
            elif command == b"PING":
                missing = [sub_id for sub_id in rest if sub_id not in client.members]
                self._reply(identity, b"OK", req, self.epoch, *missing)
            elif command == b"DECLARE":
                self._declare(identity, req, rest)
            elif command == b"SUB":
                self._subscribe(client, req, rest)
            elif command == b"UNSUB":
                member = client.members.pop(rest[0], None)
                if member is not None:
                    self._remove_member(member)
                self._reply(identity, b"OK", req)
            else:
                self._reply(identity, b"ERR", req, b"protocol", b"unknown command " + command[:32])
        except (IndexError, ValueError, struct.error, UnicodeDecodeError, re.error) as exc:
            log.warning("bad request %r from %s: %s", command[:32], identity.hex(), exc)
            if command not in (b"ACK", b"NACK") and args:
                self._reply(identity, b"ERR", args[0], b"protocol", str(exc).encode()[:200])
        except Exception:  # a bug must not take the broker down with every queue in it
            log.exception("handling %r from %s failed", command[:32], identity.hex())
            if command not in (b"ACK", b"NACK") and args:
                self._reply(identity, b"ERR", args[0], b"internal", b"broker error, see its log")

    def _topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic(name)
            for pattern, group, member in self.patterns:
                if pattern.fullmatch(name):
                    self._join(member, topic.group(group, member.ephemeral))
        return topic

    def _declare(self, identity: bytes, req: bytes, args: list[bytes]) -> None:
        name = args[0].decode()
        group, ephemeral = parse_group(args[1])
        internal = args[2] == b"1"
        if not internal and name not in self.topics:
            self._reply(identity, b"ERR", req, b"notfound", args[0])
            return
        topic = self._topic(name)
        if group and not ephemeral:  # nothing is kept for an ephemeral group without members
            topic.group(group)
        self._reply(identity, b"OK", req)

    def _subscribe(self, client: _Client, req: bytes, args: list[bytes]) -> None:
        sub_id, prefetch, pattern = args[0], int(args[2]), args[3]
        group, ephemeral = parse_group(args[1])
        topics = [raw.decode() for raw in args[4:]]
        compiled = re.compile(pattern.decode()) if pattern else None
        old = client.members.pop(sub_id, None)
        if old is not None:
            self._remove_member(old)
        member = _Member(client, sub_id, max(1, prefetch), ephemeral)
        client.members[sub_id] = member
        for name in topics:
            self._join(member, self._topic(name).group(group, ephemeral), dispatch=False)
        if compiled is not None:
            self.patterns.append((compiled, group, member))
            for name, topic in list(self.topics.items()):
                if compiled.fullmatch(name):
                    self._join(member, topic.group(group, ephemeral), dispatch=False)
        self._reply(client.identity, b"OK", req)
        for g in member.groups:
            self._dispatch(g)

    def _join(self, member: _Member, group: _Group, dispatch: bool = True) -> None:
        if group in member.groups:
            return
        member.groups.append(group)
        group.members.append(member)
        if dispatch:
            self._dispatch(group)

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, identity: bytes, req: bytes, frames: list[bytes]) -> None:
        if len(frames) < 4 or len(frames) % 2:
            raise ValueError("a message has topic, value, meta, key and header pairs")
        size = sum(len(f) for f in frames)
        if size > self.max_message_size:
            self._reply(identity, b"ERR", req, b"toolarge", str(self.max_message_size).encode())
            return
        topic = self._topic(frames[0].decode())
        if topic.parked or self._full(topic):
            if len(topic.parked) >= self.max_parked:
                self._reply(
                    identity,
                    b"ERR",
                    req,
                    b"busy",
                    f"topic {topic.name!r}: a group is full".encode(),
                )
                return
            topic.parked.append((identity, req, frames))
            return
        seq, ts = self._route(topic, frames)
        self._reply(identity, b"OK", req, str(seq).encode(), repr(ts).encode())

    def _full(self, topic: _Topic) -> bool:
        return any(g.queued >= self.max_queued for g in topic.groups.values())

    def _route(self, topic: _Topic, frames: list[bytes]) -> tuple[int, float]:
        flags, ts, _ = META.unpack(frames[2])
        if ts <= 0:
            ts = time.time()
        seq = topic.seq
        topic.seq += 1
        flags &= ~F_REDELIVERED
        frames = [frames[0], frames[1], META.pack(flags, ts, seq), *frames[3:]]
        if flags & F_KEY:
            slot = zlib.crc32(frames[3]) % SLOTS
        else:
            slot = topic.rr = (topic.rr + 1) % SLOTS
        self.stats["published"] += 1
        if not topic.groups:
            self.stats["unrouted"] += 1
        for group in list(topic.groups.values()):  # a dispatch may drop a client (and a group)
            group.slots[slot].append(_Stored(topic.name, frames, seq))
            group.queued += 1
            self._dispatch(group)
        try:
            self.xpub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.stats["fanout_dropped"] += 1
        return seq, ts

    def _handle_foreign(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.stats["intake_dropped"] += 1
            log.warning("intake: dropped a %d-frame message (need [topic, value])", len(frames))
            return
        try:
            name = frames[0].decode()
        except UnicodeDecodeError:
            self.stats["intake_dropped"] += 1
            return
        topic = self._topic(name)
        if self._full(topic):
            # A plain PUB socket cannot be told to wait; count it instead of growing.
            self.stats["intake_dropped"] += 1
            log.warning("intake: topic %r is full, dropped a foreign message", name)
            return
        self._route(topic, [frames[0], frames[1], META.pack(0, 0.0, 0), b""])

    def _drain_parked(self, topic: _Topic) -> None:
        if topic.draining:
            return
        topic.draining = True
        try:
            while topic.parked and not self._full(topic):
                identity, req, frames = topic.parked.popleft()
                seq, ts = self._route(topic, frames)
                self._reply(identity, b"OK", req, str(seq).encode(), repr(ts).encode())
        finally:
            topic.draining = False

    # -- delivering ------------------------------------------------------------------------

    def _dispatch(self, group: _Group) -> None:
        """Send each member, up to its credit, the oldest messages of the slots it owns."""
        members = group.members
        if not members or group.queued == 0:
            return
        n = len(members)
        sent_any = False
        for index, member in enumerate(list(members)):
            if member.credit <= 0:
                continue
            heads = [
                (group.slots[slot][0].seq, slot)
                for slot in range(index, SLOTS, n)
                if group.slots[slot]
            ]
            heapq.heapify(heads)
            while heads and member.credit > 0:
                _, slot = heapq.heappop(heads)
                queue = group.slots[slot]
                if not self._send(member, group, slot, queue.popleft()):
                    return
                sent_any = True
                if queue:
                    heapq.heappush(heads, (queue[0].seq, slot))
        if sent_any and group.topic.parked:
            self._drain_parked(group.topic)

    def _send(self, member: _Member, group: _Group, slot: int, stored: _Stored) -> bool:
        self.delivery_seq += 1
        seq = self.delivery_seq
        flags, ts, offset = META.unpack(stored.frames[2])
        if stored.redelivered:
            flags |= F_REDELIVERED
        frames = [
            stored.frames[0],
            stored.frames[1],
            META.pack(flags, ts, offset),
            *stored.frames[3:],
        ]
        group.queued -= 1
        try:
            self.router.send_multipart(
                [member.client.identity, b"MSG", member.sub_id, SEQ.pack(seq), *frames], zmq.NOBLOCK
            )
        except zmq.ZMQError as exc:
            # Unreachable (gone) or full: put it back and forget the client.
            self._putback(group, slot, stored)
            log.info("member %s unreachable (%s): leaving", member.client.identity.hex(), exc)
            self._drop_client(member.client.identity)
            return False
        member.inflight[seq] = (group, slot, stored)
        self.stats["delivered"] += 1
        if stored.redelivered:
            self.stats["redelivered"] += 1
        return True

    def _putback(self, group: _Group, slot: int, stored: _Stored) -> None:
        group.slots[slot].appendleft(stored)
        group.queued += 1

    def _settle(
        self, client: _Client, sub_id: bytes, seqs: list[int], *, ack: bool, requeue: bool
    ) -> None:
        member = client.members.get(sub_id)
        if member is None:
            return
        back: list[tuple[_Group, int, _Stored]] = []
        for seq in seqs:
            entry = member.inflight.pop(seq, None)
            if entry is None:
                continue
            if ack:
                self.stats["acked"] += 1
            elif requeue:
                back.append(entry)
        self._requeue(back)
        for group in member.groups:
            self._dispatch(group)

    def _requeue(self, entries: list[tuple[_Group, int, _Stored]]) -> None:
        """Put messages back at the head of their queues, oldest first."""
        touched: list[_Group] = []
        for group, slot, stored in sorted(entries, key=lambda e: e[2].seq, reverse=True):
            stored.redelivered = True
            self._putback(group, slot, stored)
            if group not in touched:
                touched.append(group)
        for group in touched:
            self._dispatch(group)

    def _remove_member(self, member: _Member) -> None:
        self.patterns = [p for p in self.patterns if p[2] is not member]
        for group in member.groups:
            if member in group.members:
                group.members.remove(member)
        entries = list(member.inflight.values())
        member.inflight.clear()
        groups = list(member.groups)
        member.groups.clear()
        self._requeue(entries)
        for group in groups:
            if group.ephemeral and not group.members:
                self._delete_group(group)
            else:
                self._dispatch(group)

    def _delete_group(self, group: _Group) -> None:
        """Forget an ephemeral group and what it holds; answer publishes it held back."""
        topic = group.topic
        key = (group.name, group.ephemeral)
        if topic.groups.get(key) is not group:
            return
        del topic.groups[key]
        self.stats["ephemeral_deleted"] += 1
        log.debug(
            "ephemeral group %r of topic %r deleted with %d message(s)",
            group.name,
            topic.name,
            group.queued,
        )
        for queue in group.slots:
            queue.clear()
        group.queued = 0
        if topic.parked:
            self._drain_parked(topic)

    def _drop_client(self, identity: bytes) -> None:
        client = self.clients.pop(identity, None)
        if client is None:
            return
        for member in list(client.members.values()):
            self._remove_member(member)
        client.members.clear()

    def _sweep(self, now: float) -> None:
        for identity, client in list(self.clients.items()):
            if now - client.last_seen > self.member_timeout:
                if client.members:
                    log.info(
                        "client %s silent for %.1fs: its members leave",
                        identity.hex(),
                        now - client.last_seen,
                    )
                self._drop_client(identity)


def serve(broker: ZmqBroker) -> None:
    """Run ``broker`` in this thread until SIGTERM or SIGINT."""

    def _stop(signum: int, frame: FrameType | None) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("zmq-broker pid %d", os.getpid())
    broker.run()


def ping(endpoint: str, timeout: float = 2.0) -> bool:
    """True if a broker answers HELLO at ``endpoint`` within ``timeout`` seconds."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"HELLO", b"1"])
        if sock.poll(int(timeout * 1000), zmq.POLLIN):
            reply = sock.recv_multipart()
            return len(reply) >= 2 and reply[0] == b"OK"
        return False
    finally:
        sock.close(linger=0)
        ctx.term()
