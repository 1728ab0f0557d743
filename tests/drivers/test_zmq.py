"""The zmq driver and ``channels zmq-broker`` against a broker started by the test.

Each test starts its own broker as a subprocess on ports 5563-5565 or 5566-5568 (the
range 5560-5569 belongs to the zmq broker; 5560-5562 is the shared one); the ephemeral
group tests run the broker in a thread on 5566-5568 to look at what it keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

import channels
from channels.errors import CapabilityNotSupported, ConnectionFailed, Timeout, TopicNotFound
from transports._zmq_broker import ZmqBroker, group_frame, ping

PORT = 5563


class Broker:
    def __init__(self, bind: str, *extra: str) -> None:
        self.bind = bind
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "channels", "zmq-broker", "--bind", self.bind, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while not ping(self.bind, timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"zmq broker did not start: {err}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def start_broker() -> Iterator[Callable[..., Broker]]:
    started: list[Broker] = []

    def start(*extra: str, bind: str = f"tcp://127.0.0.1:{PORT}") -> Broker:
        broker = Broker(bind, *extra)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker("--member-timeout", "1")


URL = f"zmq://127.0.0.1:{PORT}?heartbeat=0.2"


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def app(broker: Broker) -> AsyncIterator[channels.App]:
    async with channels.App(name("app"), broker=URL) as app:
        yield app


def raw_topic(app: channels.App, topic: str, **options: Any) -> Any:
    options.setdefault("internal", True)
    return app.topic(topic, key_serializer="raw", value_serializer="raw", **options)


async def drain(stream: Any, count: int, timeout: float = 10) -> list[Any]:
    out = []
    for _ in range(count):
        out.append(await asyncio.wait_for(stream.get(), timeout))
    return out


async def test_frames_round_trip(app: channels.App) -> None:
    topic = raw_topic(app, name())
    await topic.declare()
    headers = {"bin": bytes(range(256)), "empty": b"", "text": "é".encode()}
    md = await topic.send(key=b"\x00k", value=b"\xff\x00v", headers=headers)
    assert md.offset == 0 and md.timestamp
    await topic.send(key=None, value=None)
    await topic.send(key=b"", value=b"")
    async with topic.events() as stream:
        first, second, third = await drain(stream, 3)
    assert (first.key, first.value, first.headers) == (b"\x00k", b"\xff\x00v", headers)
    assert (second.key, second.value, second.headers) == (None, None, {})
    assert (third.key, third.value) == (b"", b"")
    assert [e.message.offset for e in (first, second, third)] == [0, 1, 2]


async def test_declare_keeps_messages_for_group_and_source_topic_check(
    app: channels.App,
) -> None:
    topic = raw_topic(app, name())
    await topic.declare()
    await topic.send(value=b"early")
    async with topic.events() as stream:
        (event,) = await drain(stream, 1)
    assert event.value == b"early"
    with pytest.raises(TopicNotFound):
        await raw_topic(app, name(), internal=False).declare()
    # a topic the broker knows can be declared as a source
    await raw_topic(app, topic.name, internal=False).declare()


async def test_group_shares_and_groups_fan_out(broker: Broker) -> None:
    topic_name = name()
    async with (
        channels.App("g1", broker=URL) as a1,
        channels.App("g1", broker=URL) as a2,
        channels.App("g2", broker=URL) as b,
    ):
        t1, t2, tb = (
            raw_topic(x, topic_name, group=g) for x, g in ((a1, "g1"), (a2, "g1"), (b, "g2"))
        )
        async with t1.events() as s1, t2.events() as s2, tb.events() as sb:
            n = 200
            for i in range(n):
                t1.send_soon(key=str(i % 20).encode(), value=str(i).encode())
            await a1.producer.flush()
            got_b = await drain(sb, n)
            assert sorted(int(e.value) for e in got_b) == list(range(n))
            got1: list[Any] = []
            got2: list[Any] = []

            done = asyncio.Event()

            async def take(stream: Any, into: list[Any]) -> None:
                while True:
                    into.append(await stream.get())
                    if len(got1) + len(got2) >= n:
                        done.set()

            tasks = [asyncio.create_task(take(s1, got1)), asyncio.create_task(take(s2, got2))]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 10)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert len(got1) + len(got2) == n
    assert got1 and got2, "both members of the group get a share"
    assert {e.value for e in got1}.isdisjoint({e.value for e in got2})
    for got in (got1, got2):
        per_key: dict[bytes, list[int]] = {}
        for e in got:
            per_key.setdefault(e.key, []).append(int(e.value))
        for values in per_key.values():
            assert values == sorted(values)
    assert {e.key for e in got1}.isdisjoint({e.key for e in got2}), "a key sticks to a member"


async def test_nack_and_leaving_redeliver(app: channels.App) -> None:
    topic = raw_topic(app, name())
    await topic.declare()
    await topic.send(value=b"x")
    async with topic.events(acks="manual") as stream:
        (event,) = await drain(stream, 1)
        assert not event.message.redelivered
        await event.nack()
        (again,) = await drain(stream, 1)
        assert again.value == b"x" and again.message.redelivered
    # left without acking: the next member gets it
    async with topic.events(acks="manual") as stream:
        (third,) = await drain(stream, 1)
        assert third.value == b"x" and third.message.redelivered
        await third.ack()
    async with topic.events(acks="manual") as stream:
        with pytest.raises(Timeout):
            await stream.get(timeout=0.5)


async def test_credit_limits_unacked_messages(app: channels.App) -> None:
    topic = raw_topic(app, name())
    await topic.declare()
    for i in range(5):
        await topic.send(value=str(i).encode())
    stream = topic.events(acks="manual", prefetch=2)
    async with stream:
        sub = stream._sub
        assert sub is not None
        first = await asyncio.wait_for(sub.receive(10), 5)
        await asyncio.sleep(0.3)  # give the broker the chance to (wrongly) send more
        assert len(first) + len(sub.buffer) == 2
        got = first + await asyncio.wait_for(sub.receive(10), 5) if len(first) < 2 else first
        assert len(got) == 2
        while len(got) < 5:
            await sub.ack(got[-2:])
            got += await asyncio.wait_for(sub.receive(10), 5)
        assert [m.value for m in got] == [b"0", b"1", b"2", b"3", b"4"]


async def test_full_group_makes_publishers_wait(start_broker: Callable[..., Broker]) -> None:
    start_broker("--max-queued", "3")
    async with channels.App(name("app"), broker=URL + "&publish_timeout=0.5", retries=0) as app:
        topic = raw_topic(app, name())
        await topic.declare()
        for i in range(3):
            await topic.send(value=str(i).encode())
        with pytest.raises(Timeout):
            await topic.send(value=b"3")  # parked by the broker, not dropped
        async with topic.events() as stream:
            got = [e.value for e in await drain(stream, 4)]
        assert got == [b"0", b"1", b"2", b"3"]


async def test_silent_member_times_out_and_its_messages_come_back(broker: Broker) -> None:
    topic_name = name()
    async with channels.App("grp", broker=URL) as app:
        topic = raw_topic(app, topic_name, group="grp")
        await topic.declare()
        await topic.send(value=b"held")
        # a raw client takes the message and then goes silent
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"tcp://127.0.0.1:{PORT}")
            sock.send_multipart([b"SUB", b"1", b"s1", b"grp", b"10", b"", topic_name.encode()])
            assert sock.poll(5000) and sock.recv_multipart()[0] == b"OK"
            assert sock.poll(5000) and sock.recv_multipart()[0] == b"MSG"
            async with topic.events() as stream:
                (event,) = await drain(stream, 1, timeout=10)
            assert event.value == b"held" and event.message.redelivered
        finally:
            sock.close()
            ctx.term()


async def test_pattern_subscription(app: channels.App) -> None:
    prefix = name("p")
    stream = app.topic(pattern=rf"{prefix}\..*", value_serializer="raw").events()
    async with stream:
        await raw_topic(app, f"{prefix}.a").send(value=b"a")
        await raw_topic(app, f"{prefix}.b").send(value=b"b")
        await raw_topic(app, f"{prefix}x").send(value=b"no")
        got = sorted(e.value for e in await drain(stream, 2))
        assert got == [b"a", b"b"]
        with pytest.raises(Timeout):
            await stream.get(timeout=0.3)


async def test_ipc_scheme(start_broker: Callable[..., Broker], tmp_path: Path) -> None:
    path = tmp_path / "broker.sock"
    start_broker(bind=f"ipc://{path}")
    async with channels.App(name("app"), broker=f"zmq+ipc://{path}") as app:
        topic = raw_topic(app, name())
        await topic.declare()
        await topic.send(key=b"k", value=b"v")
        async with topic.events() as stream:
            (event,) = await drain(stream, 1)
        assert (event.key, event.value) == (b"k", b"v")


async def test_no_broker_fails_fast() -> None:
    app = channels.App(name("app"), broker="zmq://127.0.0.1:5569?connect_timeout=0.5")
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        await app.start()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("outcome", ["fails", "cancelled"])
async def test_a_connect_that_does_not_finish_leaves_no_socket_open(outcome: str) -> None:
    # A zmq context left to the garbage collector with a socket still open blocks the whole
    # process in term() when it is collected: a failed or cancelled connect must close both.
    app = channels.App(name("app"), broker="zmq://127.0.0.1:5569?connect_timeout=0.5")
    transport: Any = app.transport_object
    if outcome == "fails":
        with pytest.raises(ConnectionFailed):
            await transport.connect()
    else:
        task = asyncio.create_task(transport.connect())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (transport._socket, transport._monitor, transport._ctx) == (None, None, None)


async def test_close_is_bounded_and_counts_unconfirmed(broker: Broker) -> None:
    app = channels.App(name("app"), broker=URL + "&publish_timeout=30&linger=0.2", retries=0)
    await app.start()
    topic = raw_topic(app, name())
    await topic.declare()
    broker.stop(signal.SIGKILL)
    transport = app.transport
    sending = asyncio.create_task(transport.publish([channels.Message(topic.name, b"lost")]))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.wait_for(transport.close(), 15)
    assert time.monotonic() - started < 10
    assert transport.undelivered == 1  # type: ignore[attr-defined]
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)


async def test_members_join_again_after_broker_restart(broker: Broker) -> None:
    async with channels.App(name("app"), broker=URL) as app:
        topic = raw_topic(app, name())
        await topic.declare()
        async with topic.events() as stream:
            await topic.send(value=b"before")
            (event,) = await drain(stream, 1)
            assert event.value == b"before"
            broker.stop()
            broker.start()
            deadline = time.monotonic() + 15
            got = None
            while got is None and time.monotonic() < deadline:
                # until the heartbeat has rejoined, the broker has no group for the topic
                await topic.send(value=b"after")
                try:
                    got = await stream.get(timeout=0.5)
                except Timeout:
                    continue
            assert got is not None and got.value == b"after"


if os.environ.get("CHANNELS_SKIP_ZMQ"):
    pytestmark = pytest.mark.skip("CHANNELS_SKIP_ZMQ is set")


async def test_declared_groups_are_declared_again_after_broker_restart(broker: Broker) -> None:
    async with channels.App(name("app"), broker=URL) as app:
        topic = raw_topic(app, name())
        await topic.declare()
        transport = app.transport
        epoch = transport._epoch  # type: ignore[attr-defined]
        broker.stop()
        broker.start()
        deadline = time.monotonic() + 10
        while transport._epoch == epoch:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the driver did not notice the restart"
            await asyncio.sleep(0.05)
        await topic.send(value=b"after restart")
        async with topic.events() as stream:
            (event,) = await drain(stream, 1)
        assert event.value == b"after restart"


def test_cli_ping(broker: Broker) -> None:
    def ping_cli(url: str) -> int:
        cmd = [sys.executable, "-m", "channels", "zmq-broker", "--ping", url]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode

    assert ping_cli(f"zmq://127.0.0.1:{PORT}") == 0
    assert ping_cli("zmq://127.0.0.1:5569") == 1


# -- ephemeral groups --------------------------------------------------------------------

THREAD_PORT = 5566
THREAD_URL = f"zmq://127.0.0.1:{THREAD_PORT}?heartbeat=0.2"


@pytest.fixture
def device() -> Iterator[ZmqBroker]:
    """A broker in a thread of this process, so a test can see which groups it keeps."""
    broker = ZmqBroker([f"tcp://127.0.0.1:{THREAD_PORT}"], member_timeout=1.0, max_queued=3)
    thread = threading.Thread(target=broker.run, name="zmq-broker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not ping(f"tcp://127.0.0.1:{THREAD_PORT}", timeout=0.5):
        assert thread.is_alive() and time.monotonic() < deadline, "zmq broker did not start"
    yield broker
    broker.stop()
    thread.join(10)
    assert not thread.is_alive()


def groups_of(broker: ZmqBroker, topic: str) -> set[tuple[str, bool]]:
    """The broker's groups of ``topic`` as (name, ephemeral); tuple() holds the GIL."""
    known = broker.topics.get(topic)
    return set() if known is None else set(tuple(known.groups))


