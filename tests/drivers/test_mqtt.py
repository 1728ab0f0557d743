"""Tests of what is particular to the two MQTT drivers (``mqtt://`` aiomqtt, ``gmqtt://``).

Shared semantics are proven by the conformance suite; here: the shared MQTT rules (URL
options, redaction, topic names, property mapping, pattern filters, the in-order ack queue)
without a broker, and against the real Mosquitto of scripts/brokers, for both drivers:
properties fidelity, publish-after-declare (the anchor session), PUBACK held back until
every earlier message was acked, redelivery to a restarted member, competing members and
groups, patterns, MQTT 3.1.1 with the envelope, QoS 0 and 2, ephemeral groups leaving no
session behind (closed, or killed), and a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import channels
from channels import App
from channels.errors import (
    CapabilityNotSupported,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    Timeout,
    Unroutable,
)
from channels.events import Message
from channels.url import parse_url
from tests.support import LogWaiter
from transports._mqtt_common import (
    EPHEMERAL_SUFFIX,
    AckQueue,
    LinkConfig,
    MqttSubscription,
    decode_properties,
    encode_properties,
    pattern_filter,
    validate_topic_name,
)
from transports.gmqtt import GmqttTransport
from transports.mqtt import MqttTransport

URL = os.environ.get("CHANNELS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTPORT = URL.split("://", 1)[1].split("?", 1)[0].rstrip("/")
#: sessions of these tests expire after 10 minutes, so leftovers do not pile up in the broker
URLS = {
    "mqtt": f"mqtt://{HOSTPORT}?session_expiry=600",
    "gmqtt": f"gmqtt://{HOSTPORT}?session_expiry=600",
}


def _broker_up() -> bool:
    host, port = parse_url(URL).host_list(1883)[0]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


needs_broker = pytest.mark.skipif(
    not _broker_up(), reason="Mosquitto is not running (scripts/brokers up mqtt)"
)


def name(prefix: str = "t") -> str:
    return f"md-{prefix}-{uuid.uuid4().hex[:12]}"


# -- without a broker ---------------------------------------------------------------------


def test_unknown_option_and_bad_values_are_configuration_errors() -> None:
    for url in (
        "mqtt://h?nope=1",
        "mqtt://h?qos=3",
        "mqtt://h?version=4.1",
        "gmqtt://h?keepalive=0",
        "mqtt://h?ssl_cafile=/x",
        "gmqtt://h?max_message_size=0",
        "mqtts://h?ssl_cafile=/nonexistent/ca.pem",
        "gmqtts://h?ssl_certfile=/nonexistent/cert.pem",
        "mqtt://h?stall_timeout=0",
    ):
        with pytest.raises(ConfigurationError):
            (MqttTransport if url.startswith("mqtt") else GmqttTransport)(parse_url(url))


def test_docs_examples_construct() -> None:
    """The URLs of docs/drivers/mqtt.md are valid (constructing connects nothing)."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "drivers" / "mqtt.md"
    block = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)[0]
    namespace: dict[str, Any] = {}
    exec("import channels\n" + block, namespace)
    assert isinstance(namespace["app"], App)


def test_tls_schemes_build_a_context_and_default_port() -> None:
    for cls, scheme in ((MqttTransport, "mqtts"), (GmqttTransport, "gmqtts")):
        opts = cls(parse_url(f"{scheme}://broker.example")).opts
        assert opts.tls is not None and opts.port == 8883
    assert MqttTransport(parse_url("mqtt://broker.example")).opts.tls is None


def test_password_never_in_repr_or_errors() -> None:
    url = parse_url("mqtt://user:s3cr3t@127.0.0.1:1?bogus=1")
    with pytest.raises(ConfigurationError) as info:
        MqttTransport(url)
    assert "s3cr3t" not in str(info.value)
    transport = MqttTransport(parse_url("mqtt://user:s3cr3t@127.0.0.1:1"))
    assert "s3cr3t" not in repr(transport)
    assert "s3cr3t" not in repr(transport.opts)


