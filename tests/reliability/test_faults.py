"""Faults against the real brokers: a broker down at start, a broker cut off during a send,
a broker restarted in the middle of a stream, and a consumer killed between receive and ack.

Every figure (sent, received, lost, duplicates, seconds) is printed, so `pytest -s` or the
CI log shows what was observed; the assertions are on what each driver promises.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import channels
from channels.errors import ChannelsError, ConnectionFailed
from tests.support import BROKERS, Broker, LogWaiter, TcpProxy, bounded, free_port

pytestmark = pytest.mark.brokers
ROOT = Path(__file__).resolve().parents[2]


def _name(case: str) -> str:
    return f"rel-{case}-{uuid.uuid4().hex[:10]}"


def _report(**figures: object) -> None:
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.mark.parametrize("broker", BROKERS.values(), ids=BROKERS.keys())
async def test_broker_down_at_start_fails_within_the_timeout(broker: Broker) -> None:
    app = channels.App("rel-down", broker=broker.with_port(free_port()), connect_timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        await asyncio.wait_for(app.start(), 30)
    elapsed = time.monotonic() - started
    _report(driver=broker.name, seconds=round(elapsed, 2), error=type(info.value).__name__)
    assert elapsed < 15, f"connect() took {elapsed:.1f}s to fail"
    assert "guest:guest" not in str(info.value)


@pytest.mark.parametrize("broker", BROKERS.values(), ids=BROKERS.keys())
async def test_broker_down_at_start_is_waited_for_when_asked(broker: Broker) -> None:
    port = free_port()
    app = channels.App("rel-wait", broker=broker.with_port(port), connect_timeout=5, wait_for_broker=90)
    with LogWaiter("channels.app", "trying again") as failures:
        starting = asyncio.create_task(app.start())
        await asyncio.wait_for(failures.wait(), 30)  # the broker is not there yet...
        assert not starting.done()
        proxy = await TcpProxy(broker.port, port=port).start()  # ...and now it is
        came_up = time.monotonic()
        await asyncio.wait_for(starting, 60)
        _report(driver=broker.name, connected_after_broker_came_up_s=round(time.monotonic() - came_up, 2))
    try:
        topic = app.topic(_name("wait"), internal=True, group=_name("group"))
        await asyncio.wait_for(topic.declare(), 30)
        await asyncio.wait_for(topic.send(value=b"hello"), 30)
        assert (await topic.get(timeout=30)).value == b"hello"
    finally:
        await asyncio.wait_for(app.stop(), 60)
        await proxy.cut()


def _cuttable_proxy(broker: Broker) -> TcpProxy:
    """A proxy in front of ``broker`` that a test can cut.

    Kafka clients connect to the address the broker advertises, not to the one they were
    given: scripts/brokers runs a Kafka listener on 9096 that advertises 9097, where this
    proxy listens, so every connection of such a client goes through it.
    """
    if broker.name == "kafka":
        return TcpProxy(9096, port=9097)
    return TcpProxy(broker.port)


@pytest.mark.parametrize("broker", BROKERS.values(), ids=BROKERS.keys())
async def test_send_to_a_cut_off_broker_is_a_bounded_error(broker: Broker) -> None:
    proxy = await _cuttable_proxy(broker).start()
    app = channels.App(
        "rel-cut", broker=broker.with_port(proxy.port), connect_timeout=10, close_timeout=10, delivery_timeout=15
    )
    topic = app.topic(_name("cut"), internal=True)
    # Connecting is not what this test is about; aiormq can take well past connect_timeout to
    # give up a slow first connection (it defers cancellation), so the bound here is loose.
    await bounded(app.start(), 60, f"connecting {broker.name} through the test proxy")
    try:
        await asyncio.wait_for(topic.send(value=b"before"), 30)
        await proxy.cut()
        started = time.monotonic()
        outcome = "sent"
        try:
            await asyncio.wait_for(topic.send(value=b"after"), 150)
        except ChannelsError as exc:
            outcome = type(exc).__name__
        elapsed = time.monotonic() - started
        _report(driver=broker.name, outcome=outcome, seconds=round(elapsed, 2))
        assert outcome != "sent", "a send through a cut connection cannot have been confirmed"
        assert elapsed < 30, f"the send took {elapsed:.1f}s to fail with a delivery timeout of 15s"
    finally:
        await asyncio.wait_for(app.stop(), 60)


def _restart(name: str) -> float:
    started = time.monotonic()
    subprocess.run(["scripts/brokers", "restart", name], cwd=ROOT, check=True, timeout=300, capture_output=True)
    return time.monotonic() - started


RESTARTABLE = [b for b in BROKERS.values() if b.restart]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", RESTARTABLE, ids=[b.name for b in RESTARTABLE])
async def test_broker_restart_in_the_middle_of_a_stream(broker: Broker) -> None:
    total = 10_000
    app = channels.App("rel-restart", broker=broker.url, connect_timeout=60)
    caps = app.capabilities
    topic = app.topic(_name("restart"), internal=True, key_type=str, value_serializer="json", partitions=4)
    seen: dict[int, int] = {}
    half = asyncio.Event()
    done = asyncio.Event()
    async with app:
        await topic.declare()
        members = [await topic.events().start() for _ in range(2)]

        async def consume(stream: channels.EventStream[str, dict[str, int]]) -> None:
            while not done.is_set():
                try:
                    event = await stream.get(timeout=1)
                except channels.Timeout:
                    continue
                except ChannelsError:
                    await asyncio.sleep(0.2)  # the broker is away; the driver reconnects
                    continue
                seq = event.value["seq"]
                seen[seq] = seen.get(seq, 0) + 1
                if len(seen) >= total // 3:
                    half.set()
                if len(seen) >= total:
                    done.set()

        consumers = [asyncio.create_task(consume(m)) for m in members]
        accepted: set[int] = set()
        failed_sends = 0

        async def produce() -> None:
            nonlocal failed_sends
            pending = list(range(total))
            while pending:
                batch, pending = pending[:500], pending[500:]
                futures = {seq: topic.send_soon(key=f"k{seq % 50}", value={"seq": seq}) for seq in batch}
                for seq, fut in futures.items():
                    try:
                        await asyncio.wait_for(fut, 120)
                        accepted.add(seq)
                    except (ChannelsError, TimeoutError):
                        failed_sends += 1
                        pending.append(seq)  # what the broker did not confirm is sent again
                if len(accepted) >= total // 4:
                    await asyncio.sleep(0)

        producer = asyncio.create_task(produce())
        await asyncio.wait_for(half.wait(), 180)
        restart_seconds = await asyncio.to_thread(_restart, broker.restart or broker.name)
        recovered_at = time.monotonic()
        await asyncio.wait_for(producer, 300)
        try:
            await asyncio.wait_for(done.wait(), 180 if caps.persistent else 20)
        except TimeoutError:
            pass
        recovery = time.monotonic() - recovered_at
        done.set()
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        for m in members:
            await m.close()
    lost = sorted(accepted - set(seen))
    duplicates = sum(n - 1 for n in seen.values())
    _report(
        driver=broker.name,
        sent=total,
        resent_after_errors=failed_sends,
        received_unique=len(seen),
        lost=len(lost),
        duplicates=duplicates,
        restart_seconds=round(restart_seconds, 1),
        drained_seconds_after_restart=round(recovery, 1),
    )
    if caps.persistent and caps.at_least_once:
        assert not lost, f"{len(lost)} confirmed message(s) lost across the restart, e.g. {lost[:10]}"


CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    import channels

    async def main():
        app = channels.App("rel-kill", broker=sys.argv[1], connect_timeout=30)
        topic = app.topic(sys.argv[2], internal=True, group=sys.argv[3], acks="manual")
        async with app:
            async with topic.events() as stream:
                print("ready", flush=True)
                event = await stream.get(timeout=60)
                print("got", event.value.decode(), flush=True)
                await asyncio.sleep(3600)  # never acks: the test kills this process

    asyncio.run(main())
    """
)

ACKING = [b for b in BROKERS.values() if channels.App("x", broker=b.url).capabilities.at_least_once]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ACKING, ids=[b.name for b in ACKING])
async def test_consumer_killed_between_receive_and_ack(broker: Broker) -> None:
    name, group = _name("kill"), _name("group")
    app = channels.App("rel-kill", broker=broker.url, connect_timeout=30)
    topic = app.topic(name, internal=True, group=group, acks="manual")
    async with app:
        await topic.declare()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CONSUMER,
            broker.url,
            name,
            group,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready", line
            await topic.send(value=b"the-one")
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"got the-one", line
            # Killed first, then replaced: an MQTT member is a session named after its group,
            # and a second live process with the same name would take that session over.
            proc.kill()
            await proc.wait()
            killed_at = time.monotonic()
            async with topic.events() as stream:
                event = await stream.get(timeout=120)
                elapsed = time.monotonic() - killed_at
                assert event.value == b"the-one"
                await event.ack()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    _report(driver=broker.name, redelivered_after_seconds=round(elapsed, 2))
