"""The conformance cases, and :func:`conformance_suite` which turns them into a pytest class.

Every case gets a :class:`Context` (the harness, the driver's capabilities, unique names,
apps that are closed afterwards) and raises AssertionError with counts when the driver
misbehaves. A case is skipped only when a ``Capabilities`` flag says the driver does not
promise what it checks, and the skip reason names that flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from channels.app import App
from channels.capabilities import Capabilities
from channels.errors import (
    CapabilityNotSupported,
    ChannelsError,
    ClosedError,
    EncodeError,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
)
from channels.events import Event, FutureMessage, Message, RecordMetadata
from channels.testing.harness import Harness
from channels.testing.tally import Tally
from channels.topic import EventStream, Topic
from transports.base import TopicSpec

__all__ = ["CASES", "ID_HEADER", "CaseInfo", "Context", "conformance_suite", "run_case"]

#: the header every case puts its message ids in
ID_HEADER = "conf-id"

KiB = 1024
MiB = 1024 * KiB

T = TypeVar("T")
CaseFunc = Callable[["Context"], Awaitable[None]]


@dataclass(frozen=True)
class CaseInfo:
    name: str
    func: CaseFunc
    #: seconds (before ``timeout_scale``) the whole case may take
    timeout: float
    #: flags that must be True for the case to run
    requires: tuple[str, ...] = ()
    #: flags that must be False for the case to run (cases about drivers without a feature)
    requires_not: tuple[str, ...] = ()

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip()

    def skip_reason(self, caps: Capabilities) -> str | None:
        for flag in self.requires:
            if not getattr(caps, flag):
                return f"driver lacks capability {flag!r}"
        for flag in self.requires_not:
            if getattr(caps, flag):
                return f"driver has capability {flag!r} (this case is for drivers without it)"
        return None


CASES: dict[str, CaseInfo] = {}


def case(
    timeout: float = 60.0, requires: Sequence[str] = (), requires_not: Sequence[str] = ()
) -> Callable[[CaseFunc], CaseFunc]:
    def register(func: CaseFunc) -> CaseFunc:
        for flag in (*requires, *requires_not):
            if not hasattr(Capabilities, flag):
                raise ValueError(f"unknown capability {flag!r} on case {func.__name__}")
        CASES[func.__name__] = CaseInfo(func.__name__, func, timeout, tuple(requires), tuple(requires_not))
        return func

    return register


def id_of(event: Event[Any, Any]) -> str | None:
    raw = event.headers.get(ID_HEADER)
    return None if raw is None else raw.decode("utf-8", "replace")


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


class _Boom(Exception):
    """The error a case's handler raises on purpose."""


class Context:
    """What a case works with: harness, capabilities, names, and apps closed at the end."""

    def __init__(self, harness: Harness, caps: Capabilities, case: str) -> None:
        self.harness = harness
        self.caps = caps
        self.case = case
        self._apps: list[App] = []
        #: what the case is doing, for the message when the whole case times out
        self.status: Callable[[], str] = lambda: "starting"

    def doing(self, what: str, tally: Tally | None = None) -> None:
        if tally is None:
            self.status = lambda: what
        else:
            self.status = lambda: f"{what}: {tally.summary()}"

    # -- helpers -----------------------------------------------------------------------

    def t(self, seconds: float) -> float:
        return self.harness.timeout(seconds)

    @property
    def duplicates_allowed(self) -> bool:
        return not self.caps.exactly_once

    def topic_name(self, what: str = "") -> str:
        return self.harness.topic_name(what or self.case)

    def group_name(self, what: str = "") -> str:
        return self.harness.group_name(what or self.case)

    async def app(self, **options: Any) -> App:
        """A started app on the harness URL, stopped when the case ends."""
        app = self.harness.app(**options)
        self._apps.append(app)
        await self.bounded(app.start(), 30.0, "starting an app")
        return app

    async def aclose(self, *, quiet: bool = False) -> None:
        apps, self._apps = self._apps, []
        first: Exception | None = None
        for app in reversed(apps):
            try:
                await asyncio.wait_for(app.stop(), self.t(45.0))
            except Exception as exc:
                first = first or exc
        if first is not None and not quiet:
            if isinstance(first, TimeoutError) and not isinstance(first, ChannelsError):
                raise AssertionError(f"app.stop() did not finish within {self.t(45.0):.0f}s")
            raise first

    async def bounded(self, aw: Awaitable[T], seconds: float, what: str) -> T:
        """Await ``aw`` for at most ``seconds`` (scaled); AssertionError naming ``what``."""
        limit = self.t(seconds)
        self.doing(what)
        try:
            return await asyncio.wait_for(aw, limit)
        except TimeoutError as exc:
            if isinstance(exc, ChannelsError):
                raise  # channels.errors.Timeout from inside: the caller checks for it
            raise AssertionError(f"{what} did not finish within {limit:.1f}s") from None

    async def stream(self, topic: Topic[Any, Any], **options: Any) -> EventStream[Any, Any]:
        """A started stream (membership in place) on ``topic``."""
        stream = topic.events(**options)
        await self.bounded(stream.start(), 30.0, f"joining group {topic.group!r}")
        return stream

    def send_soon(
        self,
        topic: Topic[Any, Any],
        message_ids: Iterable[str],
        *,
        key: Callable[[str], Any] | None = None,
        value: Callable[[str], Any] | None = None,
        headers: dict[str, str | bytes] | None = None,
    ) -> list[FutureMessage[Any, Any]]:
        out = []
        for mid in message_ids:
            out.append(
                topic.send_soon(
                    key=None if key is None else key(mid),
                    value=mid.encode() if value is None else value(mid),
                    headers={**(headers or {}), ID_HEADER: mid},
                )
            )
        return out

    async def confirmed(
        self, futures: Sequence[FutureMessage[Any, Any]], seconds: float = 30.0
    ) -> list[RecordMetadata]:
        """Wait until the broker confirmed every send."""
        return await self.bounded(
            asyncio.gather(*(f.future for f in futures)),
            seconds,
            f"confirming {len(futures)} send(s)",
        )

    async def send(self, topic: Topic[Any, Any], message_ids: Iterable[str], **kw: Any) -> list[RecordMetadata]:
        return await self.confirmed(self.send_soon(topic, message_ids, **kw))

    async def collect(
        self,
        stream: EventStream[Any, Any],
        tally: Tally,
        *,
        seconds: float = 30.0,
        manual: bool = False,
        until: Callable[[], bool] | None = None,
        on_event: Callable[[Event[Any, Any]], object] | None = None,
        what: str = "",
    ) -> None:
        """Receive into ``tally`` until it is complete (and ``until()``), bounded."""
        self.doing(f"receiving {what}".strip(), tally)
        loop = asyncio.get_running_loop()
        limit = self.t(seconds)
        deadline = loop.time() + limit
        while not (tally.complete and (until is None or until())):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                event = await stream.get(timeout=remaining)
            except Timeout:
                break
            tally.add(id_of(event))
            if on_event is not None:
                on_event(event)
            if manual:
                await event.ack()
        if not tally.complete or (until is not None and not until()):
            prefix = f"{what}: " if what else ""
            raise AssertionError(f"{prefix}messages lost (nothing more arrived in {limit:.1f}s): {tally.summary()}")

    async def collect_members(
        self,
        streams: Sequence[EventStream[Any, Any]],
        tally: Tally,
        *,
        seconds: float = 30.0,
        what: str = "",
    ) -> list[int]:
        """Receive on several members of a group at once; return how many each got."""
        counts = [0] * len(streams)
        self.doing(f"receiving on {len(streams)} members {what}".strip(), tally)

        async def member(index: int, stream: EventStream[Any, Any]) -> None:
            while True:
                try:
                    event = await stream.get(timeout=self.t(seconds))
                except Timeout:
                    continue
                counts[index] += 1
                tally.add(id_of(event))

        tasks = [asyncio.create_task(member(i, s)) for i, s in enumerate(streams)]
        try:
            done = await tally.wait(self.t(seconds))
        finally:
            for task in tasks:
                task.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=self.t(15))
        if stuck:
            raise AssertionError(
                f"{len(stuck)} member(s) did not stop within {self.t(15):.1f}s of being cancelled "
                f"in get() (a receive must be cancellable): {tally.summary()}"
            )
        results = [t.exception() if not t.cancelled() else None for t in tasks]
        for result in results:
            if result is not None:
                raise result
        if not done:
            prefix = f"{what}: " if what else ""
            raise AssertionError(
                f"{prefix}messages lost (nothing more arrived within {self.t(seconds):.1f}s; "
                f"per member {counts}): {tally.summary()}"
            )
        return counts

    async def expect_no_more(self, stream: EventStream[Any, Any], seconds: float = 0.3) -> Event[Any, Any] | None:
        """The next event if one arrives within ``seconds``, else None (a negative check)."""
        try:
            return await stream.get(timeout=self.t(seconds))
        except Timeout:
            return None


