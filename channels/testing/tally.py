"""Tally: counts what a case sent and what came back, for failure messages that say why."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable

__all__ = ["Tally"]

_SHOW = 10


def _ids(ids: Iterable[str]) -> str:
    items = list(ids)
    shown = ", ".join(items[:_SHOW])
    if len(items) > _SHOW:
        shown += f", ... ({len(items) - _SHOW} more)"
    return shown


class Tally:
    """Records message ids sent and received, and formats loss, duplicates and reordering.

    Ids are expected in send order; ``lane`` groups ids whose order matters together (a
    key, for per-key ordering): a new id arriving after a later id of its lane counts as
    out of order (reported when ``ordered``). ``summary()`` reads like
    ``sent 1000, received 998 unique, lost 2 (ids 17, 801), duplicates 3, out of order 0``.
    """

    def __init__(self, ids: Iterable[str] = (), *, lane: Hashable = None, ordered: bool = False) -> None:
        #: report reordering in the summary (set when the case promises an order)
        self.ordered = ordered
        self._index: dict[str, tuple[Hashable, int]] = {}
        self._lane_len: dict[Hashable, int] = {}
        self.expected: list[str] = []
        self.received: list[str] = []
        self._seen: set[str] = set()
        self._lane_max: dict[Hashable, int] = {}
        self.duplicates = 0
        self.duplicate_ids: list[str] = []
        self.out_of_order = 0
        self.out_of_order_ids: list[str] = []
        self.unexpected: list[str] = []
        self._done = asyncio.Event()
        self.expect(ids, lane=lane)

    def expect(self, ids: Iterable[str] | str, *, lane: Hashable = None) -> None:
        """Add ids that must arrive (in this order within ``lane``)."""
        if isinstance(ids, str):
            ids = [ids]
        for item in ids:
            if item in self._index:
                raise ValueError(f"id {item!r} expected twice")
            position = self._lane_len.get(lane, 0)
            self._lane_len[lane] = position + 1
            self._index[item] = (lane, position)
            self.expected.append(item)
            if item in self._seen and item in self.unexpected:
                # it arrived before it was expected (e.g. before its send was confirmed)
                self.unexpected.remove(item)
                self.received.append(item)
        self._update()

    def add(self, item: str | None) -> bool:
        """Record one arrival; True if it is new and expected."""
        key = "<no id>" if item is None else item
        if key in self._seen:
            self.duplicates += 1
            self.duplicate_ids.append(key)
            return False
        self._seen.add(key)
        where = self._index.get(key)
        if where is None:
            self.unexpected.append(key)
            return False
        self.received.append(key)
        lane, position = where
        top = self._lane_max.get(lane, -1)
        if position < top:
            self.out_of_order += 1
            self.out_of_order_ids.append(key)
        else:
            self._lane_max[lane] = position
        self._update()
        return True

    def _update(self) -> None:
        if self.complete:
            self._done.set()
        else:
            self._done.clear()

    def seen(self, item: str) -> bool:
        return item in self._seen

    @property
    def complete(self) -> bool:
        return len(self.received) >= len(self.expected)

    @property
    def lost(self) -> list[str]:
        return [i for i in self.expected if i not in self._seen]

    async def wait(self, timeout: float) -> bool:
        """Wait until every expected id arrived; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def summary(self) -> str:
        lost = self.lost
        text = f"sent {len(self.expected)}, received {len(self.received)} unique, lost {len(lost)}"
        if lost:
            text += f" (ids {_ids(lost)})"
        text += f", duplicates {self.duplicates}"
        if self.duplicates:
            text += f" (ids {_ids(self.duplicate_ids)})"
        if self.ordered:
            text += f", out of order {self.out_of_order}"
            if self.out_of_order:
                text += f" (ids {_ids(self.out_of_order_ids)})"
        if self.unexpected:
            text += f", unexpected {len(self.unexpected)} (ids {_ids(self.unexpected)})"
        return text

    def check(
        self,
        *,
        duplicates_allowed: bool = True,
        ordered: bool = False,
        unexpected_allowed: bool = False,
        what: str = "",
    ) -> None:
        """Raise AssertionError with :meth:`summary` if anything is wrong."""
        problems = []
        if self.lost:
            problems.append("messages lost")
        if self.duplicates and not duplicates_allowed:
            problems.append("duplicates on a driver that promises exactly-once delivery")
        if (ordered or self.ordered) and self.out_of_order:
            problems.append("messages out of order")
        if self.unexpected and not unexpected_allowed:
            problems.append("messages that were not sent here arrived")
        if problems:
            prefix = f"{what}: " if what else ""
            raise AssertionError(f"{prefix}{'; '.join(problems)}: {self.summary()}")