async def test_ephemeral_group_is_deleted_when_its_last_member_leaves(device: ZmqBroker) -> None:
    topic_name, group = name(), name("g")
    async with channels.App(group, broker=THREAD_URL) as app:
        durable = raw_topic(app, topic_name, group=group)
        await durable.declare()  # an ordinary group of the same name is a separate group
        ephemeral = raw_topic(app, topic_name, group=group, ephemeral=True)
        await ephemeral.declare()
        assert groups_of(device, topic_name) == {(group, False)}, "declare keeps nothing"
        async with ephemeral.events() as first:
            async with ephemeral.events():  # a second member
                assert groups_of(device, topic_name) == {(group, False), (group, True)}
            # one member left: the group stays, and its remaining member gets what is sent
            assert groups_of(device, topic_name) == {(group, False), (group, True)}
            await ephemeral.send(value=b"live")
            (event,) = await drain(first, 1)
            assert event.value == b"live"
            await ephemeral.send(value=b"unread")  # held by the group when the member leaves
            await app.producer.flush()
        # the broker answers UNSUB after it deleted the group: no waiting needed
        assert groups_of(device, topic_name) == {(group, False)}
        assert device.stats["ephemeral_deleted"] == 1
        kept = device.topics[topic_name].groups[(group, False)]
        assert kept.queued == 2, "the ordinary group of the same name keeps its messages"