async def run_case(harness: Harness, name: str) -> None:
    """Run one case against ``harness`` (skipping it if a capability flag says so)."""
    info = CASES[name]
    caps = harness.capabilities()
    reason = info.skip_reason(caps)
    if reason is not None:
        pytest.skip(reason)
    ctx = Context(harness, caps, name)
    try:
        await asyncio.wait_for(info.func(ctx), harness.timeout(info.timeout))
    except TimeoutError as exc:
        await ctx.aclose(quiet=True)
        if isinstance(exc, ChannelsError):
            raise
        raise AssertionError(
            f"case {name} did not finish within {harness.timeout(info.timeout):.0f}s (it was {ctx.status()})"
        ) from None
    except BaseException:
        await ctx.aclose(quiet=True)
        raise
    await ctx.aclose()


# ============================================================================= cases
# Delivery


@case(timeout=60)
async def round_trip_1000(c: Context) -> None:
    """1,000 messages sent with send_soon all arrive at one member (no loss)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    tally = Tally(ids("m", 1000))
    stream = await c.stream(topic)
    await c.send(topic, tally.expected)
    await c.collect(stream, tally, seconds=30)
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60)
async def body_bytes_fidelity(c: Context) -> None:
    """Values come back byte for byte: empty b"", non-UTF-8 bytes, every byte value,
    bytes that look like our envelope's magic, plain ASCII."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    bodies = {
        "empty": b"",
        "non-utf8": b"\xff\xfe\xfd\x00\x80\xc3\x28",
        "all-bytes": bytes(range(256)) * 4,
        "magic": b"\x00CHE\x01\x00\x00\x00",
        "ascii": b"hello, world",
        "nul": b"\x00",
    }
    stream = await c.stream(topic)
    tally = Tally(bodies)
    got: dict[str, Any] = {}
    await c.send(topic, bodies, value=lambda mid: bodies[mid])
    await c.collect(stream, tally, on_event=lambda e: got.setdefault(id_of(e) or "", e.value))
    bad = {k: (bodies[k], got.get(k)) for k in bodies if got.get(k) != bodies[k]}
    assert not bad, f"values changed in transit (sent, received): {bad}"
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60)
async def body_json_fidelity(c: Context) -> None:
    """JSON values (objects, lists, unicode text, numbers, booleans, nulls inside) round-trip
    through the json codec."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name(), value_serializer="json")
    values: dict[str, Any] = {
        "obj": {"a": 1, "b": [1, 2, {"c": "ü日本 🚀"}], "d": None, "e": 1.5, "f": True},
        "list": [],
        "text": "naïve café",
        "zero": 0,
        "empty-obj": {},
        "false": False,
    }
    stream = await c.stream(topic)
    tally = Tally(values)
    got: dict[str, Any] = {}
    await c.send(topic, values, value=lambda mid: values[mid])
    await c.collect(stream, tally, on_event=lambda e: got.setdefault(id_of(e) or "", e.value))
    bad = {k: (values[k], got.get(k)) for k in values if got.get(k) != values[k]}
    assert not bad, f"JSON values changed in transit (sent, received): {bad}"


def large_body_size(caps: Capabilities) -> int:
    """1 MiB, or ``max_message_size - 64 KiB`` when the driver's limit is below 1 MiB + 64 KiB."""
    if caps.max_message_size >= MiB + 64 * KiB:
        return MiB
    return max(1, caps.max_message_size - 64 * KiB)


@case(timeout=90)
async def body_large(c: Context) -> None:
    """A 1 MiB value arrives intact. When the driver's max_message_size is below
    1 MiB + 64 KiB, the value is max_message_size - 64 KiB instead (the rest is room
    for key, headers and the envelope)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    size = large_body_size(c.caps)
    bodies = {mid: random.Random(mid).randbytes(size) for mid in ids("big", 2)}
    stream = await c.stream(topic)
    tally = Tally(bodies)
    got: dict[str, Any] = {}
    await c.send(topic, bodies, value=lambda mid: bodies[mid])
    await c.collect(stream, tally, seconds=60, on_event=lambda e: got.setdefault(id_of(e) or "", e.value))
    for mid, body in bodies.items():
        value = got.get(mid)
        assert value == body, (
            f"a {size}-byte value came back changed: {len(value) if isinstance(value, bytes) else value!r} bytes"
        )


@case(timeout=90)
async def largest_allowed_message(c: Context) -> None:
    """A message of exactly max_message_size bytes (key + value + headers, as the core
    counts them) is accepted by the broker and arrives intact: the declared limit is honest."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    limit = c.caps.max_message_size
    mid = "max00000"
    overhead = topic.prepare(key=b"k", value=b"", headers={ID_HEADER: mid}).size
    body = random.Random(7).randbytes(limit - overhead)
    assert topic.prepare(key=b"k", value=body, headers={ID_HEADER: mid}).size == limit
    stream = await c.stream(topic)
    await c.bounded(
        topic.send(key=b"k", value=body, headers={ID_HEADER: mid}),
        60,
        "sending the largest message",
    )
    event = await c.bounded(stream.get(), 60, "receiving the largest message")
    assert id_of(event) == mid and event.value == body and event.key == b"k", (
        f"the {limit}-byte message came back changed ({len(event.value or b'')} value bytes)"
    )


