"""Tests of what is particular to the Kafka driver, against the real broker of scripts/brokers.

Shared semantics are proven by the conformance suite; here: URL options and redaction,
Kafka's name rule, murmur2 partitioning, offset commits (contiguous acked prefix, on revoke,
on close, never for partitions no longer owned), nack as seek-back, declare (idempotence,
partition counts, source topics, publish-after-declare), from_beginning after declare,
pattern subscriptions to topics created later, the prefetch window, cancel-safe receive,
ephemeral groups (no offsets ever, the group gone after the last member, also after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from channels import App
from channels.errors import ConfigurationError, ConnectionFailed, MessageTooLarge, TopicNotFound
from channels.events import Message, RecordMetadata
from channels.url import parse_url
from transports.base import Subscription, SubscriptionSpec, TopicSpec
from transports.kafka import DECLARED, EPHEMERAL_SUFFIX, KafkaTransport, group_id_for, partition_for_key

URL = os.environ.get("CHANNELS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
ROOT = Path(__file__).resolve().parents[2]
HAS_BROKERS_SCRIPT = (ROOT / "scripts" / "brokers").exists()
FAST = {"commit_interval_ms": "200"}


def _kafka_up() -> bool:
    host, port = parse_url(URL).host_list(9092)[0]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


needs_kafka = pytest.mark.skipif(not _kafka_up(), reason="Kafka is not running (scripts/brokers up kafka)")


def name(prefix: str = "t") -> str:
    return f"kd-{prefix}-{uuid.uuid4().hex[:12]}"


def transport(url: str = URL, **options: str) -> KafkaTransport:
    if options:
        url += ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())
    return KafkaTransport(parse_url(url))


@contextlib.asynccontextmanager
async def connected(**options: str) -> AsyncIterator[KafkaTransport]:
    t = transport(**{**FAST, **options})
    await asyncio.wait_for(t.connect(), 30)
    try:
        yield t
    finally:
        await asyncio.wait_for(t.close(), 60)


def spec(
    topic: str,
    group: str,
    *,
    partitions: int = 1,
    prefetch: int = 100,
    from_beginning: bool = False,
    ephemeral: bool = False,
) -> SubscriptionSpec:
    return SubscriptionSpec(
        (TopicSpec(topic, internal=True, partitions=partitions),),
        group,
        prefetch=prefetch,
        from_beginning=from_beginning,
        ephemeral=ephemeral,
    )


async def receive(sub: Subscription, n: int, timeout: float = 20) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"received {len(out)} of {n} messages within {timeout}s"
        try:
            out += await asyncio.wait_for(sub.receive(n - len(out)), remaining)
        except TimeoutError:
            continue
    return out


async def nothing_within(sub: Subscription, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        got = await asyncio.wait_for(sub.receive(10), seconds)
        pytest.fail(f"unexpected messages {got}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.1)


async def committed(t: KafkaTransport, group: str, topic: str, partition: int = 0) -> int | None:
    tp = TopicPartition(topic, partition)
    found = await t._committed(group, [tp])
    return found[tp].offset if tp in found else None


async def group_state(t: KafkaTransport, group: str) -> tuple[str, int]:
    """The group's state as the broker describes it, and its number of members."""
    [response] = await t.admin.describe_consumer_groups([group])
    entry = response.groups[0]
    return entry[2], len(entry[5])


async def all_offsets(t: KafkaTransport, group: str) -> dict[TopicPartition, Any]:
    """Every offset the broker keeps for ``group`` (any topic)."""
    found = await t.admin.list_consumer_group_offsets(group)
    return {tp: meta for tp, meta in found.items() if meta.offset >= 0}


async def publish_values(t: KafkaTransport, topic: str, values: list[bytes], **kw: Any) -> None:
    await t.publish([Message(topic, v, **kw) for v in values])


# -- no broker needed ---------------------------------------------------------------------


