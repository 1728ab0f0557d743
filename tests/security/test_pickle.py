"""The ``pickle`` codec is only reachable from code that asked for it.

Unpickling runs code chosen by whoever wrote the bytes, so ``pickle`` is not a codec until
the program calls ``channels.codecs.enable_pickle()``, and even then only a topic's own
``key_serializer``/``value_serializer`` (code) can select it: no URL option, no header of a
received message, no CLI flag.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import channels
from channels import codecs
from channels.errors import ConfigurationError, DecodeError
from tests.security._secured import ROOT
from tests.support import BROKERS

#: set by the payload below if anything ever unpickles it
TRIPPED: list[str] = []


def _tripwire(note: str) -> str:
    TRIPPED.append(note)
    return note


class _Payload:
    """Unpickling this calls _tripwire: proof that pickle.loads ran on our bytes."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_tripwire, ("unpickled",))


EVIL = pickle.dumps(_Payload())

#: headers a careless consumer might read to pick a codec
CODEC_HEADERS = {
    "content-type": b"application/x-python-pickle",
    "content-encoding": b"pickle",
    "codec": b"pickle",
    "serializer": b"pickle",
    "value_serializer": b"pickle",
    "x-codec": b"pickle",
}


@pytest.fixture
def pickle_enabled() -> Iterator[None]:
    """pickle enabled for this test only (the registry is process-wide)."""
    codecs.enable_pickle()
    try:
        yield
    finally:
        codecs._REGISTRY.pop("pickle", None)


@pytest.fixture(autouse=True)
def _no_pickle_before_and_after() -> Iterator[None]:
    codecs._REGISTRY.pop("pickle", None)
    TRIPPED.clear()
    yield
    codecs._REGISTRY.pop("pickle", None)
    assert not TRIPPED, "something unpickled a payload"


def _name() -> str:
    return f"sec-pickle-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("spelling", ["pickle", "json|pickle", "pickle|gzip"])
def test_pickle_is_not_a_codec_until_enabled(spelling: str) -> None:
    with pytest.raises(ConfigurationError, match="enable_pickle"):
        codecs.get_codec(spelling)
    app = channels.App("sec-pickle", broker="memory://")
    with pytest.raises(ConfigurationError, match="enable_pickle"):
        app.topic(_name(), value_serializer=spelling)
    with pytest.raises(ConfigurationError, match="enable_pickle"):
        app.topic(_name(), key_serializer=spelling)
    with pytest.raises(ConfigurationError):
        codecs.register("pickle", codecs.get_codec("json"))


async def test_enable_pickle_makes_it_a_codec_for_code_that_asks(pickle_enabled: None) -> None:
    app = channels.App("sec-pickle", broker="memory://")
    topic = app.topic(_name(), value_serializer="pickle", internal=True)
    async with asyncio.timeout(30), app:
        await topic.declare()
        await topic.send(value={"a": (1, 2)})
        event = await topic.get(timeout=10)
    assert event.value == {"a": (1, 2)}


#: every URL the tests use, plain listeners: the option is refused before any connection
URLS = {b.name: b.url for b in BROKERS.values()} | {"memory": "memory://"}


@pytest.mark.parametrize("option", ["codec", "value_serializer", "key_serializer", "serializer"])
@pytest.mark.parametrize("name", list(URLS))
async def test_no_url_option_selects_a_codec(name: str, option: str, pickle_enabled: None) -> None:
    url = URLS[name]
    url += ("&" if "?" in url else "?") + f"{option}=pickle"
    with pytest.raises(ConfigurationError, match=option):
        app = channels.App("sec-pickle", broker=url, connect_timeout=5)
        try:
            await asyncio.wait_for(app.start(), 30)
        finally:
            await asyncio.wait_for(app.stop(), 30)


async def _headers_case(url: str) -> None:
    app = channels.App("sec-pickle", broker=url, connect_timeout=10)
    name = _name()
    sender = app.topic(name, internal=True)
    raw_reader = app.topic(name, internal=True, group=_name())
    json_reader = app.topic(name, internal=True, group=_name(), value_serializer="json")
    async with asyncio.timeout(60), app:
        for topic in (sender, raw_reader, json_reader):
            await topic.declare()
        await sender.send(key=b"k", value=EVIL, headers=CODEC_HEADERS)
        event = await raw_reader.get(timeout=20)
        assert event.value == EVIL, "a raw topic hands the bytes over as they are"
        assert event.headers.get("codec") == b"pickle"
        with pytest.raises(DecodeError):
            await json_reader.get(timeout=20)


async def test_headers_cannot_select_a_codec_memory(pickle_enabled: None) -> None:
    await _headers_case("memory://")


@pytest.mark.brokers
@pytest.mark.parametrize("name", ["kafka", "amqp", "nsq"])
async def test_headers_cannot_select_a_codec_on_a_broker(name: str, pickle_enabled: None) -> None:
    await _headers_case(BROKERS[name].url)


@pytest.mark.parametrize("command", ["send", "tail"])
def test_the_cli_refuses_the_pickle_codec(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELS_")}
    args = ["memory://", _name(), *(["x"] if command == "send" else ["--count", "1", "--timeout", "1"])]
    proc = subprocess.run(
        [sys.executable, "-m", "channels", command, *args, "--codec", "pickle"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pickle" in proc.stderr