@case(timeout=60)
async def headers_fidelity(c: Context) -> None:
    """Headers round-trip: arbitrary bytes (b"\\x00\\xff", every byte value), an empty value,
    str values (sent UTF-8 encoded), unicode names and 40 headers on one message. Extra
    headers a driver adds are tolerated; missing or changed ones are not."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    rich: dict[str, str | bytes] = {
        "bin": b"\x00\xff",
        "empty": b"",
        "all-bytes": bytes(range(256)),
        "text": "café ☕",
        "名前-ñ": b"unicode name",
        "Mixed-Case": b"kept",
    }
    many: dict[str, str | bytes] = {f"h{i:02d}": f"value-{i}".encode() for i in range(40)}
    sets = {"rich": rich, "many": many, "none": {}}
    stream = await c.stream(topic)
    tally = Tally(sets)
    got: dict[str, dict[str, bytes]] = {}
    futures = [topic.send_soon(value=b"x", headers={**hs, ID_HEADER: mid}) for mid, hs in sets.items()]
    await c.confirmed(futures)
    await c.collect(stream, tally, on_event=lambda e: got.setdefault(id_of(e) or "", dict(e.headers)))
    problems = []
    for mid, sent in sets.items():
        received = got.get(mid, {})
        for name, value in sent.items():
            want = value.encode("utf-8") if isinstance(value, str) else value
            if name not in received:
                problems.append(f"{mid}: header {name!r} lost")
            elif received[name] != want:
                problems.append(f"{mid}: header {name!r} changed: sent {want!r}, received {received[name]!r}")
    assert not problems, "headers did not round-trip: " + "; ".join(problems)


@case(timeout=60)
async def key_fidelity_and_none_value(c: Context) -> None:
    """Keys (ASCII, non-UTF-8, None) arrive unchanged; a None value (a tombstone) arrives
    as None, never b""; an empty value b"" arrives as b"", never None."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    cases: dict[str, tuple[bytes | None, bytes | None]] = {
        "ascii-key": (b"user-1", b"v1"),
        "binary-key": (b"\xff\x00\x80", b"v2"),
        "no-key": (None, b"v3"),
        "tombstone": (b"user-2", None),
        "empty-value": (b"user-3", b""),
        "no-key-no-value": (None, None),
        "no-key-empty": (None, b""),
    }
    stream = await c.stream(topic)
    tally = Tally(cases)
    got: dict[str, tuple[Any, Any]] = {}
    futures = [topic.send_soon(key=k, value=v, headers={ID_HEADER: mid}) for mid, (k, v) in cases.items()]
    await c.confirmed(futures)
    await c.collect(stream, tally, on_event=lambda e: got.setdefault(id_of(e) or "", (e.key, e.value)))
    bad = {mid: (sent, got.get(mid)) for mid, sent in cases.items() if got.get(mid) != sent}
    assert not bad, f"(key, value) changed in transit, sent vs received: {bad}"


@case(timeout=60)
async def topic_isolation(c: Context) -> None:
    """Two topics, one group name: each stream receives only its own topic's messages."""
    app = await c.app()
    group = c.group_name()
    a = app.topic(c.topic_name("iso-a"), internal=True, group=group)
    b = app.topic(c.topic_name("iso-b"), internal=True, group=group)
    sa, sb = await c.stream(a), await c.stream(b)
    ta, tb = Tally(ids("a", 50)), Tally(ids("b", 50))
    await c.confirmed(c.send_soon(a, ta.expected) + c.send_soon(b, tb.expected))
    await asyncio.gather(c.collect(sa, ta, what="topic a"), c.collect(sb, tb, what="topic b"))
    ta.check(duplicates_allowed=c.duplicates_allowed, what="topic a")
    tb.check(duplicates_allowed=c.duplicates_allowed, what="topic b")


@case(timeout=90)
async def many_topics_at_once(c: Context) -> None:
    """20 topics with one member each, joined and fed at the same time: each gets its own 10."""
    app = await c.app()
    group = c.group_name()
    topics = [app.topic(c.topic_name(f"many{i}"), internal=True, group=group) for i in range(20)]
    streams = await c.bounded(asyncio.gather(*(t.events().start() for t in topics)), 60, "joining 20 topics")
    tallies = [Tally(ids(f"t{i:02d}-", 10)) for i in range(20)]
    futures = []
    for topic, tally in zip(topics, tallies, strict=True):
        futures += c.send_soon(topic, tally.expected)
    await c.confirmed(futures, 60)
    await asyncio.gather(
        *(c.collect(s, t, seconds=60, what=f"topic {i}") for i, (s, t) in enumerate(zip(streams, tallies, strict=True)))
    )
    for i, tally in enumerate(tallies):
        tally.check(duplicates_allowed=c.duplicates_allowed, what=f"topic {i}")


