from __future__ import annotations

import uuid

import pytest

import channels
from channels.errors import DecodeError


def _name() -> str:
    return f"d-{uuid.uuid4().hex[:10]}"


async def _send_bad_then_good(app: channels.App, name: str) -> None:
    raw = app.topic(name, internal=True)
    await raw.send(value=b"{broken json")
    await raw.send(value=b'{"ok": 1}')


async def test_raise_policy_keeps_the_raw_message() -> None:
    app = channels.App("dec")
    name = _name()
    topic = app.topic(name, internal=True, value_serializer="json")
    async with app:
        async with topic.events() as stream:
            await _send_bad_then_good(app, name)
            with pytest.raises(DecodeError) as info:
                await stream.get(timeout=1)
            assert info.value.raw is not None and info.value.raw.value == b"{broken json"
            await stream.ack_message(info.value.raw)
            assert (await stream.get(timeout=1)).value == {"ok": 1}


async def test_skip_policy_acks_and_goes_on() -> None:
    app = channels.App("dec")
    name = _name()
    topic = app.topic(name, internal=True, value_serializer="json", on_decode_error="skip")
    async with app:
        async with topic.events() as stream:
            await _send_bad_then_good(app, name)
            assert (await stream.get(timeout=1)).value == {"ok": 1}


async def test_dead_letter_policy_forwards_raw_bytes_and_error() -> None:
    app = channels.App("dec")
    name = _name()
    topic = app.topic(name, internal=True, value_serializer="json", on_decode_error="dead_letter")
    dlq = app.topic(f"{name}.dlq", internal=True, group="inspect")
    async with app:
        await dlq.declare()
        async with topic.events() as stream, dlq.events() as dead:
            await _send_bad_then_good(app, name)
            assert (await stream.get(timeout=1)).value == {"ok": 1}
            letter = await dead.get(timeout=1)
            assert letter.value == b"{broken json"
            assert letter.headers["channels-source-topic"] == name.encode()
            assert b"cannot decode" in letter.headers["channels-error"]
