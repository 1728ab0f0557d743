"""Interop of the MQTT drivers with Mosquitto's own clients (mosquitto_pub, mosquitto_sub).

Foreign producer -> Topic: mosquitto_pub sets the user properties the drivers read
(``channels.key``, a plain header, the content type) and the Topic sees key, headers and
value intact. Topic -> foreign consumer: mosquitto_sub (MQTT 5) prints the user properties
and the payload the Topic sent. Both directions, for both drivers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid

import pytest

from channels import App
from channels.url import parse_url

URL = os.environ.get("CHANNELS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
HOST, PORT = parse_url(URL).host_list(1883)[0]
URLS = {
    "mqtt": f"mqtt://{HOST}:{PORT}?session_expiry=600",
    "gmqtt": f"gmqtt://{HOST}:{PORT}?session_expiry=600",
}


def _broker_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _broker_up(), reason="Mosquitto is not running (scripts/brokers up)"),
    pytest.mark.skipif(
        shutil.which("mosquitto_pub") is None or shutil.which("mosquitto_sub") is None,
        reason="mosquitto-clients is not installed",
    ),
]


async def run(*args: str, timeout: float = 20.0) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}): {err.decode()}"
    return out.decode("utf-8")


def base_args(tool: str) -> list[str]:
    return [tool, "-h", HOST, "-p", str(PORT), "-V", "mqttv5", "-q", "1"]


@pytest.mark.parametrize("scheme", ["mqtt", "gmqtt"])
async def test_mosquitto_pub_to_topic(scheme: str) -> None:
    topic_name = f"interop-in-{uuid.uuid4().hex[:12]}"
    async with App(f"interop-{uuid.uuid4().hex[:8]}", broker=URLS[scheme]) as app:
        topic = app.topic(topic_name, internal=True, key_serializer="raw", value_serializer="raw")
        async with topic.events() as stream:
            await run(
                *base_args("mosquitto_pub"), "-t", topic_name, "-m", "payload-1",
                "-D", "PUBLISH", "user-property", "channels.key", "user-42",
                "-D", "PUBLISH", "user-property", "trace", "abc",
                "-D", "PUBLISH", "content-type", "text/plain",
            )
            await run(*base_args("mosquitto_pub"), "-t", topic_name, "-m", "plain")
            first = await stream.get(timeout=10)
            second = await stream.get(timeout=10)
    assert first.key == b"user-42"
    assert first.value == b"payload-1"
    assert first.headers == {"trace": b"abc", "content-type": b"text/plain"}
    assert (second.key, second.value, second.headers) == (None, b"plain", {})


@pytest.mark.parametrize("scheme", ["mqtt", "gmqtt"])
async def test_topic_to_mosquitto_sub(scheme: str) -> None:
    topic_name = f"interop-out-{uuid.uuid4().hex[:12]}"
    client_id = f"interop-sub-{uuid.uuid4().hex[:12]}"
    session = ["-i", client_id, "-c", "-x", "120"]
    # Subscribe a persistent session and leave (-E: exit once the SUBACK arrived), so the
    # broker keeps what the Topic publishes; then resume it and print what was kept.
    await run(*base_args("mosquitto_sub"), *session, "-t", topic_name, "-E")
    async with App(f"interop-{uuid.uuid4().hex[:8]}", broker=URLS[scheme]) as app:
        topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
        await topic.send(
            key=b"user-7", value=b"hello \xc3\xa9", headers={"trace": "t-1", "bin": b"\xff"}
        )
        await topic.send(value=b"second")
    out = await run(
        *base_args("mosquitto_sub"), *session, "-t", topic_name, "-C", "2", "-W", "20",
        "-F", "%t|%P|%p",
    )
    first, second = out.rstrip("\n").split("\n")
    name, props, payload = first.split("|", 2)
    assert name == topic_name
    assert payload == "hello é"
    assert "channels.key:user-7" in props
    assert "trace:t-1" in props
    assert "channels.b64.bin:/w==" in props
    assert second == f"{topic_name}||second"