@case(timeout=60)
async def multi_topic_subscription(c: Context) -> None:
    """One Topic naming three topics: one stream receives from all three, and each event's
    message.topic names the topic it was sent to."""
    app = await c.app()
    names = [c.topic_name(f"multi{i}") for i in range(3)]
    group = c.group_name()
    topic = app.topic(*names, internal=True, group=group)
    stream = await c.stream(topic)
    senders = [app.topic(n) for n in names]
    tally = Tally()
    where: dict[str, str] = {}
    futures = []
    for i, sender in enumerate(senders):
        batch = ids(f"t{i}-", 10)
        tally.expect(batch)
        where.update(dict.fromkeys(batch, names[i]))
        futures += c.send_soon(sender, batch)
    await c.confirmed(futures)
    wrong: list[str] = []

    def check(event: Event[Any, Any]) -> None:
        mid = id_of(event) or ""
        if mid in where and event.message.topic != where[mid]:
            wrong.append(f"{mid} sent to {where[mid]!r} arrived as {event.message.topic!r}")

    await c.collect(stream, tally, on_event=check)
    assert not wrong, "message.topic is wrong: " + "; ".join(wrong[:5])
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60)
async def foreign_payload_raw(c: Context) -> None:
    """A payload published without our envelope (straight through the transport, as a
    foreign producer would) arrives as-is: the same bytes, key None, no headers."""
    app = await c.app()
    name = c.topic_name()
    topic = app.topic(name, internal=True, group=c.group_name())
    stream = await c.stream(topic)
    tag = name[-10:].encode()
    payloads = [
        b"plain text " + tag,
        b'{"json": "' + tag + b'"}',
        b"\x01\x02 binary " + tag,
        b"\x00CH " + tag,
    ]
    await c.bounded(app.transport.publish([Message(name, p) for p in payloads]), 30, "raw publish")
    got: list[Event[Any, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + c.t(30)
    while len({e.value for e in got}) < len(payloads) and loop.time() < deadline:
        try:
            got.append(await stream.get(timeout=max(0.01, deadline - loop.time())))
        except Timeout:
            break
    values = [e.value for e in got]
    missing = [p for p in payloads if p not in values]
    assert not missing, f"foreign payloads lost or changed: missing {missing}, received {values}"
    for event in got:
        assert event.key is None and not event.headers, (
            f"a foreign payload grew a key or headers: key={event.key!r} headers={event.headers!r}"
        )


# ============================================================================= groups


@case(timeout=60, requires=("fanout_groups",))
async def fanout_two_groups(c: Context) -> None:
    """Two groups on one topic: each receives every message."""
    app = await c.app()
    name = c.topic_name()
    t1 = app.topic(name, internal=True, group=c.group_name("g1"))
    t2 = app.topic(name, internal=True, group=c.group_name("g2"))
    s1, s2 = await c.stream(t1), await c.stream(t2)
    ta, tb = Tally(ids("m", 100)), Tally(ids("m", 100))
    await c.send(t1, ta.expected)
    await asyncio.gather(c.collect(s1, ta, what="group 1"), c.collect(s2, tb, what="group 2"))
    ta.check(duplicates_allowed=c.duplicates_allowed, what="group 1")
    tb.check(duplicates_allowed=c.duplicates_allowed, what="group 2")


@case(timeout=90, requires=("consumer_groups",))
async def competing_consumers(c: Context) -> None:
    """Three members of one group (6 partitions where the broker has them, 60 keys,
    prefetch 10): every member gets a share of 300 messages and together they lose nothing."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name(), partitions=6)
    streams = [await c.stream(topic, prefetch=10) for _ in range(3)]
    tally = Tally(ids("m", 300))
    await c.send(topic, tally.expected, key=lambda mid: f"k{int(mid[1:]) % 60:02d}".encode())
    counts = await c.collect_members(streams, tally, seconds=60)
    tally.check(duplicates_allowed=c.duplicates_allowed)
    assert all(counts), f"a member got nothing: messages per member {counts}"


@case(timeout=90, requires=("consumer_groups",))
async def member_leaves_others_take_over(c: Context) -> None:
    """Two members share a group; one leaves; everything sent afterwards reaches the other."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name(), partitions=4)
    s1, s2 = await c.stream(topic, prefetch=10), await c.stream(topic, prefetch=10)
    first = Tally(ids("a", 40))
    await c.send(topic, first.expected, key=lambda mid: mid.encode())
    await c.collect_members([s1, s2], first, what="before the member left")
    await c.bounded(s2.close(clean=True), 30, "closing a member")
    second = Tally(ids("b", 40))
    await c.send(topic, second.expected, key=lambda mid: mid.encode())
    await c.collect(s1, second, seconds=45, what="after the member left")
    second.check(duplicates_allowed=True, unexpected_allowed=True)


@case(timeout=90, requires=("per_key_ordering",))
async def per_key_ordering(c: Context) -> None:
    """20 keys x 25 messages sent in order to a group of three members (6 partitions):
    each key's messages arrive in the order they were sent."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name(), partitions=6)
    streams = [await c.stream(topic, prefetch=10) for _ in range(3)]
    tally = Tally(ordered=True)
    order: list[str] = []
    for seq in range(25):
        for k in range(20):
            order.append(f"k{k:02d}-{seq:03d}")
    for k in range(20):
        tally.expect([mid for mid in order if mid.startswith(f"k{k:02d}-")], lane=k)
    await c.send(topic, order, key=lambda mid: mid[:3].encode())
    await c.collect_members(streams, tally, seconds=60)
    tally.check(duplicates_allowed=c.duplicates_allowed, ordered=True)


# ============================================================================= acks


@case(timeout=60)
async def manual_ack_mode(c: Context) -> None:
    """With acks="manual" nothing is acked by get(): of five messages, the two never acked
    come back to a new member after the first one closes (with ack)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    sent = ids("m", 5)
    await c.send(topic, sent)
    events: dict[str, Event[Any, Any]] = {}
    tally = Tally(sent)
    await c.collect(stream, tally, on_event=lambda e: events.setdefault(id_of(e) or "", e))
    for mid in ("m00000", "m00001", "m00003"):
        await events[mid].ack()
    assert events["m00000"].acked and not events["m00002"].acked
    await c.bounded(stream.close(), 30, "closing the stream")
    if not c.caps.ack:
        return
    again = await c.stream(topic, acks="manual")
    back = Tally(["m00002", "m00004"])
    await c.collect(again, back, manual=True, what="unacked messages after reopening")
    if not c.duplicates_allowed:
        back.check(duplicates_allowed=False)


@case(timeout=60, requires=("ack",))
async def auto_ack_mode(c: Context) -> None:
    """With acks="auto" an event is acked when the next one is requested; the last one is
    acked when the stream's block exits cleanly, and comes back after an unclean close."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic)
    await c.send(topic, ["m00000"])
    first = await c.bounded(stream.get(), 30, "first get")
    assert not first.acked, "auto ack acked an event before the next one was requested"
    await c.send(topic, ["m00001"])
    second = await c.bounded(stream.get(), 30, "second get")
    assert first.acked, "auto ack did not ack the previous event on the next get"
    assert not second.acked
    await c.bounded(stream.close(clean=False), 30, "unclean close")
    again = await c.stream(topic)
    back = Tally([id_of(second) or ""])
    await c.collect(again, back, what="the unacked last event after an unclean close")
    await c.bounded(again.close(clean=True), 30, "clean close")
    await c.send(topic, ["m00002"])
    async with topic.events() as third_stream:
        seen = Tally(["m00002"])
        last: list[Event[Any, Any]] = []
        await c.collect(third_stream, seen, on_event=last.append)
    assert last and last[-1].acked, "a clean exit of `async with stream` did not ack the last event"


@case(timeout=60)
async def event_context_manager(c: Context) -> None:
    """`async with event:` acks on a clean exit; when the block raises it nacks (requeue),
    so the message comes back where the driver has redelivery_on_nack, and otherwise it
    stays unacked (nack is not silently turned into an ack)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    await c.send(topic, ["ok00000", "err0000"])
    tally = Tally(["ok00000", "err0000"])
    events: dict[str, Event[Any, Any]] = {}
    await c.collect(stream, tally, on_event=lambda e: events.setdefault(id_of(e) or "", e))
    async with events["ok00000"]:
        pass
    assert events["ok00000"].acked, "a clean exit of `async with event` did not ack"
    with contextlib.suppress(_Boom):
        async with events["err0000"]:
            raise _Boom
    if c.caps.redelivery_on_nack:
        assert events["err0000"].acked, "a failing `async with event` block did not nack"
        back = Tally(["err0000"])
        await c.collect(stream, back, manual=True, what="the nacked message")
    else:
        assert not events["err0000"].acked, (
            "a failing `async with event` block settled the event on a driver without nack"
        )


@case(timeout=60, requires=("redelivery_on_nack",))
async def nack_redelivers(c: Context) -> None:
    """nack(requeue=True) makes the broker deliver the message again, unchanged."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    await c.send(topic, ["n00000"], key=lambda _: b"key", headers={"h": b"\x00\xff"})
    event = await c.bounded(stream.get(), 30, "first delivery")
    assert id_of(event) == "n00000"
    await event.nack(requeue=True)
    assert event.acked
    again = await c.bounded(stream.get(), 30, "redelivery after nack")
    assert id_of(again) == "n00000", f"expected the nacked message again, got {id_of(again)!r}"
    assert (again.key, again.value, again.headers.get("h")) == (b"key", b"n00000", b"\x00\xff"), (
        f"the redelivered message changed: key={again.key!r} value={again.value!r} headers={again.headers!r}"
    )
    await again.ack()


@case(timeout=60, requires=("redelivery_on_nack",))
async def nack_without_requeue_drops(c: Context) -> None:
    """nack(requeue=False) settles the message for good: it does not come back, not even
    to a new member after the first one closed."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    await c.send(topic, ["drop000"])
    event = await c.bounded(stream.get(), 30, "delivery")
    await event.nack(requeue=False)
    assert event.acked
    await c.send(topic, ["after00"])
    seen = Tally(["after00"])
    await c.collect(stream, seen, manual=True, what="the message after the dropped one")
    await c.bounded(stream.close(), 30, "closing the stream")
    again = await c.stream(topic, acks="manual")
    await c.send(topic, ["last000"])
    last = Tally(["last000"])
    await c.collect(again, last, manual=True, what="a new member")
    extra = await c.expect_no_more(again, 0.3)
    came_back = [*seen.unexpected, *last.unexpected, *([id_of(extra) or ""] if extra else [])]
    assert "drop000" not in came_back, f"a message nacked with requeue=False came back: {came_back}"


@case(timeout=60, requires_not=("redelivery_on_nack",))
async def nack_without_capability_raises(c: Context) -> None:
    """On a driver without redelivery_on_nack, event.nack() raises CapabilityNotSupported
    instead of doing nothing, and the event can still be acked."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    await c.send(topic, ["n00000"])
    event = await c.bounded(stream.get(), 30, "delivery")
    with pytest.raises(CapabilityNotSupported):
        await event.nack()
    assert not event.acked, "a refused nack marked the event settled"
    await event.ack()
    assert event.acked


@case(timeout=60)
async def double_ack_harmless(c: Context) -> None:
    """Acking a message twice (and nacking an acked one) does nothing: the stream goes on,
    and no acked message comes back to the next member."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    await c.send(topic, ["a00000", "b00000"])
    first = Tally(["a00000", "b00000"])
    events: list[Event[Any, Any]] = []
    await c.collect(stream, first, on_event=events.append)
    for event in events:
        await event.ack()
        await event.ack()
        await stream.ack_message(event.message)
        await stream.ack_message(event.message)
        await event.nack()
    await c.send(topic, ["c00000"])
    await c.collect(stream, Tally(["c00000"]), manual=True, what="after double acks")
    await c.bounded(stream.close(), 30, "closing the stream")
    again = await c.stream(topic, acks="manual")
    await c.send(topic, ["d00000"])
    after = Tally(["d00000"])
    await c.collect(again, after, manual=True, what="a new member")
    assert not after.unexpected, f"acked messages came back: {after.unexpected}"


@case(timeout=60, requires=("ack",))
async def handler_error_does_not_stall(c: Context) -> None:
    """A handler raising inside `async with event:` for one message does not stop the
    stream: the other 19 arrive, and with redelivery_on_nack the failed one comes back."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    sent = ids("m", 20)
    bad = sent[4]
    await c.send(topic, sent)
    failed: list[str] = []
    redelivers = c.caps.redelivery_on_nack
    tally = Tally(sent if redelivers else [m for m in sent if m != bad])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + c.t(30)
    while not tally.complete and loop.time() < deadline:
        try:
            event = await stream.get(timeout=max(0.01, deadline - loop.time()))
        except Timeout:
            break
        mid = id_of(event)
        with contextlib.suppress(_Boom):
            async with event:
                if mid == bad and not failed:
                    failed.append(mid)
                    raise _Boom
                tally.add(mid)
    assert failed == [bad], f"the failing message {bad} never arrived: {tally.summary()}"
    what = "the stream stalled after a handler error"
    if redelivers:
        what += f" (the failed {bad} must come back after its nack)"
    tally.check(duplicates_allowed=c.duplicates_allowed, unexpected_allowed=True, what=what)


@case(timeout=90, requires=("ack",))
async def subscriber_restart_loses_nothing(c: Context) -> None:
    """Consume and ack 50 of 100, receive the 51st without acking, close the stream, open a
    new member: every message arrives, the unacked one again."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic, acks="manual")
    tally = Tally(ids("m", 100))
    await c.send(topic, tally.expected)
    held: list[str] = []
    for i in range(51):
        event = await c.bounded(stream.get(), 30, f"receiving ({tally.summary()})")
        tally.add(id_of(event))
        if i < 50:
            await event.ack()
        else:
            held.append(id_of(event) or "")
    await c.bounded(stream.close(), 30, "closing the first member")
    again = await c.stream(topic, acks="manual")
    seen_again: list[str] = []
    await c.collect(
        again,
        tally,
        manual=True,
        seconds=45,
        until=lambda: held[0] in seen_again,
        on_event=lambda e: seen_again.append(id_of(e) or ""),
        what=f"after the restart (the unacked {held[0]} must come back)",
    )
    tally.check(duplicates_allowed=True)


@case(timeout=60)
async def publish_after_declare_before_subscribe(c: Context) -> None:
    """declare() with the group, send, and only then subscribe: everything arrives."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    await c.bounded(topic.declare(), 30, "declare")
    tally = Tally(ids("m", 50))
    await c.send(topic, tally.expected)
    stream = await c.stream(topic)
    await c.collect(stream, tally)
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=90)
async def ephemeral_group_keeps_nothing(c: Context) -> None:
    """An ephemeral group lives only while it has members: its member gets what is sent
    meanwhile; once the last member left, what is sent is kept for nobody, and a new member
    of the same group gets only what is sent after it joined (what ``channels tail`` uses)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, partitions=1, group=c.group_name(), ephemeral=True)
    await c.bounded(topic.declare(), 30, "declare")
    # The application's own (durable) group on the topic: what the topic holds is kept for
    # it. (On NSQ a topic without any group at all hands its backlog to the first group
    # that comes, whatever it is: that is the topic's, not the ephemeral group's.)
    await c.bounded(topic.clone(group=c.group_name("app"), ephemeral=False).declare(), 30, "declare")
    first = await c.stream(topic)
    tally = Tally(ids("a", 10))
    await c.send(topic, tally.expected)
    await c.collect(first, tally, what="by the first member")
    tally.check(duplicates_allowed=c.duplicates_allowed)
    await c.bounded(first.close(), 30, "closing the only member")
    # Nobody is in the group now: these are kept for nobody. A driver may refuse them
    # (RabbitMQ's mandatory flag: they reach no queue); either way none may come later.
    for gone in ids("gone", 10):
        with contextlib.suppress(ChannelsError):
            await c.send(topic, [gone])
    second = await c.stream(topic)
    later = Tally(ids("b", 10))
    await c.send(topic, later.expected)
    await c.collect(second, later, what="by a new member (the messages sent while the group was empty must not come)")
    later.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60, requires=("ack",))
