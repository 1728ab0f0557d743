"""``loopback://``: a minimal driver written from scratch against the driver contract.

It keeps topics and groups in the process (one broker per event loop), like a tiny broker
would: each group has a queue; its members take turns; unacked messages go back to the head
of the queue on nack or when their member leaves.

Capabilities: consumer groups, fan-out across groups, ack and redelivery on nack, a
topic check for source topics. It has no native keys or headers, so the portable layer
wraps them in the envelope; no per-key ordering (members of a group share one queue), no
patterns, partitions, replay or persistence.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections import deque
from collections.abc import Sequence

from channels.capabilities import Capabilities
from channels.errors import ClosedError, TopicNotFound
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport

__all__ = ["LoopbackTransport"]


class _Group:
    def __init__(self, ephemeral: bool = False) -> None:
        self.queue: deque[Message] = deque()
        self.changed = asyncio.Event()
        self.members = 0
        #: made by an ephemeral subscription: forgotten when its last member leaves
        self.ephemeral = ephemeral


class _Broker:
    def __init__(self) -> None:
        self.topics: dict[str, dict[str, _Group]] = {}
        self.offsets: dict[str, int] = {}
        self.tokens = itertools.count()


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Broker] = weakref.WeakKeyDictionary()


class _Member(Subscription):
    def __init__(self, groups: list[_Group], prefetch: int) -> None:
        self.groups = groups
        self.prefetch = max(1, prefetch)
        #: token -> (group, message) for messages handed out and not yet settled
        self.inflight: dict[int, tuple[_Group, Message]] = {}
        self.wake = asyncio.Event()
        self.closed = False

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            # Let the other members of the group have their turn first.
            await asyncio.sleep(0)
            if self.closed:
                raise ClosedError("subscription is closed")
            room = min(max_messages, self.prefetch - len(self.inflight))
            batch: list[Message] = []
            for group in self.groups:
                while group.queue and len(batch) < room:
                    message = group.queue.popleft()
                    self.inflight[message.token] = (group, message)
                    batch.append(message)
            if batch:
                return batch
            self.wake.clear()
            waits = [asyncio.ensure_future(g.changed.wait()) for g in self.groups]
            waits.append(asyncio.ensure_future(self.wake.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
            for group in self.groups:
                group.changed.clear()

    def _settle(self, messages: Sequence[Message]) -> list[tuple[_Group, Message]]:
        out = []
        for message in messages:
            entry = self.inflight.pop(message.token, None)
            if entry is not None:
                out.append(entry)
        if out:
            self.wake.set()
        return out

    async def ack(self, messages: Sequence[Message]) -> None:
        self._settle(messages)

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        settled = self._settle(messages)
        if requeue:
            _put_back(settled)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        _put_back(list(self.inflight.values()))
        self.inflight.clear()
        for group in self.groups:
            group.members -= 1
            if group.ephemeral and not group.members:
                _forget(group)


def _forget(group: _Group) -> None:
    """Drop an ephemeral group, and what it holds, from its topic."""
    for groups in _brokers.get(asyncio.get_running_loop(), _Broker()).topics.values():
        for name, each in list(groups.items()):
            if each is group:
                del groups[name]


def _put_back(entries: list[tuple[_Group, Message]]) -> None:
    """Return messages to the head of their group's queue, oldest first, with a new token."""
    for group, message in sorted(entries, key=lambda e: e[1].token, reverse=True):
        message.redelivered = True
        group.queue.appendleft(message)
        group.changed.set()


class LoopbackTransport(Transport):
    """The ``loopback://`` driver (see the module docstring)."""

    schemes = ("loopback",)

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        url.check_options(())
        self._broker: _Broker | None = None
        self._members: list[_Member] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            consumer_groups=True,
            fanout_groups=True,
            ack=True,
            redelivery_on_nack=True,
            topic_check=True,
            max_message_size=4 * 1024 * 1024,
        )

    @property
    def broker(self) -> _Broker:
        if self._broker is None:
            raise ClosedError("loopback transport is not connected", broker=self.url)
        return self._broker

    async def connect(self) -> None:
        self._broker = _brokers.setdefault(asyncio.get_running_loop(), _Broker())

    async def close(self) -> None:
        for member in self._members:
            await member.close()
        self._members.clear()
        self._broker = None

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        groups = self.broker.topics.get(topic.name)
        if groups is None:
            if not topic.internal:
                raise TopicNotFound(topic.name, broker=self.url)
            groups = self.broker.topics[topic.name] = {}
        if group is not None:
            groups.setdefault(group, _Group())

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        broker = self.broker
        results = []
        for message in messages:
            groups = broker.topics.setdefault(message.topic, {})
            offset = broker.offsets.get(message.topic, 0)
            broker.offsets[message.topic] = offset + 1
            stamp = message.timestamp if message.timestamp is not None else time.time()
            for group in groups.values():
                group.queue.append(
                    Message(
                        message.topic,
                        message.value,
                        None,
                        {},
                        None,
                        offset,
                        stamp,
                        next(broker.tokens),
                    )
                )
                group.changed.set()
            results.append(RecordMetadata(message.topic, None, offset, stamp))
        return results

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        broker = self.broker
        groups = [
            broker.topics.setdefault(t.name, {}).setdefault(spec.group, _Group(spec.ephemeral)) for t in spec.topics
        ]
        for group in groups:
            group.members += 1
        member = _Member(groups, spec.prefetch)
        self._members.append(member)
        return member

    def client_version(self) -> str:
        return "loopback (example driver)"