def test_options_are_parsed() -> None:
    t = transport(
        "kafka://u:pw@h1:9093,h2",
        client_id="billing",
        acks="all",
        compression="gzip",
        linger_ms="5",
        max_batch_size="65536",
        enable_idempotence="true",
        sasl_mechanism="scram-sha-256",
        partitions="6",
        replicas="3",
        max_message_size="2097152",
        session_timeout_ms="8000",
        metadata_max_age_ms="1000",
        commit_interval_ms="500",
    )
    cfg = t.config
    assert cfg.bootstrap == ["h1:9093", "h2:9092"]
    assert cfg.client_id == "billing" and cfg.acks == "all" and cfg.compression == "gzip"
    assert transport(acks="1").config.acks == 1 and transport(acks="0").config.acks == 0
    assert cfg.linger_ms == 5 and cfg.max_batch_size == 65536 and cfg.enable_idempotence
    assert cfg.security_protocol == "SASL_PLAINTEXT"
    assert cfg.sasl == {
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u",
        "sasl_plain_password": "pw",
    }
    assert (cfg.partitions, cfg.replicas, cfg.session_timeout_ms) == (6, 3, 8000)
    assert t.capabilities.max_message_size == 2097152
    assert cfg.commit_interval_ms == 500 and cfg.metadata_max_age_ms == 1000
    plain = transport("kafka://h")
    assert plain.config.security_protocol == "PLAINTEXT" and plain.config.acks == "all"
    assert plain.config.sasl == {} and plain.config.ssl_context is None
    assert transport("kafka://u:pw@h").config.sasl["sasl_mechanism"] == "PLAIN"
    tls = transport("kafka+ssl://h:9093")
    assert tls.config.security_protocol == "SSL" and tls.config.ssl_context is not None
    assert transport("kafka+ssl://u:pw@h", sasl_mechanism="PLAIN").config.security_protocol == "SASL_SSL"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"linger": "5"}, "unknown URL option"),
        ({"acks": "2"}, "acks"),
        ({"compression": "brotli"}, "compression"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "user:password"),
        ({"ssl_cafile": "/nonexistent.pem"}, "kafka\\+ssl"),
        ({"partitions": "0"}, "partitions"),
        ({"linger_ms": "soon"}, "linger_ms"),
        ({"isolation_level": "dirty"}, "isolation_level"),
        ({"enable_idempotence": "true", "acks": "1"}, "acks=all"),
    ],
)
def test_bad_options(options: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        transport(**options)


def test_missing_tls_file_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TLS"):
        transport("kafka+ssl://h:9093", ssl_cafile="/nonexistent/ca.pem")


def test_compression_without_its_library() -> None:
    from aiokafka import codec

    if codec.has_zstd():
        pytest.skip("cramjam is installed")
    with pytest.raises(ConfigurationError, match="cramjam"):
        transport(compression="zstd")


def test_password_never_shows() -> None:
    secret = "s3cr3t-Passw0rd"
    t = transport(f"kafka://alice:{secret}@h:9092", sasl_mechanism="SCRAM-SHA-512")
    assert secret not in repr(t) and secret not in str(t.url)
    with pytest.raises(ConfigurationError) as info:
        transport(f"kafka://alice:{secret}@h:9092", acks="7")
    assert secret not in str(info.value)
    assert "alice:***@" in str(info.value)
    assert secret not in repr(t.config)


@pytest.mark.parametrize("bad", ["a/b", "a b", "caf\u00e9", "a:b", ".", ".."])
def test_kafka_name_rule(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        transport().validate_topic_name(bad)


def test_capabilities() -> None:
    caps = transport().capabilities
    assert caps.persistent and caps.consumer_groups and caps.fanout_groups
    assert caps.per_key_ordering and caps.ack and caps.redelivery_on_nack
    assert caps.replay_from_start and caps.native_headers and caps.native_keys
    assert caps.patterns and caps.explicit_partitions and caps.topic_check
    assert not caps.uses_envelope and not caps.exactly_once
    assert caps.max_message_size == 1_000_000


# Kafka's own org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit results).
MURMUR2_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "expected"), MURMUR2_VECTORS)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    from aiokafka.partitioner import murmur2

    value = murmur2(data)
    signed = value - (1 << 32) if value >= 1 << 31 else value
    assert signed == expected
    assert partition_for_key(data, 7) == (expected & 0x7FFFFFFF) % 7


# -- against the broker -----------------------------------------------------------------