async def cancelled_handler_not_acked(c: Context) -> None:
    """Cancelling a consumer task in the middle of its handler acks nothing: a new member
    receives that message again."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    joined, handling, never = asyncio.Event(), asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def consumer() -> None:
        async with topic.events() as stream:
            joined.set()
            async for event in stream:
                async with event:
                    handled.append(id_of(event) or "")
                    handling.set()
                    await never.wait()

    task = asyncio.create_task(consumer())
    await c.bounded(joined.wait(), 30, "the consumer joining")
    await c.send(topic, ["m00000"])
    await c.bounded(handling.wait(), 30, "the handler starting")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await c.bounded(task, 30, "the cancelled consumer finishing")
    assert handled == ["m00000"]
    stream = await c.stream(topic)
    await c.collect(stream, Tally(["m00000"]), what="the message whose handler was cancelled")


@case(timeout=60)
async def cancelled_receive_loses_nothing(c: Context) -> None:
    """get(timeout=...) that keeps timing out while 300 messages arrive (so receives are
    cancelled at every point) loses none of them."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic)
    with pytest.raises(Timeout):
        await stream.get(timeout=0.01)
    tally = Tally(ids("m", 300))
    futures: list[FutureMessage[Any, Any]] = []

    async def produce() -> None:
        for chunk in range(0, 300, 30):
            futures.extend(c.send_soon(topic, tally.expected[chunk : chunk + 30]))
            await asyncio.sleep(0.005)

    producer = asyncio.create_task(produce())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + c.t(40)
    timeouts = 0
    while not tally.complete and loop.time() < deadline:
        try:
            event = await stream.get(timeout=0.002)
        except Timeout:
            timeouts += 1
            continue
        tally.add(id_of(event))
    await producer
    await c.confirmed(futures)
    if not tally.complete:
        await c.collect(stream, tally, seconds=10)
    tally.check(duplicates_allowed=c.duplicates_allowed, what=f"after {timeouts} timed-out gets")


