"""Deliberately broken drivers, to prove the conformance suite catches what it claims to.

Each toy is the memory driver with one bug:

* ``toy-lossy://``   silently drops every 500th message it is asked to publish (and still
  confirms it);
* ``toy-dup://``     publishes every 50th message twice while claiming ``exactly_once``;
* ``toy-reorder://`` swaps every 7th message of a batch with the next one of the same key;
* ``toy-header://``  drops headers whose value is empty (b"");
* ``toy-persistent://`` the memory driver claiming ``persistent``; what a "restart" does is
  up to the harness (:class:`KeepingHarness` keeps everything, :class:`AmnesiaHarness`
  forgets every stored message, as a broker writing nothing to disk would).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from channels.capabilities import Capabilities
from channels.events import Message, RecordMetadata
from channels.registry import register
from channels.testing import Harness
from transports import memory
from transports.memory import MemoryTransport

__all__ = ["TOYS", "AmnesiaHarness", "KeepingHarness", "register_toys"]


class LossyTransport(MemoryTransport):
    schemes = ("toy-lossy",)

    published = 0

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        kept: list[Message] = []
        dropped: set[int] = set()
        for index, message in enumerate(messages):
            self.published += 1
            if self.published % 500 == 0:
                dropped.add(index)
            else:
                kept.append(message)
        confirmed = iter(await super().publish(kept))
        return [RecordMetadata(m.topic, 0, -1) if i in dropped else next(confirmed) for i, m in enumerate(messages)]


class DuplicatingTransport(MemoryTransport):
    schemes = ("toy-dup",)

    published = 0

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, exactly_once=True)

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        results = []
        for message in messages:
            self.published += 1
            results += await super().publish([message])
            if self.published % 50 == 0:
                await super().publish([message])
        return results


class ReorderingTransport(MemoryTransport):
    schemes = ("toy-reorder",)

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        batch = list(messages)
        for i in range(0, len(batch), 7):
            for j in range(i + 1, len(batch)):
                if batch[j].key == batch[i].key:
                    batch[i], batch[j] = batch[j], batch[i]
                    break
        return await super().publish(batch)


class HeaderDroppingTransport(MemoryTransport):
    schemes = ("toy-header",)

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        stripped = [dataclasses.replace(m, headers={k: v for k, v in m.headers.items() if v}) for m in messages]
        return await super().publish(stripped)


class PersistentClaimTransport(MemoryTransport):
    schemes = ("toy-persistent",)

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, persistent=True)


class KeepingHarness(Harness):
    """A "restart" that keeps every stored message."""

    async def restart_broker(self) -> None:
        await asyncio.sleep(0.05)


class AmnesiaHarness(Harness):
    """A "restart" that forgets every message waiting for a group."""

    async def restart_broker(self) -> None:
        for broker in memory._brokers.get(asyncio.get_running_loop(), {}).values():
            for topic in broker.topics.values():
                for group in topic.groups.values():
                    for queue in group.pending:
                        queue.clear()
                    group.queued = 0


TOYS: dict[str, type[MemoryTransport]] = {
    "toy-lossy": LossyTransport,
    "toy-dup": DuplicatingTransport,
    "toy-reorder": ReorderingTransport,
    "toy-header": HeaderDroppingTransport,
    "toy-persistent": PersistentClaimTransport,
}


def register_toys() -> None:
    """Register every toy's scheme (idempotent)."""
    for scheme, cls in TOYS.items():
        register(scheme, cls)