@needs_kafka
async def test_keys_land_on_their_murmur2_partition() -> None:
    topic = name("keys")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=7))
        keys = [f"user-{i}".encode() for i in range(40)]
        mds = await t.publish([Message(topic, b"v", key) for key in keys])
        assert [md.partition for md in mds] == [partition_for_key(k, 7) for k in keys]
        explicit = await t.publish([Message(topic, b"v", b"user-1", partition=5)])
        assert explicit[0].partition == 5
        # a message that alone is wrong fails alone: its batch-mates still go out
        bad, good = await t.publish([Message(topic, b"v", partition=7), Message(topic, b"v", partition=1)])
        assert isinstance(bad, ConfigurationError) and "partition 7 does not exist" in str(bad)
        assert isinstance(good, RecordMetadata) and good.partition == 1


@needs_kafka
async def test_commit_is_the_contiguous_acked_prefix() -> None:
    topic, group = name("commit"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [b"0", b"1", b"2", b"3"])
        sub = await t.subscribe(spec(topic, group))
        got = await receive(sub, 4)
        assert [m.offset for m in got] == [0, 1, 2, 3]
        await sub.ack([got[0], got[1], got[3]])

        async def at(value: int) -> bool:
            return await committed(t, group, topic) == value

        await eventually(lambda: at(2), what="committed offset 2 after acking 0, 1, 3")
        await sub.ack([got[2]])
        await eventually(lambda: at(4), what="committed offset 4 after acking all")
        await sub.ack([got[2]])  # acking twice does nothing
        await sub.close()


@needs_kafka
async def test_close_commits_acked_and_returns_the_rest() -> None:
    topic, group = name("close"), name("g")
    async with connected(commit_interval_ms="60000") as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [str(i).encode() for i in range(5)])
        sub = await t.subscribe(spec(topic, group))
        got = await receive(sub, 5)
        await sub.ack(got[:2])
        await sub.close()
        assert await committed(t, group, topic) == 2
        again = await t.subscribe(spec(topic, group))
        rest = await receive(again, 3)
        assert [m.value for m in rest] == [b"2", b"3", b"4"]
        await again.close()


@needs_kafka
async def test_nack_seeks_back_and_keeps_order() -> None:
    topic, group = name("nack"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [str(i).encode() for i in range(5)])
        sub = await t.subscribe(spec(topic, group))
        got = await receive(sub, 5)
        await sub.ack(got[:2])
        await sub.nack([got[3], got[2]])
        await sub.ack([got[4]])  # handed out before the rewind: ignored until it comes again
        again = await receive(sub, 3)
        assert [m.value for m in again] == [b"2", b"3", b"4"]
        assert all(m.redelivered for m in again)
        await sub.nack([again[0]], requeue=False)  # dropped: counts as handled
        await sub.ack(again[1:])

        async def at_end() -> bool:
            return await committed(t, group, topic) == 5

        await eventually(at_end, what="committed 5")
        await nothing_within(sub, 1.0)
        await sub.close()


@needs_kafka
async def test_revoke_commits_and_forgets_the_partition() -> None:
    topic, group = name("revoke"), name("g")
    async with connected(commit_interval_ms="60000") as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=2), group)
        await t.publish([Message(topic, f"{p}-{i}".encode(), partition=p) for p in (0, 1) for i in range(3)])
        a = await t.subscribe(spec(topic, group, partitions=2))
        got = await receive(a, 6)
        first = {p: [m for m in got if m.partition == p] for p in (0, 1)}
        await a.ack(first[0][:2] + first[1][:1])
        b = await t.subscribe(spec(topic, group, partitions=2))
        consumer = a.consumer  # type: ignore[attr-defined]

        async def a_rejoined() -> bool:
            return len(consumer.assignment()) == 1

        await eventually(a_rejoined, what="a holds one partition after b joined")
        # The rebalance revoked both partitions of a (eager protocol): it committed its
        # acked prefix in the revoke listener, then b and a share the partitions.
        assert await committed(t, group, topic, 0) == 2
        assert await committed(t, group, topic, 1) == 1
        kept = {tp.partition for tp in consumer.assignment()}
        lost = ({0, 1} - kept).pop()
        before = await committed(t, group, topic, lost)
        await a.ack(first[lost])  # a no longer owns it: nothing may be committed for it
        await a._commit({TopicPartition(topic, lost)})  # type: ignore[attr-defined]
        assert await committed(t, group, topic, lost) == before
        # b gets the unacked rest of its partition again.
        redelivered = await receive(b, 3 - (before or 0))
        assert {m.partition for m in redelivered} == {lost}
        await a.close()
        await b.close()