# ============================================================================= producers, lifecycle


@case(timeout=60)
async def send_soon_flushed_on_close(c: Context) -> None:
    """500 send_soon calls followed at once by app.stop(): stop reports 0 undelivered, every
    future holds its RecordMetadata, and a consumer receives all 500."""
    app = await c.app()
    name, group = c.topic_name(), c.group_name()
    stream = await c.stream(app.topic(name, internal=True, group=group))
    producer_app = await c.app()
    ptopic = producer_app.topic(name, internal=True, group=group)
    tally = Tally(ids("m", 500))
    futures = c.send_soon(ptopic, tally.expected)
    undelivered = await c.bounded(producer_app.stop(), 45, "stopping the producer app")
    assert undelivered == 0, f"app.stop() reported {undelivered} undelivered messages"
    not_done = [f for f in futures if not f.done()]
    assert not not_done, f"{len(not_done)} send_soon futures still pending after stop()"
    wrong = [f.future.result().topic for f in futures if f.future.result().topic != name]
    assert not wrong, f"RecordMetadata names the wrong topic: {wrong[:3]}"
    await c.collect(stream, tally)
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=90)
async def concurrent_open_close(c: Context) -> None:
    """10 apps started, used and stopped concurrently (start and stop each called twice at
    once): every message they sent arrives."""
    app = await c.app()
    name, group = c.topic_name(), c.group_name()
    stream = await c.stream(app.topic(name, internal=True, group=group))
    tally = Tally(ids("app", 10))

    async def one(mid: str) -> None:
        other = c.harness.app()
        try:
            await asyncio.gather(other.start(), other.start())
            topic = other.topic(name)
            await topic.send(value=mid.encode(), headers={ID_HEADER: mid})
        finally:
            await asyncio.gather(other.stop(), other.stop())
        assert other.closed

    await c.bounded(asyncio.gather(*(one(mid) for mid in tally.expected)), 60, "10 apps")
    await c.collect(stream, tally)
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60)
async def use_after_close_raises(c: Context) -> None:
    """After app.stop(): send, send_soon, get, declare, a stream's get and app.start()
    raise ClosedError; stop() again is harmless."""
    app = c.harness.app()
    await c.bounded(app.start(), 30, "starting the app")
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic)
    await c.send(topic, ["m00000"])
    await c.bounded(app.stop(), 30, "stopping the app")
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "send": lambda: topic.send(value=b"x"),
        "get": lambda: topic.get(timeout=1.0),
        "declare": topic.declare,
        "stream.get": lambda: stream.get(timeout=1.0),
        "app.start": app.start,
    }
    wrong = []
    for what, call in checks.items():
        try:
            await c.bounded(call(), 10, what)
        except ClosedError:
            continue
        except Exception as exc:
            wrong.append(f"{what} raised {type(exc).__name__}: {exc}")
        else:
            wrong.append(f"{what} succeeded")
    try:
        topic.send_soon(value=b"x")
        wrong.append("send_soon succeeded")
    except ClosedError:
        pass
    assert not wrong, "after close: " + "; ".join(wrong)
    await c.bounded(app.stop(), 10, "stopping again")


