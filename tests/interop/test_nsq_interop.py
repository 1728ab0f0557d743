"""Interop with ordinary NSQ producers and consumers, both directions.

Foreign side: nsqd's HTTP ``/pub`` and ``/mpub``, NSQ's own ``to_nsq`` and ``nsq_tail``
(built by scripts/brokers into .brokers/bin; those cases skip when they are missing), and
a plain ansq reader that knows nothing of anychannel.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from channels import App
from channels.envelope import MAGIC
from tests.support import NsqTopics

URL = os.environ.get("CHANNELS_TEST_NSQ_URL", "nsq://127.0.0.1:4150")
HTTP = "http://127.0.0.1:4151"
ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".brokers" / "bin"


def _nsqd_up() -> bool:
    try:
        with urllib.request.urlopen(f"{HTTP}/ping", timeout=2) as response:
            return bool(response.read() == b"OK")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _nsqd_up(), reason="nsqd is not running")


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not built (scripts/brokers up nsq builds it into .brokers/bin)")
    return found


_topics = NsqTopics(HTTP, "io")
name = _topics.name


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _topics.delete_all()


def http_post(path: str, body: bytes = b"") -> bytes:
    request = urllib.request.Request(f"{HTTP}{path}", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return bytes(response.read())


async def test_http_pub_arrives_as_is() -> None:
    topic = name()
    async with App("interop-in", broker=URL) as app:
        t = app.topic(topic, internal=True, value_serializer="raw")
        await t.declare()
        stream = t.events()
        await stream.start()
        payloads = [b"plain", b"\x00\xff binary \x00", "unicod\u00e9".encode()]
        for payload in payloads:
            assert await asyncio.to_thread(http_post, f"/pub?topic={topic}", payload) == b"OK"
        got = [await stream.get(timeout=10) for _ in payloads]
        assert sorted(e.value for e in got) == sorted(payloads)
        assert all(e.key is None and e.headers == {} for e in got)
        await stream.close(clean=True)


async def test_to_nsq_arrives_as_is() -> None:
    to_nsq = tool("to_nsq")
    topic = name()
    async with App("interop-to-nsq", broker=URL) as app:
        t = app.topic(topic, internal=True, value_serializer="raw")
        await t.declare()
        stream = t.events()
        await stream.start()
        proc = await asyncio.create_subprocess_exec(
            to_nsq,
            "--nsqd-tcp-address=127.0.0.1:4150",
            f"--topic={topic}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(b"line one\nline two\n"), 30)
        assert proc.returncode == 0, err
        got = {(await stream.get(timeout=10)).value for _ in range(2)}
        assert got == {b"line one", b"line two"}
        await stream.close(clean=True)


async def test_envelope_off_reaches_nsq_tail_plain() -> None:
    nsq_tail = tool("nsq_tail")
    topic = name()
    http_post(f"/topic/create?topic={topic}")
    proc = await asyncio.create_subprocess_exec(
        nsq_tail,
        "--nsqd-tcp-address=127.0.0.1:4150",
        f"--topic={topic}",
        "-n",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # nsq_tail subscribes with an ephemeral channel: wait until it exists
        for _ in range(100):
            stats = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"{HTTP}/stats?format=json&topic={topic}", timeout=5).read()
            )
            if b'"channel_name"' in stats:
                break
            await asyncio.sleep(0.1)
        async with App("interop-out", broker=URL + "?envelope=off") as app:
            t = app.topic(topic, value_serializer="raw")
            await t.send(value=b"for nsq_tail")
            await t.send(value="caf\u00e9")
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.splitlines() == [b"for nsq_tail", "caf\u00e9".encode()], err


async def test_envelope_off_reaches_a_plain_ansq_reader() -> None:
    import ansq

    topic, channel = name(), name("plain")
    http_post(f"/topic/create?topic={topic}")
    http_post(f"/channel/create?topic={topic}&channel={channel}")
    async with App("interop-out2", broker=URL + "?envelope=off") as app:
        t = app.topic(topic, value_serializer="json")
        await t.send(value={"n": 1})
    async with App("interop-env", broker=URL) as app:
        t = app.topic(topic, key_serializer="raw", value_serializer="raw")
        await t.send(key=b"k", value=b"wrapped", headers={"h": b"v"})
    reader = await ansq.create_reader(topic=topic, channel=channel, nsqd_tcp_addresses=["127.0.0.1:4150"])
    try:
        bodies = []
        for _ in range(2):
            message = await asyncio.wait_for(reader.wait_for_message(), 10)
            bodies.append(message.body)
            await message.fin()
    finally:
        await reader.close()
    plain = [b for b in bodies if not b.startswith(MAGIC)]
    wrapped = [b for b in bodies if b.startswith(MAGIC)]
    # envelope=off: plain JSON; default: the documented envelope, value at the end
    assert plain == [b'{"n": 1}'] or plain == [b'{"n":1}']
    assert len(wrapped) == 1 and wrapped[0].endswith(b"wrapped")