def test_both_drivers_declare_the_same_capabilities() -> None:
    for query in ("", "?version=3", "?qos=0", "?clean_start=true", "?mandatory=false", "?qos=2"):
        a = MqttTransport(parse_url("mqtt://h" + query)).capabilities
        b = GmqttTransport(parse_url("gmqtt://h" + query)).capabilities
        assert a.persistent == b.persistent
        # persistent: durable sessions, and a send no group got after a broker restart is
        # reported (an MQTT 5 PUBACK reason at QoS 1, turned into Unroutable by mandatory)
        assert a.persistent == (query == ""), query
        if query != "?qos=2":
            assert a == b
    # QoS 2: paho sends PUBREC on receipt, so only gmqtt can promise redelivery.
    assert not MqttTransport(parse_url("mqtt://h?qos=2")).capabilities.ack
    assert GmqttTransport(parse_url("gmqtt://h?qos=2")).capabilities.ack
    v5 = MqttTransport(parse_url("mqtt://h")).capabilities
    assert v5.native_headers and v5.native_keys and v5.ack and not v5.uses_envelope
    assert not v5.redelivery_on_nack and not v5.per_key_ordering
    v3 = MqttTransport(parse_url("mqtt://h?version=3")).capabilities
    assert v3.uses_envelope and v3.ack
    assert not MqttTransport(parse_url("mqtt://h?qos=0")).capabilities.ack
    assert not MqttTransport(parse_url("mqtt://h?clean_start=1")).capabilities.persistent


@pytest.mark.parametrize(
    "bad", ["a/+/b", "a/#", "#", "$SYS/x", "a\u0085b", "x\ufffe", "a" * 70_000]
)
def test_topic_names_brokers_refuse(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_topic_name(bad)


def test_topic_names_mqtt_accepts() -> None:
    for good in ("a", "a/b/c", "/lead", "trail/", "a//b", "ünï/cödé"):
        validate_topic_name(good)


@pytest.mark.parametrize(
    ("regex", "mqtt_filter"),
    [
        ("sensors/.*", "sensors/#"),
        ("^sensors/room-[0-9]+/temp", "sensors/#"),
        ("a/b/c-.*", "a/b/#"),
        ("orders-.*", "#"),
        ("a/b|c/d", "#"),
        ("ab?/c", "#"),
        ("x/y*/z", "x/#"),
        (".*", "#"),
    ],
)
def test_pattern_filter(regex: str, mqtt_filter: str) -> None:
    assert pattern_filter(regex) == mqtt_filter


def test_ack_queue_releases_in_arrival_order() -> None:
    released: list[int] = []
    queue = AckQueue(released.append)
    entries = [queue.add(i) for i in range(5)]
    queue.ack(entries[2])
    queue.ack(entries[1])
    assert released == []
    queue.ack(entries[0])
    assert released == [0, 1, 2]
    queue.ack(entries[0])  # double ack: harmless
    queue.ack(entries[4])
    assert released == [0, 1, 2]
    queue.ack(entries[3])
    assert released == [0, 1, 2, 3, 4]
    assert queue.pending == 0


def _round_trip(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> None:
    meta = encode_properties(Message("t", value, key, headers), v5=True)
    for prop_name, text in meta.user_properties:
        assert len(prop_name.encode()) <= 65_535 and len(text.encode()) <= 65_535
    got = decode_properties(meta.payload, meta.user_properties, meta.content_type)
    assert got == (key, value, headers)


def test_property_mapping_edge_cases() -> None:
    _round_trip(None, None, {})
    _round_trip(None, b"", {})
    _round_trip(b"", b"v", {"e": b""})
    _round_trip(b"\xff\x00", b"\x00", {"bin": b"\xff\xfe\x00", "txt": "é".encode()})
    _round_trip(b"k", b"v", {"content-type": b"application/json", "channels.key": b"x"})
    _round_trip(b"k", b"v", {"line\nbreak": b"a\nb", "\x00": b"\x01"})
    _round_trip(b"k" * 70_000, b"v", {"big": b"\x80" * 100_000, "bigtext": b"a" * 70_000})
    _round_trip(b"k", b"v", {"content-type": b"\xff"})


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.none(), st.binary(max_size=50)),
    st.one_of(st.none(), st.binary(max_size=50)),
    st.dictionaries(st.text(min_size=1, max_size=10), st.binary(max_size=30), max_size=5),
)
def test_property_mapping_round_trips_anything(
    key: bytes | None, value: bytes | None, headers: dict[str, bytes]
) -> None:
    _round_trip(key, value, headers)


