"""The in-memory driver: every semantic of a real broker, inside one process.

``memory://`` (or ``memory://name`` for a separate broker) is the default broker. Topics
have partitions (``?partitions=8`` by default); a key always maps to the same partition.
Inside a group each partition belongs to one member, so a member sees a key's messages in
order; every group gets every message. Unacked messages go back to their partition's head
when the member leaves or nacks them. Nothing survives the process (not persistent).

URL options: ``partitions`` (default 8), ``max_message_size`` (bytes, default 8 MiB),
``max_queued`` (messages waiting per group before publishers wait, default 1,000,000),
``publish_timeout`` (seconds a publisher waits for room, default 30).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import weakref
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from channels.capabilities import Capabilities
from channels.errors import ClosedError, ConfigurationError, Timeout, TopicNotFound
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport

__all__ = ["MemoryTransport"]

_OPTIONS = ("partitions", "max_message_size", "max_queued", "publish_timeout")


@dataclass
class _Group:
    topic: _Topic
    name: str
    pending: list[deque[Message]]
    members: list[_Member] = field(default_factory=list)
    inflight: dict[int, tuple[int, Message, _Member]] = field(default_factory=dict)
    queued: int = 0
    #: made by an ephemeral subscription: dropped with what it holds when its last member leaves
    ephemeral: bool = False

    def owner(self, partition: int) -> _Member | None:
        if not self.members:
            return None
        return self.members[partition % len(self.members)]

    def wake_all(self) -> None:
        for member in self.members:
            member.wake.set()


@dataclass
class _Topic:
    name: str
    partitions: int
    groups: dict[str, _Group] = field(default_factory=dict)
    offsets: list[int] = field(default_factory=list)
    round_robin: itertools.cycle[int] | None = None

    def __post_init__(self) -> None:
        self.offsets = [0] * self.partitions
        self.round_robin = itertools.cycle(range(self.partitions))

    def group(self, name: str, ephemeral: bool = False) -> _Group:
        group = self.groups.get(name)
        if group is None:
            group = _Group(self, name, [deque() for _ in range(self.partitions)], ephemeral=ephemeral)
            self.groups[name] = group
        return group


class _Broker:
    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.pattern_members: list[tuple[re.Pattern[str], str, _Member]] = []
        self.space = asyncio.Event()
        self.space.set()
        self.seq = itertools.count()

    def topic(self, name: str, partitions: int) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = _Topic(name, partitions)
            self.topics[name] = topic
            for pattern, group, member in self.pattern_members:
                if pattern.fullmatch(name):
                    member.join(topic.group(group, member.ephemeral))
        return topic


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Broker]] = (
    weakref.WeakKeyDictionary()
)


def _broker_for(name: str) -> _Broker:
    per_loop = _brokers.setdefault(asyncio.get_running_loop(), {})
    broker = per_loop.get(name)
    if broker is None:
        broker = per_loop[name] = _Broker()
    return broker


class _Member(Subscription):
    def __init__(self, broker: _Broker, prefetch: int, ephemeral: bool = False) -> None:
        self.broker = broker
        self.prefetch = max(1, prefetch)
        self.ephemeral = ephemeral
        self.groups: list[_Group] = []
        self.wake = asyncio.Event()
        self.inflight = 0
        self.closed = False

    def join(self, group: _Group) -> None:
        self.groups.append(group)
        group.members.append(self)
        group.wake_all()

    def _take(self, limit: int) -> list[Message]:
        out: list[Message] = []
        for group in self.groups:
            for partition, queue in enumerate(group.pending):
                if not queue or group.owner(partition) is not self:
                    continue
                while queue and len(out) < limit:
                    message = queue.popleft()
                    group.queued -= 1
                    seq = next(self.broker.seq)
                    delivered = Message(
                        message.topic,
                        message.value,
                        message.key,
                        dict(message.headers),
                        message.partition,
                        message.offset,
                        message.timestamp,
                        (group, seq),
                        message.redelivered,
                    )
                    group.inflight[seq] = (partition, message, self)
                    out.append(delivered)
                if len(out) >= limit:
                    return out
        return out

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            if self.closed:
                raise ClosedError("subscription is closed")
            room = min(max_messages, self.prefetch - self.inflight)
            if room > 0:
                batch = self._take(room)
                if batch:
                    self.inflight += len(batch)
                    self.broker.space.set()
                    return batch
            self.wake.clear()
            await self.wake.wait()

    def _settle(self, messages: Sequence[Message]) -> list[tuple[_Group, int, Message]]:
        settled = []
        for message in messages:
            if not isinstance(message.token, tuple):
                continue
            group, seq = message.token
            entry = group.inflight.pop(seq, None)
            if entry is None:
                continue  # already acked or returned: harmless
            partition, original, member = entry
            member.inflight -= 1
            member.wake.set()
            settled.append((group, partition, original))
        return settled

    async def ack(self, messages: Sequence[Message]) -> None:
        self._settle(messages)

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        settled = self._settle(messages)
        if requeue:
            _requeue(settled)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        self.broker.pattern_members = [p for p in self.broker.pattern_members if p[2] is not self]
        for group in self.groups:
            group.members.remove(self)
            mine = [(seq, entry) for seq, entry in group.inflight.items() if entry[2] is self]
            for seq, _ in mine:
                del group.inflight[seq]
            _requeue([(group, partition, message) for _, (partition, message, _) in mine])
            group.wake_all()
            if group.ephemeral and not group.members and group.topic.groups.get(group.name) is group:
                del group.topic.groups[group.name]
                self.broker.space.set()
        self.inflight = 0
        self.groups.clear()


def _requeue(settled: list[tuple[_Group, int, Message]]) -> None:
    """Put messages back at the head of their partitions, oldest first."""
    settled.sort(
        key=lambda item: item[2].offset if isinstance(item[2].offset, int) else 0, reverse=True
    )
    for group, partition, message in settled:
        message.redelivered = True
        group.pending[partition].appendleft(message)
        group.queued += 1
        owner = group.owner(partition)
        if owner is not None:
            owner.wake.set()


class MemoryTransport(Transport):
    """In-process broker; see the module docstring for its URL options."""

    schemes = ("memory",)

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_options(_OPTIONS)
        self.name = (url.host or "") + url.path
        self.default_partitions = url.option("partitions", 8)
        self.max_queued = url.option("max_queued", 1_000_000)
        self.publish_timeout = url.option("publish_timeout", 30.0)
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
            explicit_partitions=True,
            topic_check=True,
            max_message_size=url.option("max_message_size", 8 * 1024 * 1024),
        )
        self._broker: _Broker | None = None
        self._subs: list[_Member] = []

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def broker(self) -> _Broker:
        if self._broker is None:
            raise ClosedError("memory transport is not connected", broker=self.url)
        return self._broker

    async def connect(self) -> None:
        self._broker = _broker_for(self.name)

    async def close(self) -> None:
        for sub in self._subs:
            await sub.close()
        self._subs.clear()
        self._broker = None

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        broker = self.broker
        existing = broker.topics.get(topic.name)
        if existing is None:
            if not topic.internal:
                raise TopicNotFound(topic.name, broker=self.url)
            existing = broker.topic(topic.name, topic.partitions or self.default_partitions)
        if group is not None:
            existing.group(group)

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata | BaseException]:
        broker = self.broker
        results: list[RecordMetadata | BaseException] = []
        for message in messages:
            topic = broker.topic(message.topic, self.default_partitions)
            if message.partition is not None and not 0 <= message.partition < topic.partitions:
                results.append(
                    ConfigurationError(
                        f"partition {message.partition} does not exist: topic {topic.name!r} has "
                        f"{topic.partitions} (0-{topic.partitions - 1})",
                        broker=self.url,
                    )
                )
                continue
            await self._wait_for_room(topic)
            if message.partition is not None:
                partition = message.partition
            elif message.key is not None:
                partition = zlib.crc32(message.key) % topic.partitions
            else:
                assert topic.round_robin is not None
                partition = next(topic.round_robin)
            offset = topic.offsets[partition]
            topic.offsets[partition] += 1
            ts = message.timestamp if message.timestamp is not None else time.time()
            stored = Message(
                topic.name, message.value, message.key, dict(message.headers), partition, offset, ts
            )
            for group in topic.groups.values():
                group.pending[partition].append(stored)
                group.queued += 1
                owner = group.owner(partition)
                if owner is not None:
                    owner.wake.set()
            results.append(RecordMetadata(topic.name, partition, offset, ts))
        return results

    async def _wait_for_room(self, topic: _Topic) -> None:
        broker = self.broker
        deadline = time.monotonic() + self.publish_timeout
        while any(g.queued >= self.max_queued for g in topic.groups.values()):
            broker.space.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(
                    f"topic {topic.name!r} has {self.max_queued} messages waiting for a group",
                    broker=self.url,
                )
            try:
                await asyncio.wait_for(broker.space.wait(), remaining)
            except TimeoutError:
                continue

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        broker = self.broker
        member = _Member(broker, spec.prefetch, spec.ephemeral)
        for topic_spec in spec.topics:
            topic = broker.topic(topic_spec.name, topic_spec.partitions or self.default_partitions)
            member.join(topic.group(spec.group, spec.ephemeral))
        if spec.pattern is not None:
            pattern = re.compile(spec.pattern)
            broker.pattern_members.append((pattern, spec.group, member))
            for name, topic in list(broker.topics.items()):
                if pattern.fullmatch(name):
                    member.join(topic.group(spec.group, spec.ephemeral))
        self._subs.append(member)
        return member

    def native(self) -> Any:
        return self.broker

    def client_version(self) -> str:
        return "built-in"