@needs_kafka
async def test_declare_is_idempotent_and_checks_partitions() -> None:
    topic = name("declare")
    async with connected(partitions="3") as t:
        await t.declare(TopicSpec(topic, internal=True))
        await t.declare(TopicSpec(topic, internal=True))
        assert await t._describe(topic) == 3
        await t.declare(TopicSpec(topic, internal=True, partitions=2))  # more than asked: kept
        with pytest.raises(ConfigurationError, match="fewer"):
            await t.declare(TopicSpec(topic, internal=True, partitions=5))
        await t.declare(TopicSpec(topic))  # an existing source topic is fine
        missing = name("missing")
        with pytest.raises(TopicNotFound) as info:
            await t.declare(TopicSpec(missing), "g")
        assert info.value.topic == missing
        assert await t._describe(missing) is None  # never created
        [outcome] = await t.publish([Message(missing, b"x")])
        assert isinstance(outcome, TopicNotFound)


@needs_kafka
async def test_internal_topic_config_is_applied() -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    topic = name("config")
    async with connected() as t:
        await t.declare(
            TopicSpec(
                topic,
                internal=True,
                partitions=2,
                retention=3600,
                compacting=True,
                config={"min.compaction.lag.ms": "1000"},
            )
        )
        values: dict[str, str] = {}

        async def described() -> bool:
            # Right after creation the broker may not describe the topic yet.
            [response] = await t.admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            values.update({entry[0]: entry[1] for entry in response.resources[0][4]})
            return "retention.ms" in values

        await eventually(described, what="the topic's configs described")
        assert values["retention.ms"] == "3600000"
        assert values["cleanup.policy"] == "compact"
        assert values["min.compaction.lag.ms"] == "1000"


@needs_kafka
async def test_publish_after_declare_reaches_the_group_later() -> None:
    topic, group, late = name("pad"), name("g"), name("late")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=2))
        await publish_values(t, topic, [b"before-declare"])
        await t.declare(TopicSpec(topic, internal=True, partitions=2), group)
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        offsets = await t._committed(group, tps)
        assert all(meta.metadata == DECLARED for meta in offsets.values()) and len(offsets) == 2
        await t.declare(TopicSpec(topic, internal=True, partitions=2), group)  # idempotent
        await publish_values(t, topic, [b"after-declare"])
        sub = await t.subscribe(spec(topic, group, partitions=2))
        got = await receive(sub, 1)
        assert [m.value for m in got] == [b"after-declare"]
        await nothing_within(sub, 1.0)
        await sub.close()
        # A group that subscribes without declare starts at the end.
        other = await t.subscribe(spec(topic, late, partitions=2))
        await publish_values(t, topic, [b"after-subscribe"])
        assert [m.value for m in await receive(other, 1)] == [b"after-subscribe"]
        await other.close()


@needs_kafka
async def test_from_beginning_replays_even_after_declare() -> None:
    topic, group = name("replay"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1))
        await publish_values(t, topic, [b"old-1", b"old-2"])
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [b"new"])
        sub = await t.subscribe(spec(topic, group, from_beginning=True))
        got = await receive(sub, 3)
        assert [m.value for m in got] == [b"old-1", b"old-2", b"new"]
        await sub.ack(got)
        await sub.close()
        # Once the group has consumed, from_beginning no longer rewinds it.
        again = await t.subscribe(spec(topic, group, from_beginning=True))
        await publish_values(t, topic, [b"newer"])
        assert [m.value for m in await receive(again, 1)] == [b"newer"]
        await again.close()


@needs_kafka
async def test_pattern_reaches_topics_created_later() -> None:
    prefix = f"kd-pat-{uuid.uuid4().hex[:8]}"
    existing, later, other = f"{prefix}-a", f"{prefix}-b", f"{prefix}x-c"
    group = name("g")
    async with connected(metadata_max_age_ms="1000", commit_interval_ms="60000") as t:
        await t.declare(TopicSpec(existing, internal=True, partitions=1))
        await t.declare(TopicSpec(other, internal=True, partitions=1))
        await publish_values(t, existing, [b"before-subscribe"])
        pattern = SubscriptionSpec((), group, pattern=f"{prefix}-.*")
        sub = await t.subscribe(pattern)
        await publish_values(t, existing, [b"after-subscribe"])
        await publish_values(t, other, [b"does-not-match"])
        got = await receive(sub, 1, timeout=30)
        assert [m.value for m in got] == [b"after-subscribe"]
        await sub.ack(got)  # committed when the new topic makes the group rebalance
        await t.declare(TopicSpec(later, internal=True, partitions=1))
        await publish_values(t, later, [b"new-topic"])
        got = await receive(sub, 1, timeout=40)
        assert [(m.topic, m.value) for m in got] == [(later, b"new-topic")]
        await nothing_within(sub, 1.0)
        await sub.close()