def test_foreign_properties_become_headers() -> None:
    key, value, headers = decode_properties(
        b"raw", [("trace", "abc"), ("channels.b64.bad", "%%%")], "text/plain"
    )
    assert key is None and value == b"raw"
    assert headers == {"trace": b"abc", "bad": b"%%%", "content-type": b"text/plain"}


# -- against Mosquitto ------------------------------------------------------------------------

DRIVERS = pytest.mark.parametrize("scheme", ["mqtt", "gmqtt"])


@pytest.fixture
async def apps() -> AsyncIterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        await asyncio.wait_for(app.stop(), 30)


def new_app(apps: list[App], scheme: str, query: str = "", app_id: str | None = None) -> App:
    app = App(app_id or name("app"), broker=URLS[scheme] + query.replace("?", "&"))
    apps.append(app)
    return app


async def collect(stream: Any, count: int, timeout: float = 10.0) -> list[Any]:
    out = []
    for _ in range(count):
        out.append(await stream.get(timeout=timeout))
    return out


@needs_broker
@DRIVERS
async def test_key_headers_none_and_bytes_round_trip(scheme: str, apps: list[App]) -> None:
    app = new_app(apps, scheme)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", key_serializer="raw")
    await topic.declare()
    headers = {"bin": b"\xff\x00\x80", "text": b"hello", "content-type": b"text/plain"}
    await topic.send(key=b"\xfe\xff", value=b"\x00\x01", headers=headers)
    await topic.send(key=b"k", value=None)
    await topic.send(value=b"")
    async with topic.events() as stream:
        first, second, third = await collect(stream, 3)
    assert (first.key, first.value, first.headers) == (b"\xfe\xff", b"\x00\x01", headers)
    assert (second.key, second.value) == (b"k", None)
    assert (third.key, third.value, third.headers) == (None, b"", {})


@needs_broker
@DRIVERS
async def test_publish_after_declare_reaches_group_later(scheme: str, apps: list[App]) -> None:
    topic_name, app_id = name(), name("grp")
    producer = new_app(apps, scheme)
    consumer = new_app(apps, scheme, app_id=app_id)
    await producer.start()
    await consumer.start()
    await consumer.topic(topic_name, internal=True).declare()  # the anchor session
    out = producer.topic(topic_name, value_serializer="raw")
    for i in range(50):
        await out.send(value=b"%d" % i)
    # The backlog arrives right after CONNACK, before the first get(): nothing is lost.
    src = consumer.topic(topic_name, internal=True, value_serializer="raw")
    async with src.events() as stream:
        events = await collect(stream, 50)
    assert sorted(int(e.value) for e in events) == list(range(50))