@case(timeout=60)
async def get_timeout_raises(c: Context) -> None:
    """get(timeout=0.3) on an empty topic raises channels.errors.Timeout (a TimeoutError)
    after about 0.3 s, and the topic still delivers afterwards."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    await c.bounded(topic.declare(), 30, "declare")
    started = time.monotonic()
    with pytest.raises(Timeout) as info:
        await c.bounded(topic.get(timeout=0.3), 30, "get(timeout=0.3)")
    elapsed = time.monotonic() - started
    assert isinstance(info.value, TimeoutError)
    assert elapsed >= 0.29, f"get(timeout=0.3) gave up after {elapsed:.3f}s"
    await c.send(topic, ["m00000"])
    event = await c.bounded(topic.get(timeout=c.t(30)), 35, "get after a timeout")
    assert id_of(event) == "m00000"


@case(timeout=60)
async def record_metadata(c: Context) -> None:
    """send() and send_soon() resolve to RecordMetadata naming the topic; where both the
    metadata and the received message carry a partition, they agree."""
    app = await c.app()
    name = c.topic_name()
    topic = app.topic(name, internal=True, group=c.group_name())
    stream = await c.stream(topic)
    md = await c.bounded(topic.send(value=b"a", headers={ID_HEADER: "m00000"}), 30, "send")
    soon = topic.send_soon(value=b"b", headers={ID_HEADER: "m00001"})
    md2 = await c.bounded(soon, 30, "send_soon")
    for m in (md, md2):
        assert isinstance(m, RecordMetadata), f"send returned {m!r}"
        assert m.topic == name, f"RecordMetadata names topic {m.topic!r}, not {name!r}"
    sent = {"m00000": md, "m00001": md2}
    tally = Tally(sent)
    wrong: list[str] = []

    def check(event: Event[Any, Any]) -> None:
        m = sent.get(id_of(event) or "")
        if event.message.topic != name:
            wrong.append(f"message.topic is {event.message.topic!r}")
        if m is not None and m.partition is not None and event.message.partition is not None:
            if m.partition != event.message.partition:
                wrong.append(f"sent to partition {m.partition}, received from {event.message.partition}")

    await c.collect(stream, tally, on_event=check)
    assert not wrong, "; ".join(wrong)


# ============================================================================= topics


@case(timeout=60, requires=("topic_check",))
async def source_topic_never_created(c: Context) -> None:
    """Declaring (or subscribing to) a source topic that does not exist raises
    TopicNotFound naming it, and afterwards the topic still does not exist."""
    app = await c.app()
    name = c.topic_name("src")
    source = app.topic(name, group=c.group_name())
    with pytest.raises(TopicNotFound) as info:
        await c.bounded(source.declare(), 30, "declaring a missing source topic")
    assert info.value.topic == name, f"TopicNotFound names {info.value.topic!r}"
    with pytest.raises(TopicNotFound):
        await c.bounded(source.events().start(), 30, "subscribing to a missing source topic")
    other = await c.app()
    with pytest.raises(TopicNotFound):
        await c.bounded(other.topic(name).declare(), 30, "declaring it again from another app")


@case(timeout=60)
async def existing_source_topic_usable(c: Context) -> None:
    """A topic created by one app (internal) can be used by another as a source topic:
    declare succeeds without creating anything, and its stream receives."""
    owner = await c.app()
    name = c.topic_name()
    await c.bounded(owner.transport.declare(TopicSpec(name, internal=True)), 30, "creating the topic")
    reader = await c.app()
    source = reader.topic(name, group=c.group_name())
    await c.bounded(source.declare(), 30, "declaring the source topic")
    stream = await c.stream(source)
    tally = Tally(ids("m", 10))
    await c.send(owner.topic(name), tally.expected)
    await c.collect(stream, tally)


@case(timeout=60)
async def oversize_raises_before_sending(c: Context) -> None:
    """A message one byte over max_message_size raises MessageTooLarge (naming the limit)
    from send() and send_soon() before anything is sent; the topic stays usable."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic)
    limit = c.caps.max_message_size
    overhead = topic.prepare(value=b"", headers={ID_HEADER: "big0000"}).size
    body = b"\x00" * (limit - overhead + 1)
    with pytest.raises(MessageTooLarge) as info:
        await c.bounded(topic.send(value=body, headers={ID_HEADER: "big0000"}), 30, "oversize send")
    assert info.value.limit == limit, f"MessageTooLarge names limit {info.value.limit}, not {limit}"
    with pytest.raises(MessageTooLarge):
        topic.send_soon(value=body, headers={ID_HEADER: "big0001"})
    await c.send(topic, ["after00"])
    event = await c.bounded(stream.get(), 30, "the message after the oversize one")
    assert id_of(event) == "after00", f"expected 'after00' first, got {id_of(event)!r}"


@case(timeout=60)
async def invalid_headers_raise(c: Context) -> None:
    """Headers that are not str -> bytes|str (an int value, a non-str or empty name, a list
    instead of a mapping) raise EncodeError at the call; nothing is sent."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    stream = await c.stream(topic)
    bad: list[Any] = [{"n": 1}, {1: b"x"}, {"": b"x"}, {"n": None}, [("a", b"b")]]
    for headers in bad:
        with pytest.raises(EncodeError):
            await c.bounded(topic.send(value=b"bad", headers=headers), 10, "send")
        with pytest.raises(EncodeError):
            topic.send_soon(value=b"bad", headers=headers)
    await c.send(topic, ["after00"])
    event = await c.bounded(stream.get(), 30, "the message after the bad ones")
    assert id_of(event) == "after00", f"a rejected message was sent: {event!r}"


@case(timeout=60, requires=("patterns",))
async def pattern_subscription(c: Context) -> None:
    """A pattern subscription receives from every existing topic whose name matches and
    from no other."""
    app = await c.app()
    base = c.topic_name("pat")
    names = [f"{base}-a", f"{base}-b"]
    other = c.topic_name("nopat")
    for name in (*names, other):
        await c.bounded(app.transport.declare(TopicSpec(name, internal=True)), 30, "declare")
    topic = app.topic(pattern=f"{base}-.*", group=c.group_name())
    stream = await c.stream(topic)
    tally = Tally()
    futures = c.send_soon(app.topic(other), ids("x", 10))
    for i, name in enumerate(names):
        batch = ids(f"{'ab'[i]}", 10)
        tally.expect(batch)
        futures += c.send_soon(app.topic(name), batch)
    await c.confirmed(futures)
    await c.collect(stream, tally)
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=60, requires=("explicit_partitions",))
async def explicit_partition(c: Context) -> None:
    """send(partition=n) puts the message in partition n: the metadata and the received
    message say so."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name(), partitions=4)
    stream = await c.stream(topic)
    wanted = {f"p{p}-{i:04d}": p for p in (2, 3) for i in range(5)}
    futures = [topic.send_soon(value=b"x", partition=p, headers={ID_HEADER: mid}) for mid, p in wanted.items()]
    mds = await c.confirmed(futures)
    wrong = [
        f"{mid}: metadata partition {md.partition}"
        for (mid, p), md in zip(wanted.items(), mds, strict=True)
        if md.partition != p
    ]
    tally = Tally(wanted)

    def check(event: Event[Any, Any]) -> None:
        mid = id_of(event) or ""
        if mid in wanted and event.message.partition != wanted[mid]:
            wrong.append(f"{mid}: received from partition {event.message.partition}, sent to {wanted[mid]}")

    await c.collect(stream, tally, on_event=check)
    assert not wrong, "explicit partitions not honoured: " + "; ".join(wrong[:5])