@needs_kafka
async def test_prefetch_window_and_pause() -> None:
    topic, group = name("window"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [str(i).encode() for i in range(10)])
        sub = await t.subscribe(spec(topic, group, prefetch=3))
        got = await receive(sub, 3)
        assert len(got) == 3
        await nothing_within(sub, 1.0)  # window full
        assert sub.consumer.paused()  # type: ignore[attr-defined]
        await sub.ack(got[:1])
        more = await receive(sub, 1)
        assert [m.value for m in more] == [b"3"]
        await sub.ack(got[1:] + more)
        rest = await receive(sub, 3)
        assert [m.value for m in rest] == [b"4", b"5", b"6"]
        await sub.close()


@needs_kafka
async def test_receive_is_cancel_safe() -> None:
    topic, group = name("cancel"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=2), group)
        sub = await t.subscribe(spec(topic, group, partitions=2, prefetch=1000))
        total = 300
        sender = asyncio.create_task(publish_values(t, topic, [str(i).encode() for i in range(total)]))
        seen: list[bytes | None] = []
        deadline = time.monotonic() + 60
        while len(seen) < total and time.monotonic() < deadline:
            try:
                batch = await asyncio.wait_for(sub.receive(7), 0.005)
            except TimeoutError:
                continue
            seen += [m.value for m in batch]
            await sub.ack(batch)
        await sender
        assert sorted(seen, key=lambda v: int(v or b"0")) == [str(i).encode() for i in range(total)]
        await sub.close()


@needs_kafka
async def test_large_messages_with_max_message_size() -> None:
    topic, group = name("large"), name("g")
    async with connected(max_message_size=str(3 * 1024 * 1024)) as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        body = os.urandom(2 * 1024 * 1024)
        await t.publish([Message(topic, body, b"k")])
        sub = await t.subscribe(spec(topic, group, from_beginning=True))
        [got] = await receive(sub, 1)
        assert got.value == body
        await sub.close()
    app = App(name("app"), broker=URL)
    async with app:
        big = app.topic(name("big"), internal=True, value_serializer="raw")
        with pytest.raises(MessageTooLarge, match="1000000"):
            await big.send(value=b"x" * 1_000_001)


@needs_kafka
async def test_tombstones_empty_values_and_header_bytes() -> None:
    topic, group = name("values"), name("g")
    headers = {"bin": bytes(range(256)), "empty": b""}
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await t.publish(
            [
                Message(topic, None, b"k", headers),
                Message(topic, None),
                Message(topic, b""),
                Message(topic, b"v", b""),
            ]
        )
        sub = await t.subscribe(spec(topic, group))
        got = await receive(sub, 4)
        assert [(m.value, m.key) for m in got] == [
            (None, b"k"),
            (None, None),
            (b"", None),
            (b"v", b""),
        ]
        assert got[0].headers == headers
        await sub.close()