@needs_broker
@DRIVERS
async def test_send_nobody_subscribed_to_is_unroutable_unless_not_mandatory(
    scheme: str, apps: list[App]
) -> None:
    """The broker's PUBACK "no matching subscribers" fails the send (the batch's count in
    the error); ``?mandatory=false`` accepts it; MQTT 3.1.1 has no reason codes to tell."""
    strict = new_app(apps, scheme)
    lenient = new_app(apps, scheme, "?mandatory=false")
    v3 = new_app(apps, scheme, "?version=3")
    for app in (strict, lenient, v3):
        await app.start()
    topic_name = name("nobody")
    with pytest.raises(Unroutable) as info:
        await strict.topic(topic_name, value_serializer="raw").send(value=b"x")
    assert info.value.count == 1 and "no matching subscribers" in str(info.value)
    assert not info.value.retryable
    assert await lenient.topic(topic_name, value_serializer="raw").send(value=b"x")
    assert await v3.topic(topic_name, value_serializer="raw").send(value=b"x")
    assert strict.capabilities.persistent
    assert not lenient.capabilities.persistent and not v3.capabilities.persistent
    # once a group is declared the same send goes through and is kept for it
    await strict.topic(topic_name, internal=True).declare()
    assert await strict.topic(topic_name, value_serializer="raw").send(value=b"y")
    # in one batch only the message nobody gets fails
    futures = [
        strict.topic(t, value_serializer="raw").send_soon(value=b"z")
        for t in (topic_name, name("nobody"), topic_name)
    ]
    outcomes = await asyncio.gather(*(f.future for f in futures), return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["RecordMetadata", "Unroutable", "RecordMetadata"]


@needs_broker
@DRIVERS
async def test_puback_waits_for_every_earlier_message(scheme: str, apps: list[App]) -> None:
    """Acking #2 and #3 but not #1 releases no PUBACK: all three come back on reconnect."""
    app = new_app(apps, scheme)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", acks="manual")
    await topic.declare()
    for i in range(3):
        await topic.send(value=b"%d" % i)
    stream = topic.events()
    await stream.start()
    _one, two, three = await collect(stream, 3)
    await two.ack()
    await three.ack()
    await stream.close()
    async with topic.events() as again:
        redelivered = await collect(again, 3)
        assert [e.value for e in redelivered] == [b"0", b"1", b"2"]
        assert all(e.message.redelivered for e in redelivered)
        for event in redelivered:
            await event.ack()
    async with topic.events() as empty:
        with pytest.raises(Timeout):
            await empty.get(timeout=1.0)


@needs_broker
@DRIVERS
async def test_nack_is_not_supported_and_unacked_comes_back(scheme: str, apps: list[App]) -> None:
    app = new_app(apps, scheme)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", acks="manual")
    await topic.declare()
    await topic.send(value=b"x")
    async with topic.events() as stream:
        event = await stream.get(timeout=10)
        with pytest.raises(CapabilityNotSupported):
            await event.nack(requeue=True)
    async with topic.events() as stream:
        event = await stream.get(timeout=10)
        assert event.value == b"x" and event.message.redelivered
        await event.nack(requeue=False)  # drop == ack
    async with topic.events() as stream:
        with pytest.raises(Timeout):
            await stream.get(timeout=1.0)


@needs_broker
@DRIVERS
async def test_members_compete_and_groups_fan_out(scheme: str, apps: list[App]) -> None:
    topic_name = name()
    a = new_app(apps, scheme, app_id=name("ga"))
    b = new_app(apps, scheme, app_id=name("gb"))
    await a.start()
    await b.start()
    ta = a.topic(topic_name, internal=True, value_serializer="raw")
    tb = b.topic(topic_name, internal=True, value_serializer="raw")
    s1, s2, s3 = ta.events(), ta.events(), tb.events()
    for stream in (s1, s2, s3):
        await stream.start()
    for i in range(40):
        await ta.send(value=b"%d" % i)
    seen: dict[int, list[int]] = {1: [], 2: []}

    async def drain(idx: int, stream: Any) -> None:
        while True:
            event = await stream.get(timeout=2.0)
            seen[idx].append(int(event.value))

    for idx, stream in ((1, s1), (2, s2)):
        with pytest.raises(Timeout):
            await drain(idx, stream)
    assert sorted(seen[1] + seen[2]) == list(range(40))
    assert seen[1] and seen[2]
    other = await collect(s3, 40)
    assert sorted(int(e.value) for e in other) == list(range(40))
    for stream in (s1, s2, s3):
        await stream.close()


@needs_broker
@DRIVERS
async def test_pattern_subscription(scheme: str, apps: list[App]) -> None:
    root = name("p")
    app = new_app(apps, scheme)
    await app.start()
    pattern = app.topic(pattern=rf"{root}/in-[0-9]+", value_serializer="raw")
    async with pattern.events() as stream:
        matched = [f"{root}/in-1", f"{root}/in-3"]
        for topic_name in (f"{root}/in-1", f"{root}/out-2", f"{root}/in-3", f"{root}x/in-4"):
            send = app.topic(topic_name, value_serializer="raw").send(value=topic_name.encode())
            if topic_name.startswith(f"{root}/"):  # the broker filter is {root}/#
                await send
            else:  # matched by no subscription: the broker says so (mandatory, the default)
                with pytest.raises(Unroutable):
                    await send
        events = await collect(stream, 2)
        assert sorted(e.message.topic for e in events) == matched
        with pytest.raises(Timeout):
            await stream.get(timeout=1.0)
    with pytest.raises(ConfigurationError):
        app.topic(f"{root}/+")


@needs_broker
@DRIVERS
@pytest.mark.parametrize("query", ["?version=3", "?qos=0", "?qos=2"])
async def test_other_versions_and_qos(scheme: str, query: str, apps: list[App]) -> None:
    app = new_app(apps, scheme, query)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", key_serializer="raw")
    await topic.declare()
    async with topic.events() as stream:
        await topic.send(key=b"\xff", value=None, headers={"h": b"\x00"})
        await topic.send(key=b"k", value=b"v")
        first, second = await collect(stream, 2)
    assert (first.key, first.value, first.headers) == (b"\xff", None, {"h": b"\x00"})
    assert (second.key, second.value) == (b"k", b"v")


@needs_broker
@pytest.mark.skipif(
    os.environ.get("CHANNELS_SKIP_RESTART") == "1", reason="broker restarts disabled"
)
async def test_broker_restart_reconnects_and_resubscribes(apps: list[App]) -> None:
    """Both drivers at once (one restart): members and publishers come back; what is sent
    after the members are back arrives, and so does what was sent before the restart where
    the driver claims ``persistent`` (both do with the default options)."""
    topics = {}
    streams = {}
    #: a declared group without members (its app stays up): Mosquitto forgets shared
    #: subscriptions in a restart, so the driver subscribes the group's anchor again
    idle = {}
    for scheme in ("mqtt", "gmqtt"):
        app = new_app(apps, scheme)
        await app.start()
        topic = app.topic(name(scheme), internal=True, value_serializer="raw")
        await topic.declare()
        topics[scheme] = topic
        streams[scheme] = topic.events()
        await streams[scheme].start()
        for i in range(10):
            await topic.send(value=b"a%d" % i)
        idle_app = new_app(apps, scheme)
        await idle_app.start()
        idle[scheme] = idle_app.topic(name(scheme + "-idle"), internal=True, value_serializer="raw")
        await idle[scheme].declare()
        for i in range(10):
            await idle[scheme].send(value=b"a%d" % i)
    with (
        LogWaiter("transports.mqtt", "reconnected and resubscribed") as members_back,
        LogWaiter("transports.mqtt", "subscribed again") as anchors_back,
    ):
        proc = await asyncio.create_subprocess_exec(
            "scripts/brokers", "restart", "mqtt",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        assert await asyncio.wait_for(proc.wait(), 120) == 0
        await asyncio.wait_for(members_back.wait(len(streams)), 60)
        await asyncio.wait_for(anchors_back.wait(len(idle)), 60)
    before = {b"a%d" % i for i in range(10)}
    after = {b"b%d" % i for i in range(10)}
    for scheme, topic in topics.items():
        for value in sorted(after):
            await topic.send(value=value)
        values: set[bytes] = set()
        with contextlib.suppress(channels.Timeout):
            while values < before | after:
                event = await streams[scheme].get(timeout=20 if not after <= values else 5)
                values.add(event.value)
        print(f"{scheme}: sent before the restart and received: {len(values & before)} of 10")
        assert after <= values, f"{scheme}: sent after the restart and missing: {sorted(after - values)}"
        if topic.app.capabilities.persistent:
            assert before <= values, f"{scheme}: sent before the restart and lost: {sorted(before - values)}"
        await streams[scheme].close()
    for scheme, topic in idle.items():
        for value in sorted(after):
            await topic.send(value=value)  # not Unroutable: the anchor holds the group again
        values = set()
        async with topic.events() as stream:
            with contextlib.suppress(channels.Timeout):
                while values < before | after:
                    values.add((await stream.get(timeout=10)).value)
        assert before | after <= values, f"{scheme} idle group lost {sorted(before | after - values)}"


@needs_broker
@DRIVERS
async def test_version_3_without_envelope_sends_plain_payloads(scheme: str, apps: list[App]) -> None:
    app = new_app(apps, scheme, "?version=3&envelope=off")
    assert not app.capabilities.uses_envelope
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", key_serializer="raw")
    async with topic.events() as stream:
        await topic.send(value=b"\x00CHE plain")
        with pytest.raises(EncodeError):
            await topic.send(key=b"k", value=b"x")
        with pytest.raises(EncodeError):
            await topic.send(value=None)
        event = await stream.get(timeout=10)
    assert (event.key, event.value, event.headers) == (None, b"\x00CHE plain", {})


@needs_broker
@DRIVERS
async def test_credentials_used_and_never_shown(scheme: str, apps: list[App]) -> None:
    # Mosquitto of scripts/brokers allows anonymous clients and accepts any credentials.
    app = App(name("app"), broker=URLS[scheme].replace("://", "://alice:s3cr3t@"))
    apps.append(app)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw")
    async with topic.events() as stream:
        await topic.send(value=b"x")
        assert (await stream.get(timeout=10)).value == b"x"
    assert "s3cr3t" not in repr(app) and "s3cr3t" not in repr(app.transport_object)
    closed = App(name("app"), broker=f"{scheme}://alice:s3cr3t@127.0.0.1:1", connect_timeout=5)
    with pytest.raises(ConnectionFailed) as info:
        await closed.start()
    assert "s3cr3t" not in str(info.value) and "***" in str(info.value)


@needs_broker
@DRIVERS
async def test_session_taken_over_stops_the_member(scheme: str, apps: list[App]) -> None:
    """Another client with the member's client id: the member fails, it does not fight."""
    app = new_app(apps, scheme)
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw")
    stream = topic.events()
    await stream.start()
    assert isinstance(stream._sub, MqttSubscription)
    client_id = stream._sub.legs[0].client_id
    host, port = parse_url(URL).host_list(1883)[0]
    # Mosquitto 2.0.11 closes the old connection without a DISCONNECT reason: a single
    # takeover is a reconnect; one after another (a fight) stops the member.
    for _ in range(20):
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_sub", "-h", host, "-p", str(port), "-V", "mqttv5", "-i", client_id,
            "-t", "takeover/x", "-E",
        )
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        if stream._sub._error is not None:
            break
        await asyncio.wait_for(stream._sub.legs[0].connected.wait(), 10)
    with pytest.raises(ConnectionFailed, match="taken over"):
        await stream.get(timeout=10)
    await stream.close()


@needs_broker
@DRIVERS
async def test_unacked_message_does_not_stall_the_session(scheme: str, apps: list[App]) -> None:
    """One message never acked holds back the PUBACKs behind it; when the broker's window
    (Receive Maximum = prefetch 5) stays full for stall_timeout, the session reconnects,
    the broker resends, and every message still arrives."""
    app = new_app(apps, scheme, "?stall_timeout=1")
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", acks="manual")
    await topic.declare()
    for i in range(12):
        await topic.send(value=b"%02d" % i)
    seen: list[bytes] = []
    async with topic.events(prefetch=5) as stream:
        while not ({b"%02d" % i for i in range(12)} <= set(seen) and seen.count(b"00") >= 2):
            event = await stream.get(timeout=15)
            seen.append(event.value)
            if event.value != b"00" or seen.count(b"00") > 1:
                await event.ack()
    assert seen.count(b"00") == 2  # the unacked one came back once


# -- ephemeral groups ----------------------------------------------------------------------


async def _session_present(scheme: str, client_id: str) -> bool:
    """Connect as ``client_id`` with clean start off: did the broker still hold a session?

    The probe's own session expires with it (expiry 0), so it also removes what it found."""
    cls = MqttTransport if scheme == "mqtt" else GmqttTransport
    transport = cls(parse_url(URLS[scheme]))
    link = transport._new_link(
        LinkConfig(
            client_id=client_id, clean_start=False, session_expiry=0, receive_maximum=None, silent=True
        )
    )
    try:
        return await asyncio.wait_for(link.open(), 10)
    finally:
        await asyncio.wait_for(link.close(keep_session=False), 10)


@needs_broker
@DRIVERS
async def test_ephemeral_member_leaves_no_session(scheme: str, apps: list[App]) -> None:
    """An ephemeral member has its own client id and share name, and once it left the broker
    holds no session for it; a durable member's session (the control) is still there."""
    app = new_app(apps, scheme)
    await app.start()
    group = name("eg")
    topic = app.topic(name(), internal=True, group=group, ephemeral=True, value_serializer="raw")
    durable = app.topic(name(), internal=True, group=group, value_serializer="raw")
    await topic.declare()
    first, second, kept = topic.events(), topic.events(), durable.events()
    for stream in (first, second, kept):
        await stream.start()
    assert isinstance(first._sub, MqttSubscription) and isinstance(second._sub, MqttSubscription)
    assert isinstance(kept._sub, MqttSubscription)
    leg, other = first._sub.legs[0], second._sub.legs[0]
    assert leg.filters == [f"$share/{group}{EPHEMERAL_SUFFIX}/{topic.name}"]
    assert leg.slot is None and leg.client_id != other.client_id
    await topic.send(value=b"x")
    gets = {asyncio.ensure_future(stream.get(timeout=10)) for stream in (first, second)}
    done, pending = await asyncio.wait(gets, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert [task.result().value for task in done] == [b"x"]
    ids = [leg.client_id, other.client_id]
    durable_id = kept._sub.legs[0].client_id
    for stream in (first, second, kept):
        await stream.close()
    assert [await _session_present(scheme, client_id) for client_id in ids] == [False, False]
    assert await _session_present(scheme, durable_id)  # the probe does see a kept session


_CRASHING_MEMBER = """
import asyncio, sys
from channels import App

async def main() -> None:
    url, app_id, eph_topic, durable_topic = sys.argv[1:5]
    app = App(app_id, broker=url)
    await app.start()
    eph = app.topic(eph_topic, internal=True, ephemeral=True, acks="manual", value_serializer="raw")
    durable = app.topic(durable_topic, internal=True, value_serializer="raw")
    streams = [eph.events(), durable.events()]
    for stream in streams:
        await stream.start()
    print(*(stream._sub.legs[0].client_id for stream in streams), flush=True)
    event = await streams[0].get(timeout=30)  # held, never acked
    print("got", event.value.decode(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@needs_broker
@DRIVERS
async def test_ephemeral_member_of_a_killed_process_leaves_nothing(scheme: str, apps: list[App]) -> None:
    """A process holding an unacked message in an ephemeral group is killed (SIGKILL, no
    DISCONNECT): the broker keeps no session for it, while the same process's durable member
    (the control) left its session behind."""
    root = ROOT
    eph_topic, durable_topic = name("ek"), name("dk")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_MEMBER, URLS[scheme], name("app"), eph_topic, durable_topic,
        stdout=asyncio.subprocess.PIPE, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        eph_id, durable_id = line.decode().split()
        producer = new_app(apps, scheme)
        await producer.start()
        await producer.topic(eph_topic, value_serializer="raw").send(value=b"held")
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"got held\n"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
    # The process is reaped only after the kernel closed its sockets, so the broker has the
    # end of that connection before the probe's CONNECT (no waiting on a timer needed).
    with pytest.raises(Unroutable):  # nobody subscribes to the topic any more
        await producer.topic(eph_topic, value_serializer="raw").send(value=b"gone")
    assert not await _session_present(scheme, eph_id)
    assert await _session_present(scheme, durable_id)


# -- TLS and passwords (the extra listeners of scripts/brokers; `scripts/brokers env --secrets`)

TLS_URL = os.environ.get("CHANNELS_TEST_MQTTS_URL", "")
AUTH_URL = os.environ.get("CHANNELS_TEST_MQTT_AUTH_URL", "")


def _variant(url: str, scheme: str) -> str:
    """The same URL for the other driver (mqtt -> gmqtt, mqtts -> gmqtts)."""
    return url if scheme == "mqtt" else "g" + url


async def _secured_round_trip(app: App) -> None:
    await app.start()
    topic = app.topic(name(), internal=True, value_serializer="raw", key_serializer="raw")
    async with topic.events() as stream:
        await topic.send(key=b"k", value=b"secured", headers={"h": b"\xff"})
        event = await stream.get(timeout=10)
    assert (event.key, event.value, event.headers) == (b"k", b"secured", {"h": b"\xff"})


@pytest.mark.skipif(not TLS_URL, reason="CHANNELS_TEST_MQTTS_URL is not set")
@DRIVERS
async def test_tls_listener(scheme: str, apps: list[App]) -> None:
    app = App(name("app"), broker=_variant(TLS_URL, scheme))
    apps.append(app)
    await _secured_round_trip(app)


@pytest.mark.skipif(
    not AUTH_URL or "***" in AUTH_URL, reason="CHANNELS_TEST_MQTT_AUTH_URL (with secret) not set"
)
@DRIVERS
async def test_password_listener(scheme: str, apps: list[App]) -> None:
    url = parse_url(_variant(AUTH_URL, scheme))
    app = App(name("app"), broker=url)
    apps.append(app)
    await _secured_round_trip(app)
    secret = url.password or ""
    wrong = url.unredacted().replace(f":{secret}@", ":not-the-password@")
    refused = App(name("app"), broker=wrong, connect_timeout=10)
    with pytest.raises(ConnectionFailed) as info:
        await refused.start()
    assert "not-the-password" not in str(info.value) and secret not in str(info.value)
