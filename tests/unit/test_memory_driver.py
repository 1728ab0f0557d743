from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest

import channels
from channels.errors import (
    CapabilityNotSupported,
    ClosedError,
    ConfigurationError,
    EncodeError,
    MessageTooLarge,
    TopicNotFound,
)


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def _drain(stream: channels.EventStream[Any, Any], n: int) -> list[channels.Event[Any, Any]]:
    return [await stream.get(timeout=2) for _ in range(n)]


async def test_groups_fan_out_and_members_compete() -> None:
    app = channels.App("app", broker="memory://groups")
    topic = app.topic(_name(), internal=True, key_type=str, value_type=int, value_serializer="json")
    async with app:
        g1 = [topic.clone(group="g1").events() for _ in range(3)]
        g2 = [topic.clone(group="g2").events()]
        await asyncio.gather(*(s.start() for s in g1 + g2))
        for i in range(300):
            topic.send_soon(key=f"k{i % 30}", value=i)
        await app.producer.flush(5)
        per_member: list[int] = []
        seen: set[int] = set()
        for s in g1:
            got = []
            while True:
                try:
                    got.append((await s.get(timeout=0.05)).value)
                except channels.Timeout:
                    break
            per_member.append(len(got))
            seen.update(got)
        assert seen == set(range(300))
        assert sum(per_member) == 300, "inside a group each message goes to one member"
        assert all(n > 0 for n in per_member), per_member
        assert sorted(e.value for e in await _drain(g2[0], 300)) == list(range(300))


async def test_per_key_order_inside_a_member() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, key_type=str, value_serializer="json")
    async with app:
        members = [topic.events() for _ in range(2)]
        await asyncio.gather(*(m.start() for m in members))
        for i in range(200):
            topic.send_soon(key=f"k{i % 7}", value=i)
        await app.producer.flush(5)
        last: dict[str, int] = defaultdict(lambda: -1)
        total = 0
        for m in members:
            while True:
                try:
                    event = await m.get(timeout=0.05)
                except channels.Timeout:
                    break
                assert event.value > last[event.key]
                last[event.key] = event.value
                total += 1
        assert total == 200


async def test_nack_redelivers_and_double_ack_is_harmless() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, acks="manual")
    async with app:
        async with topic.events() as stream:
            await topic.send(value=b"a")
            first = await stream.get(timeout=1)
            await first.nack()
            again = await stream.get(timeout=1)
            assert again.value == b"a" and again.message.redelivered
            await again.ack()
            await again.ack()
            await again.nack()
            with pytest.raises(channels.Timeout):
                await stream.get(timeout=0.05)


async def test_unacked_messages_return_when_a_member_leaves() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, acks="manual")
    async with app:
        first = await topic.events().start()
        for i in range(5):
            await topic.send(value=str(i).encode())
        got = await _drain(first, 5)
        await got[0].ack()
        await first.close()
        second = await topic.events().start()
        rest = await _drain(second, 4)
        assert [e.value for e in rest] == [b"1", b"2", b"3", b"4"]


async def test_declare_keeps_messages_for_the_group() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True)
    async with app:
        await topic.declare()
        await topic.send(value=b"early")
        async with topic.events() as stream:
            assert (await stream.get(timeout=1)).value == b"early"


async def test_source_topic_is_never_created() -> None:
    app = channels.App("app")
    name = _name()
    async with app:
        with pytest.raises(TopicNotFound, match=name):
            await app.topic(name).declare()
        assert name not in app.transport.native().topics


async def test_none_values_headers_and_keys_round_trip() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True)
    async with app:
        async with topic.events() as stream:
            await topic.send(key=b"k", value=None, headers={"bin": b"\x00\xff", "s": "é"})
            await topic.send(key=None, value=b"")
            a, b = sorted(await _drain(stream, 2), key=lambda e: e.key is None)
            assert (a.key, a.value, a.headers) == (
                b"k",
                None,
                {"bin": b"\x00\xff", "s": "é".encode()},
            )
            assert (b.key, b.value) == (None, b"")


async def test_bad_input_is_typed_and_nothing_is_sent() -> None:
    app = channels.App("app", broker="memory://?max_message_size=100")
    topic = app.topic(_name(), internal=True)
    async with app:
        async with topic.events() as stream:
            with pytest.raises(MessageTooLarge, match="limit of 100 bytes"):
                await topic.send(value=b"x" * 101)
            with pytest.raises(EncodeError):
                topic.send_soon(value=b"x", headers={"n": 1})  # type: ignore[dict-item]
            with pytest.raises(EncodeError):
                await topic.send(value={"not": "bytes"})
            await topic.send(value=b"ok")
            assert (await stream.get(timeout=1)).value == b"ok"
            with pytest.raises(channels.Timeout):
                await stream.get(timeout=0.05)


async def test_pattern_and_explicit_partition() -> None:
    app = channels.App("app")
    tag = uuid.uuid4().hex[:8]
    pattern = app.topic(pattern=rf"p-{tag}-.*")
    async with app:
        async with pattern.events() as stream:
            for suffix in ("a", "b"):
                t = app.topic(f"p-{tag}-{suffix}", internal=True)
                await t.send(value=suffix.encode(), partition=3)
            got = await _drain(stream, 2)
            assert Counter(e.value for e in got) == Counter([b"a", b"b"])
            assert {e.message.partition for e in got} == {3}