@needs_kafka
async def test_broker_restart_keeps_acked_work_and_reconnects() -> None:
    root = ROOT
    if not HAS_BROKERS_SCRIPT:
        pytest.skip("needs scripts/brokers to restart Kafka")
    topic, group = name("restart"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=2), group)
        sub = await t.subscribe(spec(topic, group, partitions=2))
        await publish_values(t, topic, [f"a{i}".encode() for i in range(50)])
        first = await receive(sub, 50)
        await sub.ack(first)

        async def all_committed() -> bool:
            found = await t._committed(group, [TopicPartition(topic, p) for p in (0, 1)])
            return bool(sum(meta.offset for meta in found.values()) == 50)

        await eventually(all_committed, what="50 acked offsets committed")
        started = time.monotonic()
        await asyncio.to_thread(
            subprocess.run,
            [str(root / "scripts" / "brokers"), "restart", "kafka"],
            cwd=root,
            check=True,
            timeout=240,
            capture_output=True,
        )
        restart_seconds = time.monotonic() - started
        # The same transport and subscription carry on: sends succeed again, the member
        # receives the new messages and none of the acked ones comes back.
        deadline = time.monotonic() + 120
        while True:
            try:
                await asyncio.wait_for(publish_values(t, topic, [f"b{i}".encode() for i in range(50)]), 60)
                break
            except Exception:
                assert time.monotonic() < deadline, "publishing never worked after the restart"
                await asyncio.sleep(1)
        second = await receive(sub, 50, timeout=120)
        values = sorted(m.value or b"" for m in second)
        assert values == sorted(f"b{i}".encode() for i in range(50)), (
            f"after a {restart_seconds:.0f}s restart: {values[:5]}..."
        )
        await sub.ack(second)

        async def hundred_committed() -> bool:
            found = await t._committed(group, [TopicPartition(topic, p) for p in (0, 1)])
            return bool(sum(meta.offset for meta in found.values()) == 100)

        await eventually(hundred_committed, timeout=60, what="commits work after the restart")
        await sub.close()


@needs_kafka
async def test_source_topic_limit_is_named_when_the_broker_refuses() -> None:
    topic = name("small")
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, config={"max.message.bytes": "4096"}))
    source = transport(**FAST)  # sees it as a source topic: only the broker knows its limit
    await source.connect()
    try:
        await source.declare(TopicSpec(topic))
        [refused] = await source.publish([Message(topic, b"x" * 20_000)])
        assert isinstance(refused, MessageTooLarge)
        assert refused.limit == 4096 - 128 and refused.size == 20_000
        md = await source.publish([Message(topic, b"x" * 3000)])
        assert md[0].offset == 0
    finally:
        await source.close()


async def test_unreachable_broker_is_connection_failed() -> None:
    t = transport("kafka://alice:pw-Secret9@127.0.0.1:1", sasl_mechanism="PLAIN")
    with pytest.raises(ConnectionFailed) as info:
        await asyncio.wait_for(t.connect(), 60)
    assert "pw-Secret9" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value) and info.value.retryable


@needs_kafka
async def test_declare_for_a_group_that_is_busy_on_another_topic() -> None:
    # One group for several topics (the app id): its members on topic a keep it non-empty,
    # so declare cannot commit start offsets for topic b; b's first member still starts
    # where declare stood.
    a, b, group = name("busy-a"), name("busy-b"), name("g")
    async with connected() as t:
        await t.declare(TopicSpec(a, internal=True, partitions=1), group)
        on_a = await t.subscribe(spec(a, group))
        await t.declare(TopicSpec(b, internal=True, partitions=1), group)
        await publish_values(t, b, [b"after-declare"])
        on_b = await t.subscribe(spec(b, group))
        got = await receive(on_b, 1)
        assert [m.value for m in got] == [b"after-declare"]
        await on_b.close()
        await on_a.close()


# -- ephemeral groups ---------------------------------------------------------------------


def test_ephemeral_group_id_is_distinct() -> None:
    durable = spec("t", "tail")
    assert group_id_for(durable) == "tail"
    assert group_id_for(spec("t", "tail", ephemeral=True)) == "tail" + EPHEMERAL_SUFFIX


@needs_kafka
async def test_ephemeral_group_keeps_nothing_and_leaves_a_durable_namesake_alone() -> None:
    topic, group = name("eph"), name("g")
    tp = TopicPartition(topic, 0)
    async with connected(commit_interval_ms="100") as t:
        # A durable group of the same name, declared before "old" was sent: its members
        # would get "old". The ephemeral group must neither join it nor start where it stands.
        await t.declare(TopicSpec(topic, internal=True, partitions=1), group)
        await publish_values(t, topic, [b"old-1", b"old-2"])
        eph = spec(topic, group, ephemeral=True)
        gid = group_id_for(eph)
        sub = await t.subscribe(eph)
        await publish_values(t, topic, [b"new-1", b"new-2", b"new-3"])
        got = await receive(sub, 3)
        assert [m.value for m in got] == [b"new-1", b"new-2", b"new-3"]
        await sub.ack(got)
        assert await group_state(t, gid) == ("Stable", 1)
        assert (await group_state(t, group))[1] == 0  # the durable namesake: nobody joined it
        # Every way a durable member commits (baselines, the loop's commit, the final
        # commit of close) commits nothing for an ephemeral one.
        await sub._commit_baselines()  # type: ignore[attr-defined]
        await sub._commit({tp})  # type: ignore[attr-defined]
        assert await all_offsets(t, gid) == {}
        await sub.close()
        # The last member left: the group is deleted (and has no offsets that could keep
        # it); the durable namesake still stands where declare put it.
        assert (await group_state(t, gid))[0] == "Dead"
        assert gid not in {g[0] for g in await t.admin.list_consumer_groups()}
        assert await all_offsets(t, gid) == {}
        assert await committed(t, group, topic) == 0
        # A new member of the ephemeral group gets only what is sent after it joined.
        await publish_values(t, topic, [b"gone"])
        again = await t.subscribe(eph)
        await publish_values(t, topic, [b"later"])
        assert [m.value for m in await receive(again, 1)] == [b"later"]
        await nothing_within(again, 1.0)
        await again.close()