async def test_ephemeral_group_of_a_crashed_member_is_deleted(device: ZmqBroker) -> None:
    topic_name, group = name(), name("g")
    async with channels.App(name("app"), broker=THREAD_URL + "&publish_timeout=15", retries=0) as app:
        topic = raw_topic(app, topic_name, group=group, ephemeral=True)
        await topic.declare()  # the topic only, no group
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"tcp://127.0.0.1:{THREAD_PORT}")
            sub = [b"SUB", b"1", b"s1", group_frame(group, ephemeral=True), b"1", b"", topic_name.encode()]
            sock.send_multipart(sub)
            assert sock.poll(5000) and sock.recv_multipart()[0] == b"OK"
            await topic.send(value=b"held")  # the member takes it (prefetch 1) and never acks
            assert sock.poll(5000) and sock.recv_multipart()[0] == b"MSG"
        finally:
            sock.close()  # the process "dies": no UNSUB, no more pings
            ctx.term()
        assert groups_of(device, topic_name) == {(group, True)}
        for i in range(3):  # --max-queued 3: the group the dead member left is full
            await topic.send(value=str(i).encode())
        started = time.monotonic()
        # parked by the broker until it times the silent member out and deletes its group
        await asyncio.wait_for(topic.send(value=b"released"), 15)
        assert time.monotonic() - started < 10
        assert groups_of(device, topic_name) == set()
        assert device.stats["ephemeral_deleted"] == 1


async def test_ephemeral_subscription_refused_by_an_older_broker() -> None:
    # A broker from before ephemeral groups fails to decode the marked group frame and
    # answers ERR protocol without creating anything: the driver says what is missing.
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:5567")

    async def old_broker() -> None:
        while True:
            identity, command, req, *args = await router.recv_multipart()
            if command == b"SUB":
                try:
                    args[1].decode()
                except UnicodeDecodeError as exc:
                    await router.send_multipart([identity, b"ERR", req, b"protocol", str(exc).encode()])
                    continue
            await router.send_multipart([identity, b"OK", req, b"epoch"])

    serving = asyncio.create_task(old_broker())
    try:
        async with channels.App(name("app"), broker="zmq://127.0.0.1:5567?heartbeat=0.2") as app:
            topic = raw_topic(app, name(), group=name("g"), ephemeral=True)
            with pytest.raises(CapabilityNotSupported, match="ephemeral groups"):
                await topic.events().start()
            async with raw_topic(app, topic.name, group=name("g")).events():
                pass  # ordinary groups still work with it
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        router.close()
        ctx.term()
