"""The brokers of scripts/brokers are real and reachable, checked with each broker's own
client library (not our drivers), and they listen on loopback only.

The test command starts the brokers first (scripts/brokers up); these tests do not skip.
URLs may be overridden with CHANNELS_TEST_<NAME>_URL like the rest of the suite.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.brokers

T = TypeVar("T")
STEP = 30.0  # seconds allowed for any single network step


def _url(name: str, default: str) -> str:
    return os.environ.get(f"CHANNELS_TEST_{name.upper()}_URL", default)


def _hostport(name: str, default: str) -> tuple[str, int]:
    parts = urlsplit(_url(name, default))
    assert parts.hostname and parts.port, f"bad {name} URL"
    return parts.hostname, parts.port


async def _step(aw: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(aw, STEP)
    except TimeoutError:
        pytest.fail(f"{what}: no answer within {STEP:.0f}s")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_kafka_produce_consume_one_record() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    host, port = _hostport("kafka", "kafka://127.0.0.1:9092")
    bootstrap = f"{host}:{port}"
    topic = _unique("brokers-reachable")
    payload = uuid.uuid4().bytes

    async def main() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
        await _step(admin.start(), "kafka admin start")
        try:
            # auto.create.topics.enable=false on our broker: the topic must be created first
            await _step(admin.create_topics([NewTopic(topic, 1, 1)]), "kafka create topic")
        finally:
            await _step(admin.close(), "kafka admin close")

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=20000)
        await _step(producer.start(), "kafka producer start")
        try:
            meta = await _step(producer.send_and_wait(topic, payload, key=b"k"), "kafka produce")
        finally:
            await _step(producer.stop(), "kafka producer stop")
        assert meta.topic == topic and meta.offset == 0

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await _step(consumer.start(), "kafka consumer start")
        try:
            record = await _step(consumer.getone(), "kafka consume")
        finally:
            await _step(consumer.stop(), "kafka consumer stop")
        assert (record.key, record.value, record.offset) == (b"k", payload, 0)

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await _step(admin.start(), "kafka admin start")
        try:
            await _step(admin.delete_topics([topic]), "kafka delete topic")
        finally:
            await _step(admin.close(), "kafka admin close")

    asyncio.run(main())


def test_kafka_does_not_auto_create_topics() -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

    host, port = _hostport("kafka", "kafka://127.0.0.1:9092")
    topic = _unique("brokers-never-created")

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"{host}:{port}", request_timeout_ms=5000)
        await _step(producer.start(), "kafka producer start")
        try:
            with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
                # the producer waits up to 3 s for the topic's metadata, which never comes
                await asyncio.wait_for(producer.partitions_for(topic), 10)
        finally:
            await _step(producer.stop(), "kafka producer stop")

    asyncio.run(main())


def test_rabbitmq_publish_get() -> None:
    import aio_pika

    url = _url("rabbitmq", "amqp://guest:guest@127.0.0.1:5672/")
    body = uuid.uuid4().bytes

    async def main() -> None:
        conn = await _step(aio_pika.connect(url, timeout=STEP), "amqp connect")
        try:
            channel = await _step(conn.channel(), "amqp channel")
            queue = await _step(channel.declare_queue(exclusive=True, auto_delete=True), "amqp declare queue")
            await _step(
                channel.default_exchange.publish(aio_pika.Message(body, message_id="m1"), routing_key=queue.name),
                "amqp publish",
            )
            message = None
            for _ in range(100):  # basic.get returns None until the message is routed
                message = await _step(queue.get(no_ack=False, fail=False), "amqp get")
                if message is not None:
                    break
                await asyncio.sleep(0.05)
            assert message is not None, "message never arrived in the queue"
            assert message.body == body and message.message_id == "m1"
            await _step(message.ack(), "amqp ack")
            # the plugin a driver may use is enabled
            await _step(
                channel.declare_exchange(_unique("brokers-chx"), "x-consistent-hash", auto_delete=True),
                "amqp declare x-consistent-hash exchange",
            )
        finally:
            await _step(conn.close(), "amqp close")

    asyncio.run(main())


def test_mqtt_qos1_round_trip() -> None:
    import aiomqtt

    host, port = _hostport("mqtt", "mqtt://127.0.0.1:1883")
    topic = f"anychannel/brokers-reachable/{uuid.uuid4().hex}"
    payload = uuid.uuid4().bytes

    async def main() -> None:
        async with aiomqtt.Client(host, port, identifier=_unique("reachable"), timeout=STEP) as client:
            await _step(client.subscribe(topic, qos=1), "mqtt subscribe")
            await _step(client.publish(topic, payload, qos=1), "mqtt publish")

            async def first() -> aiomqtt.Message:
                async for message in client.messages:
                    return message
                raise AssertionError("message stream ended")

            message = await _step(first(), "mqtt receive")
            assert message.topic.value == topic
            assert message.payload == payload
            assert message.qos == 1

    asyncio.run(main())


def test_nsq_publish_and_read() -> None:
    import ansq

    host, port = _hostport("nsq", "nsq://127.0.0.1:4150")
    topic = _unique("brokers-reachable")
    body = uuid.uuid4().hex.encode()

    async def main() -> None:
        nsq = await _step(ansq.open_connection(host, port), "nsq connect")
        try:
            response = await _step(nsq.pub(topic, body), "nsq pub")
            assert response.is_ok, response
            await _step(nsq.sub(topic, "reader"), "nsq sub")
            await _step(nsq.rdy(1), "nsq rdy")
            message = await _step(nsq.wait_for_message(), "nsq message")
            assert message is not None and message.body == body
            await _step(message.fin(), "nsq fin")
        finally:
            await _step(nsq.close(), "nsq close")

    asyncio.run(main())


BROKER_PROCESSES = {"java", "beam.smp", "epmd", "mosquitto", "nsqd", "nsqlookupd"}
# kafka, rabbitmq (+ distribution, epmd), mqtt, nsqd, nsqlookupd, zmq device range
BROKER_PORTS = {9092, 9093, 5672, 25672, 4369, 1883, 4150, 4151, 4160, 4161, *range(5560, 5570)}
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):(\d+)$")


def test_broker_listeners_are_loopback_only() -> None:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True).stdout
    ports: set[int] = set()
    exposed: list[str] = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        port = int(local.rsplit(":", 1)[1])
        names = set(re.findall(r'"([^"]+)",pid=', " ".join(fields[5:])))
        if not (names & BROKER_PROCESSES or port in BROKER_PORTS):
            continue
        if LOOPBACK.match(local):
            ports.add(port)
        else:
            exposed.append(f"{'/'.join(sorted(names)) or '?'} listens on {local}")
    assert not exposed, "broker listeners beyond loopback: " + "; ".join(exposed)
    # the brokers are up for this suite: each one's main port is there (on loopback)
    missing = {9092, 5672, 1883, 4150} - ports
    assert not missing, f"no loopback listener on ports {sorted(missing)}"
