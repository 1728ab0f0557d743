from __future__ import annotations

import asyncio

import pytest

import channels
from channels.errors import ClosedError, Timeout


async def test_put_then_iterate() -> None:
    app = channels.App("t")
    async with app:
        channel = app.channel()
        await channel.put(1)
        await channel.put(2)
        seen = []
        async for event in channel:
            seen.append(event.value)
            if len(seen) == 2:
                break
        assert seen == [1, 2]
        assert channel.empty()


async def test_fan_out_to_clones() -> None:
    channel: channels.Channel[str, int] = channels.Channel()
    a, b = channel.clone(), channel.clone()
    await channel.send(key="k", value=7, headers={"h": "v"})
    for sub in (channel, a, b):
        event = await sub.get(timeout=1)
        assert (event.key, event.value, event.headers) == ("k", 7, {"h": b"v"})


async def test_maxsize_makes_senders_wait_and_drops_nothing() -> None:
    channel: channels.Channel[None, int] = channels.Channel(maxsize=2)
    await channel.put(0)
    await channel.put(1)
    blocked = asyncio.create_task(channel.put(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not blocked.done(), "a full channel must make the sender wait"
    assert (await channel.get(timeout=1)).value == 0
    await asyncio.wait_for(blocked, 1)
    assert [(await channel.get(timeout=1)).value for _ in range(2)] == [1, 2]


async def test_get_timeout() -> None:
    channel: channels.Channel[None, int] = channels.Channel()
    with pytest.raises(Timeout):
        await channel.get(timeout=0.05)


async def test_future_messages() -> None:
    channel: channels.Channel[None, int] = channels.Channel()
    fut = channel.as_future_message(value=5)
    assert not fut.done()
    md = await channel.publish_message(fut)
    assert isinstance(md, channels.RecordMetadata)
    assert (await fut) == md
    soon = channel.send_soon(value=6)
    assert isinstance(await soon, channels.RecordMetadata)
    assert [(await channel.get(timeout=1)).value for _ in range(2)] == [5, 6]


async def test_maybe_declare_runs_once_under_concurrency() -> None:
    calls = 0

    class Counting(channels.Channel[None, None]):
        async def declare(self) -> None:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)

    channel = Counting()
    await asyncio.gather(*(channel.maybe_declare() for _ in range(10)))
    assert calls == 1


async def test_channel_of_closed_app_raises() -> None:
    app = channels.App("t")
    async with app:
        channel = app.channel()
    with pytest.raises(ClosedError):
        await channel.put(1)


async def test_value_and_key_types_are_checked_like_a_topics() -> None:
    from channels.errors import EncodeError

    channel: channels.Channel[str, int] = channels.Channel(key_type=str, value_type=int)
    await channel.put(1)
    await channel.send(key="k", value=2)
    for bad in (channel.put("x"), channel.send(value="x"), channel.send(key=3, value=1)):
        with pytest.raises(EncodeError, match="must be a"):
            await bad
    with pytest.raises(EncodeError):
        channel.send_soon(value="x")
    assert [(await channel.get()).value for _ in range(2)] == [1, 2]
    assert channel.empty()
    loose: channels.Channel[None, list[int]] = channels.Channel(value_type=list[int])
    await loose.put([1])  # parameterized generics are not checked
