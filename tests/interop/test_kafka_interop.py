"""Interop with Kafka's own Java clients, both directions.

The foreign side is the broker's console producer and console consumer
(``org.apache.kafka.tools.ConsoleProducer`` / ``...consumer.ConsoleConsumer``), run from the
broker's own jars with ``scripts/brokers kafka-run``. Checked: key, value and headers of a
Java-produced record arrive intact in a Topic (a null value as None); a record sent by a
Topic is printed correctly by the console consumer; and the Java producer and ours put the
same key on the same partition (murmur2).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from channels import App
from channels.url import parse_url
from transports.kafka import partition_for_key

URL = os.environ.get("CHANNELS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
ROOT = Path(__file__).resolve().parents[2]
BROKERS = ROOT / "scripts" / "brokers"
BOOTSTRAP = ",".join(f"{h}:{p}" for h, p in parse_url(URL).host_list(9092))
PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"


def _kafka_up() -> bool:
    host, port = parse_url(URL).host_list(9092)[0]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _kafka_up(), reason="Kafka is not running (scripts/brokers up kafka)"),
    pytest.mark.skipif(
        not BROKERS.exists()
        or shutil.which(os.environ.get("CHANNELS_BROKERS_JAVA", "java")) is None,
        reason="needs scripts/brokers and java to run Kafka's console tools",
    ),
]


def name(prefix: str) -> str:
    return f"ki-{prefix}-{uuid.uuid4().hex[:12]}"


async def kafka_tool(cls: str, *args: str, stdin: bytes | None = None, timeout: float = 90) -> str:
    """Run one of Kafka's Java tool classes; return its standard output."""
    proc = await asyncio.create_subprocess_exec(
        str(BROKERS),
        "kafka-run",
        cls,
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cls} did not finish within {timeout}s") from None
    assert proc.returncode == 0, f"{cls} failed ({proc.returncode}): {err.decode()[-2000:]}"
    return out.decode("utf-8")


async def java_produce(topic: str, lines: list[str]) -> None:
    """Records as ``headers<TAB>key|value`` lines (headers ``k:v,k:v``; ``<NULL>`` = null)."""
    await kafka_tool(
        PRODUCER,
        "--bootstrap-server", BOOTSTRAP,
        "--topic", topic,
        "--reader-property", "parse.key=true",
        "--reader-property", "key.separator=|",
        "--reader-property", "parse.headers=true",
        "--reader-property", "null.marker=<NULL>",
        stdin=("\n".join(lines) + "\n").encode("utf-8"),
    )  # fmt: skip


async def java_consume(topic: str, count: int) -> list[list[str]]:
    """``count`` records from the beginning as [partition, headers, key, value] fields."""
    out = await kafka_tool(
        CONSUMER,
        "--bootstrap-server", BOOTSTRAP,
        "--topic", topic,
        "--from-beginning",
        "--max-messages", str(count),
        "--timeout-ms", "60000",
        "--formatter-property", "print.key=true",
        "--formatter-property", "print.headers=true",
        "--formatter-property", "print.partition=true",
        "--formatter-property", "null.literal=<NULL>",
    )  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("Partition:")]
    assert len(rows) == count, f"console consumer printed {len(rows)} of {count}: {out[-2000:]}"
    return rows


async def collect(stream: Any, count: int, seconds: float = 60) -> list[Any]:
    events = []
    for _ in range(count):
        events.append(await stream.get(timeout=seconds))
    return events


async def test_java_producer_to_topic() -> None:
    topic_name = name("from-java")
    async with App(name("app"), broker=URL) as app:
        topic = app.topic(
            topic_name, internal=True, partitions=5, key_serializer="raw", value_serializer="raw"
        )
        await topic.declare()  # the group exists now: it gets what Java sends next
        lines = [f"trace:t-{i},kind:j\u00e4va\tkey-{i}|value-{i} \u00fc\u65e5" for i in range(12)]
        lines.append("kind:tomb\tgone|<NULL>")
        await java_produce(topic_name, lines)
        async with topic.events() as stream:
            events = await collect(stream, len(lines))
    got = {e.key: e for e in events}
    for i in range(12):
        event = got[f"key-{i}".encode()]
        assert event.value == f"value-{i} \u00fc\u65e5".encode()
        assert event.headers == {"trace": f"t-{i}".encode(), "kind": "j\u00e4va".encode()}
        assert event.message.partition == partition_for_key(f"key-{i}".encode(), 5)
    tombstone = got[b"gone"]
    assert tombstone.value is None and tombstone.headers == {"kind": b"tomb"}


async def test_topic_to_java_consumer() -> None:
    topic_name = name("to-java")
    async with App(name("app"), broker=URL) as app:
        topic = app.topic(
            topic_name, internal=True, partitions=3, key_serializer="str", value_serializer="raw"
        )
        await topic.declare()
        sent = {}
        for i in range(6):
            md = await topic.send(
                key=f"our-key-{i}",
                value=f"our value {i} \u00e9".encode(),
                headers={"h1": f"x-{i}", "h2": "\u00e9"},
            )
            sent[f"our-key-{i}"] = md.partition
        tomb = await topic.send(key="deleted", value=None)
    rows = await java_consume(topic_name, 7)
    seen = {key: (partition, headers, value) for partition, headers, key, value in rows}
    for i in range(6):
        partition, headers, value = seen[f"our-key-{i}"]
        assert value == f"our value {i} \u00e9"
        assert headers == f"h1:x-{i},h2:\u00e9"
        assert partition == f"Partition:{sent[f'our-key-{i}']}"
    assert seen["deleted"] == (f"Partition:{tomb.partition}", "NO_HEADERS", "<NULL>")


async def test_same_key_same_partition_as_the_java_producer() -> None:
    topic_name = name("murmur")
    keys = [f"customer-{i:03d}" for i in range(30)] + ["\u00fcnicode-\u65e5\u672c", "x"]
    async with App(name("app"), broker=URL) as app:
        topic = app.topic(
            topic_name, internal=True, partitions=7, key_serializer="str", value_serializer="raw"
        )
        await topic.declare()
        await java_produce(topic_name, [f"src:java\t{key}|java" for key in keys])
        ours = {key: (await topic.send(key=key, value=b"ours")).partition for key in keys}
        async with topic.events(from_beginning=True) as stream:
            events = await collect(stream, 2 * len(keys))
    java = {e.key: e.message.partition for e in events if e.value == b"java"}
    assert set(java) == set(keys)
    mismatched = {
        key: (java[key], ours[key], partition_for_key(key.encode(), 7))
        for key in keys
        if not java[key] == ours[key] == partition_for_key(key.encode(), 7)
    }
    assert not mismatched, f"(java, ours, murmur2) partitions differ: {mismatched}"