_CRASHING_MEMBER = """
import asyncio, sys
from channels.url import parse_url
from transports.base import SubscriptionSpec, TopicSpec
from transports.kafka import KafkaTransport

async def main(url, topic, group):
    t = KafkaTransport(parse_url(url + "?commit_interval_ms=100"))
    await t.connect()
    sub = await t.subscribe(SubscriptionSpec((TopicSpec(topic, internal=True, partitions=1),), group, ephemeral=True))
    print("subscribed", flush=True)
    got = []
    while len(got) < 3:
        got += await sub.receive(3 - len(got))
    await sub.ack(got)
    await sub._commit_baselines()
    await sub._commit(set(sub.consumer.assignment()))
    print("acked", len(got), flush=True)
    await asyncio.Event().wait()  # until killed: no close, no LeaveGroup

asyncio.run(main(*sys.argv[1:]))
"""


@needs_kafka
async def test_ephemeral_group_is_left_empty_without_offsets_after_a_crash() -> None:
    topic, group = name("eph-crash"), name("g")
    gid = group + EPHEMERAL_SUFFIX
    async with connected() as t:
        await t.declare(TopicSpec(topic, internal=True, partitions=1))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CRASHING_MEMBER,
            URL,
            topic,
            group,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line.strip() == b"subscribed", line
            await publish_values(t, topic, [b"1", b"2", b"3"])
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line.strip() == b"acked 3", line
            assert await group_state(t, gid) == ("Stable", 1)
            child.send_signal(signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 10)
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

        # The broker drops the dead member after session_timeout_ms (6 s): the group is
        # then empty, and without offsets the broker's own clean-up deletes it.
        async def emptied() -> bool:
            return (await group_state(t, gid))[0] in ("Empty", "Dead")

        await eventually(emptied, timeout=30, what="the crashed member's session expired")
        assert await all_offsets(t, gid) == {}


@needs_kafka
async def test_ephemeral_pattern_member_keeps_its_place_across_a_rebalance() -> None:
    prefix = f"kd-epat-{uuid.uuid4().hex[:8]}"
    existing, later = f"{prefix}-a", f"{prefix}-b"
    group = name("g")
    async with connected(metadata_max_age_ms="1000") as t:
        await t.declare(TopicSpec(existing, internal=True, partitions=1))
        await publish_values(t, existing, [b"before-subscribe"])
        sub = await t.subscribe(SubscriptionSpec((), group, pattern=f"{prefix}-.*", ephemeral=True))
        # The topic that matched already was positioned at its end before subscribe returned.
        await publish_values(t, existing, [b"after-subscribe"])
        got = await receive(sub, 1, timeout=30)
        assert [m.value for m in got] == [b"after-subscribe"]
        # Not acked: a new matching topic makes the group rebalance; with nothing
        # committed, the member goes on from the unacked message (kept in memory), not
        # from the end; the new topic starts at its beginning.
        await t.declare(TopicSpec(later, internal=True, partitions=1))
        await publish_values(t, later, [b"new-topic"])
        again = await receive(sub, 2, timeout=40)
        assert sorted((m.topic, m.value) for m in again) == [(existing, b"after-subscribe"), (later, b"new-topic")]
        await sub.ack(again)
        await nothing_within(sub, 1.0)
        assert await all_offsets(t, group + EPHEMERAL_SUFFIX) == {}
        await sub.close()