async def test_lifecycle_errors() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True)
    with pytest.raises(ClosedError, match="not started"):
        await topic.send(value=b"x")
    async with app:
        pass
    with pytest.raises(ClosedError, match="closed"):
        await topic.send(value=b"x")
    with pytest.raises(ClosedError):
        await app.start()
    with pytest.raises(ConfigurationError, match="unknown broker scheme"):
        channels.App("x", broker="nosuch://h")
    with pytest.raises(ConfigurationError):
        channels.App("x", broker="memory://?bogus=1")


async def test_from_beginning_is_refused_without_replay() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, from_beginning=True)
    async with app:
        with pytest.raises(CapabilityNotSupported, match="from_beginning"):
            await topic.events().start()


async def test_close_flushes_send_soon() -> None:
    app = channels.App("app", broker="memory://flush")
    name = _name()
    topic = app.topic(name, internal=True)
    reader_app = channels.App("reader", broker="memory://flush")
    async with reader_app:
        stream = await reader_app.topic(name, internal=True, group="r").events().start()
        async with app:
            futures = [topic.send_soon(value=str(i).encode()) for i in range(1000)]
        assert all(f.done() and not f.future.exception() for f in futures)
        got = await _drain(stream, 1000)
        assert [int(e.value) for e in got] != [] and len({e.value for e in got}) == 1000


async def test_event_context_manager_acks_and_nacks() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, acks="manual")
    async with app:
        async with topic.events() as stream:
            await topic.send(value=b"m")
            event = await stream.get(timeout=1)
            with pytest.raises(RuntimeError):
                async with event:
                    raise RuntimeError("handler failed")
            again = await stream.get(timeout=1)
            assert again.message.redelivered
            async with again:
                pass
            assert again.acked


async def test_nack_returns_fetched_messages_of_the_partition_in_order() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True, acks="manual", key_type=str)
    async with app:
        async with topic.events() as stream:
            for i in range(5):
                await topic.send(key="same", value=str(i).encode())
            first = await stream.get(timeout=1)
            assert first.value == b"0"
            await first.nack()
            again = [await stream.get(timeout=1) for _ in range(5)]
            assert [e.value for e in again] == [b"0", b"1", b"2", b"3", b"4"]
            assert again[0].message.redelivered


def test_translate_errors_builds_every_error_type() -> None:
    from channels.url import parse_url
    from transports.base import translate_errors

    url = parse_url("kafka://u:secret@h:1")
    for error in (TopicNotFound, MessageTooLarge, CapabilityNotSupported, ClosedError):
        with pytest.raises(error) as info, translate_errors([(KeyError, error)], url, "doing x"):
            raise KeyError("boom")
        assert "doing x" in str(info.value) and "secret" not in str(info.value)
        assert "u:***@h:1" in str(info.value)


def test_an_empty_broker_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="empty"):
        channels.App("x", broker="  ")
    monkeypatch.setenv("CHANNELS_BROKER", "")
    with pytest.raises(ConfigurationError, match="CHANNELS_BROKER"):
        channels.App("x")
    monkeypatch.setenv("CHANNELS_BROKER", "memory://from-env")
    assert channels.App("x").url.host == "from-env"


async def test_reserved_header_names_are_refused_on_every_driver() -> None:
    app = channels.App("app")
    topic = app.topic(_name(), internal=True)
    async with app:
        for name in ("x-channels-key", "channels.none"):
            with pytest.raises(EncodeError, match="reserved"):
                topic.send_soon(value=b"x", headers={name: b"v"})


async def test_sending_never_creates_a_source_topic() -> None:
    app = channels.App("app")
    name = _name()
    source = app.topic(name)
    async with app:
        futures = [source.send_soon(value=b"a"), source.send_soon(value=b"b")]
        for fut in futures:
            with pytest.raises(TopicNotFound):
                await fut
        with pytest.raises(TopicNotFound):
            await source.send(value=b"c")
        assert name not in app.transport.native().topics
        internal = app.topic(name, internal=True)
        first = internal.send_soon(value=b"1")  # held until the topic is created, then in order
        second = internal.send_soon(value=b"2")
        assert [(await first).offset, (await second).offset] != [None, None]
        assert name in app.transport.native().topics


async def test_a_partition_that_does_not_exist_is_refused() -> None:
    app = channels.App("parts", broker="memory://parts-test?partitions=2")
    async with app:
        topic = app.topic(f"p-{uuid.uuid4().hex[:8]}", internal=True, partitions=2)
        assert (await topic.send(value=b"ok", partition=1)).partition == 1
        for bad in (2, 99):
            with pytest.raises(ConfigurationError, match="does not exist"):
                await topic.send(value=b"x", partition=bad)
        for wrong in ("0", True, 1.0):
            with pytest.raises(ConfigurationError, match="partition must be an int"):
                await topic.send(value=b"x", partition=wrong)
    assert app.undelivered == 2  # the two the driver refused (the wrong types never left)