@case(timeout=60, requires=("replay_from_start",))
async def replay_from_start(c: Context) -> None:
    """A new group with from_beginning=True receives messages sent before it existed."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name("first"))
    await c.bounded(topic.declare(), 30, "declare")
    tally = Tally(ids("m", 10))
    await c.send(topic, tally.expected)
    late = topic.clone(group=c.group_name("late"))
    stream = await c.stream(late, from_beginning=True)
    await c.collect(stream, tally)


@case(timeout=30, requires_not=("replay_from_start",))
async def from_beginning_without_replay_raises(c: Context) -> None:
    """On a driver without replay_from_start, a stream with from_beginning=True raises
    CapabilityNotSupported when it starts (never a silent start at the newest message)."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    with pytest.raises(CapabilityNotSupported):
        await c.bounded(topic.events(from_beginning=True).start(), 30, "start")


# ========================================================== flow control, failures


@case(timeout=60, requires=("ack",))
async def backpressure_window(c: Context) -> None:
    """A stream with prefetch=10 never hands out more than 10 unacked messages: with 200
    sent and acks held back, the 11th does not arrive until some are acked; all 200 arrive."""
    app = await c.app()
    topic = app.topic(c.topic_name(), internal=True, group=c.group_name())
    prefetch = 10
    stream = await c.stream(topic, acks="manual", prefetch=prefetch)
    tally = Tally(ids("m", 200))
    await c.send(topic, tally.expected)
    outstanding: list[Event[Any, Any]] = []
    most = 0
    probes = 0
    violations: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + c.t(40)
    while not tally.complete:
        if len(outstanding) >= prefetch:
            if probes < 2:
                probes += 1
                extra = await c.expect_no_more(stream, 0.3)
                if extra is not None:
                    violations.append(f"got {id_of(extra)} with {len(outstanding)} unacked")
                    outstanding.append(extra)
                    tally.add(id_of(extra))
                    most = max(most, len(outstanding))
            for event in outstanding:
                await event.ack()
            outstanding.clear()
            continue
        remaining = deadline - loop.time()
        try:
            event = await stream.get(timeout=max(0.01, remaining))
        except Timeout:
            raise AssertionError(
                f"stalled with {len(outstanding)} unacked (prefetch {prefetch}): {tally.summary()}"
            ) from None
        outstanding.append(event)
        most = max(most, len(outstanding))
        tally.add(id_of(event))
    assert not violations and most <= prefetch, (
        f"more than prefetch={prefetch} unacked messages handed out (most {most}): {violations}"
    )
    tally.check(duplicates_allowed=c.duplicates_allowed)


@case(timeout=400, requires=("persistent",))
async def broker_restart_loses_nothing(c: Context) -> None:
    """Restart the broker with a consumer running (prefetch 10) and 100 confirmed messages
    waiting for it (the consumer paused), then send 100 more: every message whose send was confirmed
    arrives (lost and duplicates counted; duplicates allowed unless exactly_once). The
    consumer may reopen its stream if the driver gives up on the connection. Needs a harness
    that can restart the broker (restart_command)."""
    assert c.harness.can_restart, (
        "the driver claims capability 'persistent' but the harness cannot restart the broker: "
        "give Harness(restart_command=[...]) or `channels conformance --restart-command CMD`"
    )
    name, group = c.topic_name(), c.group_name()
    consumer_app = await c.app()
    topic = consumer_app.topic(name, internal=True, group=group)
    tally = Tally()
    joined, running = asyncio.Event(), asyncio.Event()
    running.set()
    reopened = 0

    async def consume() -> None:
        nonlocal reopened
        stream: EventStream[Any, Any] | None = None
        while True:
            await running.wait()
            try:
                if stream is None:
                    stream = await topic.events(acks="manual", prefetch=10).start()
                    joined.set()
                event = await stream.get(timeout=c.t(5))
                tally.add(id_of(event))
                await event.ack()
            except Timeout:
                continue
            except ChannelsError:
                # The driver gave up on the connection: a real application opens a new member.
                reopened += 1
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(stream.close(), c.t(10))
                stream = None
                await asyncio.sleep(0.5)

    consumer = asyncio.create_task(consume())
    await c.bounded(joined.wait(), 30, "the consumer joining")
    producer_app = await c.app()
    ptopic = producer_app.topic(name)
    unconfirmed: list[str] = []

    async def send_batch(batch: list[str], seconds: float) -> None:
        """Send until confirmed (a failed send is no promise, so it is sent again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.t(seconds)
        pending = list(batch)
        while pending and loop.time() < deadline:
            retry = []
            try:
                futures = c.send_soon(ptopic, pending)
                done, _ = await asyncio.wait([f.future for f in futures], timeout=max(0.1, deadline - loop.time()))
            except ChannelsError:
                futures, done = [], set()
                retry = pending
            for mid, fut in zip(pending, futures, strict=False):
                if fut.future in done and fut.future.exception() is None:
                    tally.expect(mid)
                else:
                    retry.append(mid)
            pending = retry
            if pending:
                await asyncio.sleep(0.5)
        unconfirmed.extend(pending)

    ok = False
    try:
        await send_batch(ids("before", 100), 60)
        assert await tally.wait(c.t(60)), f"before the restart: {tally.summary()}"
        running.clear()
        await send_batch(ids("stored", 100), 60)
        await c.harness.restart_broker()
        running.set()
        await send_batch(ids("after", 100), 120)
        ok = await tally.wait(c.t(120))
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    assert ok, (
        f"confirmed messages lost across a broker restart ({reopened} stream reopen(s), "
        f"{len(unconfirmed)} sends never confirmed): {tally.summary()}"
    )
    tally.check(duplicates_allowed=c.duplicates_allowed, unexpected_allowed=True)


# ============================================================================= the pytest class


def _make_test(info: CaseInfo, harness: Harness) -> Callable[..., Awaitable[None]]:
    async def test(self: Any) -> None:
        await run_case(self.harness, info.name)

    test.__name__ = f"test_{info.name}"
    test.__qualname__ = test.__name__
    test.__doc__ = info.func.__doc__
    marked: Any = pytest.mark.asyncio(test)
    marked = pytest.mark.timeout(harness.timeout(info.timeout) + 60)(marked)
    return marked  # type: ignore[no-any-return]


class ConformanceSuite:
    """Base of the classes :func:`conformance_suite` makes (not collected by itself)."""

    harness: Harness


def conformance_suite(harness: Harness) -> type:
    """A pytest test class holding every case for ``harness``.

    Assign it to a name starting with ``Test`` in a test module::

        TestMyDriverConformance = conformance_suite(Harness(url="mydriver://..."))
    """
    namespace: dict[str, Any] = {
        "harness": harness,
        "__doc__": f"Conformance cases for {harness.redacted_url()}",
    }
    for info in CASES.values():
        namespace[f"test_{info.name}"] = _make_test(info, harness)
    return type("Conformance", (ConformanceSuite,), namespace)


def describe_cases() -> list[tuple[str, str, str]]:
    """(name, gate, first line of the docstring) for every case, for docs."""
    out = []
    for info in CASES.values():
        gate = ", ".join([*info.requires, *(f"not {f}" for f in info.requires_not)])
        out.append((info.name, gate, " ".join(info.doc.split("\n\n")[0].split())))
    return out
