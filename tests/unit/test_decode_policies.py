from __future__ import annotations

import dataclasses
import uuid

import pytest

import channels
from channels import registry
from channels.capabilities import Capabilities
from channels.errors import DecodeError
from transports.memory import MemoryTransport


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


class _Enveloped(MemoryTransport):
    """The memory driver as a broker without keys and headers: everything travels in the envelope."""

    schemes = ("enveloped-test",)

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, native_headers=False, native_keys=False)


async def test_dead_letter_carries_the_message_as_sent_not_its_envelope() -> None:
    registry.register("enveloped-test", _Enveloped)
    try:
        app = channels.App("dec", broker="enveloped-test://")
        name = _name()
        topic = app.topic(name, internal=True, value_serializer="json", on_decode_error="dead_letter")
        dlq = app.topic(f"{name}.dlq", internal=True, group="inspect")
        async with app:
            await dlq.declare()
            async with topic.events() as stream, dlq.events() as dead:
                raw = app.topic(name, internal=True)
                await raw.send(key=b"k1", value=b"{broken json", headers={"trace": b"t-1"})
                await raw.send(value=b'{"ok": 1}')
                assert (await stream.get(timeout=1)).value == {"ok": 1}
                letter = await dead.get(timeout=1)
        assert (letter.key, letter.value) == (b"k1", b"{broken json")
        assert letter.headers["trace"] == b"t-1"
        assert letter.headers["channels-source-topic"] == name.encode()
    finally:
        registry.unregister("enveloped-test")
