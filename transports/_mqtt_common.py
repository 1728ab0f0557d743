"""Everything the two MQTT drivers (``mqtt://`` on aiomqtt, ``gmqtt://`` on gmqtt) share.

A driver only supplies a :class:`Link`: one MQTT connection (one session) of its client
library that can connect, subscribe, publish, release acknowledgements and disconnect.
Every rule about MQTT itself lives here, once:

* URL options (:class:`MqttOptions`) and the capabilities they imply;
* topic-name rules and the shared-subscription filter ``$share/<group>/<topic>``;
* how key, headers, a None value and the content type travel as MQTT 5 properties;
* the in-order acknowledgement queue (MQTT 5, 4.6.0-2: PUBACKs go out in the order the
  PUBLISH packets arrived, whatever order the handlers finish in);
* session identities (client ids), the group "anchor" session made by ``declare``, members,
  reconnection with resubscription, and pattern subscriptions.

Sessions. Every member of a group is an MQTT session with a deterministic client id
``<client_id>-<digest>-<slot>``, where ``digest`` is derived from the group and the topic (or
pattern) and ``slot`` is the lowest slot free in this process. Slot 0 is the group's
*anchor*: ``declare(topic, group)`` connects it once and subscribes ``$share/<group>/<topic>``
with a long session expiry, so the broker keeps QoS 1/2 messages for the group while nobody
consumes. The first member later resumes that very session and receives what was kept.
Sessions start with clean start off and keep their state for ``session_expiry`` seconds,
so unacked messages come back when the same slot reconnects (after a crash, a broker
restart or a new stream). A member that leaves while others of its group stay unsubscribes
first (Mosquitto keeps sending a shared subscription's share to an offline session), and
the last member to leave makes sure the anchor holds the subscription again.

Ephemeral groups (``SubscriptionSpec.ephemeral``). A member of an ephemeral group is a
session that lives exactly as long as its connection: a unique client id
``<client_id>-<digest>-e<random>`` (no slot, so nobody resumes it and no other process
with the same prefix takes it over), clean start, session expiry 0 (MQTT 3.1.1: clean
session), no anchor (``declare`` gets no group for it). The broker drops the session, its
subscription and whatever it held the moment the connection ends, a closed one or a
crashed process's (at the latest after 1.5 x keepalive when the host vanished), so a group
with no member connected keeps nothing. Its share name is ``<group>~ephemeral``
(:data:`EPHEMERAL_SUFFIX`), never the durable group's ``<group>``: joining a durable
group's shared subscription would split its messages with that group's offline sessions.
Leaving unsubscribes first (no new messages come during the DISCONNECT), then disconnects
with expiry 0. Unacked messages of an ephemeral member are not redelivered to anyone.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import re
import ssl
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from channels.capabilities import Capabilities
from channels.errors import (
    AuthenticationFailed,
    CapabilityNotSupported,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    Unroutable,
)
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport

__all__ = [
    "EPHEMERAL_SUFFIX",
    "AckQueue",
    "Incoming",
    "Link",
    "MqttOptions",
    "MqttTransportBase",
    "decode_properties",
    "encode_properties",
    "pattern_filter",
    "share_filter",
    "validate_topic_name",
]

log = logging.getLogger("transports.mqtt")

OPTIONS = (
    "version",
    "qos",
    "client_id",
    "keepalive",
    "session_expiry",
    "clean_start",
    "connect_timeout",
    "stall_timeout",
    "receive_maximum",
    "max_inflight",
    "max_message_size",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "envelope",
    "mandatory",
)

#: Largest MQTT packet (the remaining-length field tops out at 256 MiB - 1) minus room for
#: the topic, packet header and properties: the most ``max_message_size`` may be set to.
MQTT_MAX_PACKET = 268_435_455
LARGEST_MESSAGE = MQTT_MAX_PACKET - 1024 * 1024
#: The default limit, the same for both drivers (gmqtt's reader copies its whole buffer on
#: every 64 KiB read, so very large messages get slow there).
DEFAULT_MAX_MESSAGE = 8 * 1024 * 1024
MAX_STRING = 65_535  # bytes of an MQTT UTF-8 string (topic names, property names/values)
SESSION_TAKEN_OVER = 0x8E
#: PUBACK reason "no matching subscribers": the broker accepted a message nobody gets
NO_MATCHING_SUBSCRIBERS = 0x10
#: appended to the share name of an ephemeral group (``$share/<group>~ephemeral/<topic>``):
#: its own shared subscription, apart from the durable group of the same name
EPHEMERAL_SUFFIX = "~ephemeral"
#: a session losing its connection this often within FLAP_SECONDS is being fought over
FLAP_LOSSES = 5
FLAP_SECONDS = 10.0

# -- reserved user-property names --------------------------------------------------------------

PREFIX = "channels."
KEY = "channels.key"  # the key as text
KEY_B64 = "channels.key.b64"  # the key in base64 (may repeat: pieces are concatenated)
NONE = "channels.none"  # "1": the value is None, not b""
HEADER_B64 = "channels.b64."  # + header name: the value in base64 (may repeat)
HEADER_NAMED = "channels.hdr."  # + base64url(header name): the value in base64 (may repeat)
CONTENT_TYPE_HEADER = "content-type"

# Characters Mosquitto refuses in UTF-8 strings (MQTT 5 1.5.4: NUL must not appear, control
# characters and non-characters should not; Mosquitto rejects the whole packet).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff\ud800-\udfff]")


#: CONNACK codes of a refused login: 3.1.1 "bad user name or password" and "not authorised",
#: 5 "bad user name or password", "not authorized" and "bad authentication method"
LOGIN_REFUSED = frozenset({4, 5, 0x86, 0x87, 0x8C})


def is_safe_text(text: str) -> bool:
    """True if ``text`` can travel as an MQTT UTF-8 string that Mosquitto accepts."""
    if _UNSAFE.search(text):
        return False
    return all(ord(c) < 0x10000 or (ord(c) & 0xFFFE) != 0xFFFE for c in text)


def _text_or_none(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not is_safe_text(text) or len(data) > MAX_STRING:
        return None
    return text


def _b64_pieces(data: bytes) -> list[str]:
    """Base64 of ``data`` cut into property-sized pieces (each a multiple of 4 characters)."""
    text = base64.b64encode(data).decode("ascii")
    size = 65_532
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttOptions:
    """The URL options both MQTT drivers understand (see the driver docstrings)."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None = field(repr=False)
    version: int  # 5 or 4 (3.1.1)
    qos: int
    client_id: str
    keepalive: int
    session_expiry: int
    clean_start: bool
    connect_timeout: float
    stall_timeout: float
    receive_maximum: int | None
    max_inflight: int
    max_message_size: int
    envelope: bool
    #: a PUBACK "no matching subscribers" fails the send with Unroutable
    mandatory: bool = True

    @property
    def v5(self) -> bool:
        return self.version == 5

    @property
    def persistent_sessions(self) -> bool:
        """Sessions that outlive their connection (the basis of at-least-once)."""
        return self.qos > 0 and not self.clean_start


def parse_options(url: BrokerURL, tls_schemes: Iterable[str]) -> MqttOptions:
    url.check_options(OPTIONS)
    if len(url.hosts) > 1:
        raise ConfigurationError("an MQTT URL names one broker", broker=url)
    tls = url.scheme in set(tls_schemes)
    version_text = url.option("version", "5")
    versions = {"5": 5, "5.0": 5, "3": 4, "3.1.1": 4, "311": 4, "4": 4}
    if version_text not in versions:
        raise ConfigurationError(
            f"version must be 5 or 3 (3.1.1), not {version_text!r}", broker=url
        )
    qos = url.option("qos", 1)
    if qos not in (0, 1, 2):
        raise ConfigurationError(f"qos must be 0, 1 or 2, not {qos}", broker=url)
    client_id = url.option("client_id", "anychannel")
    if not client_id or not is_safe_text(client_id) or len(client_id.encode()) > 200:
        raise ConfigurationError(f"invalid client_id prefix {client_id!r}", broker=url)
    keepalive = url.option("keepalive", 60)
    session_expiry = url.option("session_expiry", 86_400)
    receive_maximum = url.option("receive_maximum", 0)
    max_inflight = url.option("max_inflight", 100)
    max_message_size = url.option("max_message_size", DEFAULT_MAX_MESSAGE)
    connect_timeout = url.option("connect_timeout", 10.0)
    stall_timeout = url.option("stall_timeout", 30.0)
    if not 0 < keepalive <= 65_535:
        raise ConfigurationError("keepalive must be 1..65535 seconds", broker=url)
    if not 0 <= session_expiry <= 0xFFFFFFFF:
        raise ConfigurationError("session_expiry must be 0..4294967295 seconds", broker=url)
    if not 0 <= receive_maximum <= 65_535:
        raise ConfigurationError("receive_maximum must be 1..65535 (0: the prefetch)", broker=url)
    if not 1 <= max_inflight <= 65_000:
        raise ConfigurationError("max_inflight must be 1..65000", broker=url)
    if not 1 <= max_message_size <= LARGEST_MESSAGE:
        raise ConfigurationError(
            f"max_message_size must be 1..{LARGEST_MESSAGE} bytes", broker=url
        )
    if connect_timeout <= 0:
        raise ConfigurationError("connect_timeout must be > 0", broker=url)
    if stall_timeout <= 0:
        raise ConfigurationError("stall_timeout must be > 0", broker=url)
    cafile = url.option("ssl_cafile", "")
    certfile = url.option("ssl_certfile", "")
    keyfile = url.option("ssl_keyfile", "")
    context: ssl.SSLContext | None = None
    if tls:
        try:
            context = ssl.create_default_context(cafile=cafile or None)
            if certfile:
                context.load_cert_chain(certfile, keyfile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load TLS files: {exc}", broker=url) from exc
    elif cafile or certfile or keyfile:
        raise ConfigurationError(
            "ssl_* options need a TLS scheme (mqtts://, gmqtts://)", broker=url
        )
    host, port = url.host_list(8883 if tls else 1883)[0] if url.hosts else ("127.0.0.1", 1883)
    return MqttOptions(
        host=host,
        port=port,
        tls=context,
        username=url.username,
        password=url.password,
        version=versions[version_text],
        qos=qos,
        client_id=client_id,
        keepalive=keepalive,
        session_expiry=session_expiry,
        clean_start=url.option("clean_start", False),
        connect_timeout=connect_timeout,
        stall_timeout=stall_timeout,
        receive_maximum=receive_maximum or None,
        max_inflight=max_inflight,
        max_message_size=max_message_size,
        envelope=url.option("envelope", True),
        mandatory=url.option("mandatory", True),
    )


def build_capabilities(opts: MqttOptions, qos2_redelivers: bool = True) -> Capabilities:
    """The same flags for both drivers; they follow from the options, except that a client
    library that confirms a QoS 2 message before the handler acked it (``qos2_redelivers``
    False) cannot promise redelivery at QoS 2.

    ``persistent`` needs persistent sessions, MQTT 5, QoS 1 and ``mandatory``: the broker
    keeps queued messages across a restart but (Mosquitto) not shared subscriptions, so
    right after a restart a send can reach no group until the members subscribe again;
    only an MQTT 5 PUBACK tells ("no matching subscribers": Mosquitto's PUBREC, at QoS 2,
    does not), and only ``mandatory`` makes that a failed send (:class:`Unroutable`)
    rather than a silent loss."""
    durable = opts.persistent_sessions
    return Capabilities(
        persistent=durable and opts.v5 and opts.qos == 1 and opts.mandatory,
        consumer_groups=True,
        fanout_groups=True,
        per_key_ordering=False,
        ack=durable and (opts.qos < 2 or qos2_redelivers),
        redelivery_on_nack=False,
        replay_from_start=False,
        # MQTT 5: user properties. MQTT 3.1.1: the envelope, or (envelope=off) plain payloads
        # for foreign readers, refusing keys and headers rather than dropping them.
        native_headers=opts.v5 or not opts.envelope,
        native_keys=opts.v5 or not opts.envelope,
        patterns=True,
        explicit_partitions=False,
        topic_check=False,
        exactly_once=False,
        max_message_size=opts.max_message_size,
    )


# -- names -----------------------------------------------------------------------------------


def validate_topic_name(name: str) -> None:
    """MQTT's rules for a topic we publish to (the core checked the generic ones)."""
    if "+" in name or "#" in name:
        raise ConfigurationError(
            f"MQTT topic name {name!r} contains a wildcard (+ or #); wildcards are only for "
            "pattern= subscriptions"
        )
    if name.startswith("$"):
        raise ConfigurationError(f"MQTT topic name {name!r} starts with $ (reserved by brokers)")
    if not is_safe_text(name):
        raise ConfigurationError(f"MQTT topic name {name!r} contains characters brokers refuse")
    if len(name.encode("utf-8")) > MAX_STRING:
        raise ConfigurationError(f"MQTT topic name longer than {MAX_STRING} bytes")


def check_group(group: str) -> None:
    if not group or any(c in group for c in "/+#") or not is_safe_text(group):
        raise ConfigurationError(
            f"group {group!r} cannot be an MQTT share name (no '/', '+', '#' or control "
            "characters)"
        )


def share_filter(group: str, topic_filter: str, ephemeral: bool = False) -> str:
    share = group + EPHEMERAL_SUFFIX if ephemeral else group
    return f"$share/{share}/{topic_filter}"


_META = set(".^$*+?{}[]\\|()")


def pattern_filter(pattern: str) -> str:
    """The narrowest MQTT filter covering every topic name the regex ``pattern`` matches.

    The literal start of the regex, cut at its last ``/``, becomes ``<prefix>/#``; without
    one the filter is ``#``. The driver then keeps only names the regex fully matches.
    """
    if "|" in pattern:
        return "#"
    text = pattern[1:] if pattern.startswith("^") else pattern
    prefix: list[str] = []
    for i, char in enumerate(text):
        if char in _META:
            if char in "*?{" and prefix:
                prefix.pop()  # the quantifier makes the previous character optional
            break
        if i + 1 < len(text) and text[i + 1] in "*?{":
            break
        prefix.append(char)
    literal = "".join(prefix)
    if "/" not in literal:
        return "#"
    head = literal[: literal.rindex("/")]
    if not head or "+" in head or "#" in head or head.startswith("$"):
        return "#"
    return f"{head}/#"


# -- properties --------------------------------------------------------------------------------


@dataclass
class WireMeta:
    """What a message carries besides its payload, in MQTT terms."""

    payload: bytes
    user_properties: list[tuple[str, str]]
    content_type: str | None = None


def encode_properties(message: Message, v5: bool) -> WireMeta:
    """Key, headers and a None value as MQTT 5 user properties (nothing for 3.1.1).

    Text that Mosquitto accepts travels as itself; anything else (non-UTF-8 bytes, control
    characters, more than 64 KiB) travels in base64 under a reserved ``channels.`` name.
    """
    payload = message.value if message.value is not None else b""
    if not v5:
        return WireMeta(payload, [])
    props: list[tuple[str, str]] = []
    content_type: str | None = None
    if message.key is not None:
        text = _text_or_none(message.key)
        if text is not None:
            props.append((KEY, text))
        else:
            props.extend((KEY_B64, piece) for piece in _b64_pieces(message.key))
    if message.value is None:
        props.append((NONE, "1"))
    for name, value in message.headers.items():
        text = _text_or_none(value)
        plain_name = is_safe_text(name) and not name.startswith(PREFIX)
        if name == CONTENT_TYPE_HEADER and text is not None and content_type is None:
            content_type = text
        elif plain_name and text is not None:
            props.append((name, text))
        elif plain_name:
            props.extend((HEADER_B64 + name, piece) for piece in _b64_pieces(value))
        else:
            encoded = base64.urlsafe_b64encode(name.encode("utf-8")).decode("ascii")
            props.extend((HEADER_NAMED + encoded, piece) for piece in _b64_pieces(value))
    for name, _ in props:
        if len(name.encode("utf-8")) > MAX_STRING:
            raise EncodeError(f"header name longer than {MAX_STRING} bytes cannot travel in MQTT")
    return WireMeta(payload, props, content_type)


def decode_properties(
    payload: bytes, user_properties: Sequence[tuple[str, str]], content_type: str | None
) -> tuple[bytes | None, bytes | None, dict[str, bytes]]:
    """(key, value, headers) from a received PUBLISH; foreign properties become headers."""
    key: bytes | None = None
    key_b64: list[str] = []
    is_none = False
    headers: dict[str, bytes] = {}
    pieces: dict[str, list[str]] = {}
    for name, text in user_properties:
        if name == KEY:
            key = text.encode("utf-8")
        elif name == KEY_B64:
            key_b64.append(text)
        elif name == NONE and text == "1":
            is_none = True
        elif name.startswith(HEADER_B64) and len(name) > len(HEADER_B64):
            pieces.setdefault(name[len(HEADER_B64) :], []).append(text)
        elif name.startswith(HEADER_NAMED):
            try:
                real = base64.urlsafe_b64decode(name[len(HEADER_NAMED) :]).decode("utf-8")
            except (binascii.Error, ValueError):
                headers[name] = text.encode("utf-8")
                continue
            pieces.setdefault(real, []).append(text)
        else:
            headers[name] = text.encode("utf-8")
    for real, parts in pieces.items():
        try:
            headers[real] = base64.b64decode("".join(parts), validate=True)
        except (binascii.Error, ValueError):
            headers[real] = "".join(parts).encode("utf-8")
    if key_b64:
        try:
            key = base64.b64decode("".join(key_b64), validate=True)
        except (binascii.Error, ValueError):
            key = "".join(key_b64).encode("utf-8")
    if content_type is not None and CONTENT_TYPE_HEADER not in headers:
        headers[CONTENT_TYPE_HEADER] = content_type.encode("utf-8")
    value: bytes | None = None if is_none and not payload else payload
    return key, value, headers


def _check_plain(message: Message) -> None:
    """MQTT 3.1.1 with ``envelope=off``: only a payload can travel."""
    if message.key is not None or message.headers:
        raise EncodeError("version=3 with envelope=off: MQTT 3.1.1 has no keys or headers")
    if message.value is None:
        raise EncodeError("version=3 with envelope=off: MQTT 3.1.1 cannot mark a None value")


# -- acknowledgements ----------------------------------------------------------------------------


class AckEntry:
    __slots__ = ("done", "handle")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.done = False


class AckQueue:
    """Releases acknowledgements in arrival order (MQTT 5, 4.6.0-2).

    ``add`` records a QoS 1/2 PUBLISH as it arrives; ``ack`` marks it handled; every handled
    entry at the head of the queue is then released through ``release`` (the driver sends
    the PUBACK / PUBCOMP, or lets its library do so), oldest first.
    """

    def __init__(self, release: Callable[[Any], None]) -> None:
        self._release = release
        self._entries: deque[AckEntry] = deque()
        self.released = 0

    def add(self, handle: Any) -> AckEntry:
        entry = AckEntry(handle)
        self._entries.append(entry)
        return entry

    def ack(self, entry: AckEntry) -> None:
        if entry.done:
            return
        entry.done = True
        entries = self._entries
        while entries and entries[0].done:
            self._release(entries.popleft().handle)
            self.released += 1

    @property
    def pending(self) -> int:
        """Entries not yet released (handled or not)."""
        return len(self._entries)

    @property
    def unacked(self) -> int:
        return sum(1 for entry in self._entries if not entry.done)

    def handles(self) -> list[Any]:
        return [entry.handle for entry in self._entries]


# -- the driver's part -----------------------------------------------------------------------------


@dataclass
class Incoming:
    """A PUBLISH as a driver hands it over."""

    topic: str
    payload: bytes
    qos: int
    dup: bool
    user_properties: list[tuple[str, str]]
    content_type: str | None
    #: what the driver needs to release the acknowledgement (None for QoS 0)
    handle: Any = None


@dataclass
class LinkConfig:
    client_id: str
    clean_start: bool
    session_expiry: int
    receive_maximum: int | None
    #: called for every PUBLISH from the moment the connection exists (before CONNACK
    #: returns to the caller), so nothing the broker sends at once is missed
    on_message: Callable[[Link, Incoming], None] | None = None
    #: called once when the connection drops without ``close`` (reason code if known)
    on_lost: Callable[[Link, int | None], None] | None = None
    #: never acknowledge a received message (the group's anchor: its backlog stays kept)
    silent: bool = False


class Link(abc.ABC):
    """One MQTT connection (one session) of a client library."""

    def __init__(self, opts: MqttOptions, config: LinkConfig) -> None:
        self.opts = opts
        self.config = config
        self.closed = False
        self.lost = False

    @abc.abstractmethod
    async def open(self) -> bool:
        """Connect; return the CONNACK's session-present flag."""

    @abc.abstractmethod
    async def subscribe(self, filters: Sequence[str], qos: int) -> None:
        """Subscribe and wait for the SUBACK; raise ConnectionFailed if refused."""

    @abc.abstractmethod
    async def unsubscribe(self, filters: Sequence[str]) -> None: ...

    @abc.abstractmethod
    async def start_publish(
        self, topic: str, meta: WireMeta, qos: int
    ) -> asyncio.Future[int] | None:
        """Hand one PUBLISH to the library; a future resolved by its PUBACK with the PUBACK's
        reason code (0 where the protocol has none; None: QoS 0, nothing to wait for)."""

    @abc.abstractmethod
    def release(self, handle: Any) -> None:
        """Send the acknowledgement of an incoming message (called in arrival order)."""

    @abc.abstractmethod
    async def close(self, keep_session: bool = True) -> None:
        """DISCONNECT. Without ``keep_session`` the session ends now (expiry 0)."""

    def _report_lost(self, reason: int | None) -> None:
        if self.closed or self.lost:
            return
        self.lost = True
        if self.config.on_lost is not None:
            self.config.on_lost(self, reason)


# -- sessions ----------------------------------------------------------------------------------


class _Slots:
    """Which deterministic client ids are in use in this process (all transports)."""

    def __init__(self) -> None:
        self.used: dict[tuple[str, int, str], set[int]] = {}
        self.locks: dict[tuple[str, int, str], asyncio.Lock] = {}

    def lock(self, key: tuple[str, int, str]) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def acquire(self, key: tuple[str, int, str]) -> int:
        used = self.used.setdefault(key, set())
        slot = 0
        while slot in used:
            slot += 1
        used.add(slot)
        return slot

    def release(self, key: tuple[str, int, str], slot: int) -> None:
        used = self.used.get(key)
        if used is not None:
            used.discard(slot)
            if not used:
                del self.used[key]

    def others(self, key: tuple[str, int, str], slot: int) -> set[int]:
        return self.used.get(key, set()) - {slot}


_slots_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = (
    weakref.WeakKeyDictionary()
)


def _slots() -> _Slots:
    """The registry of the running event loop (its locks belong to that loop)."""
    loop = asyncio.get_running_loop()
    slots = _slots_by_loop.get(loop)
    if slots is None:
        slots = _slots_by_loop[loop] = _Slots()
    return slots


def session_base(opts: MqttOptions, group: str, what: str) -> str:
    digest = hashlib.sha256(f"{group}\0{what}".encode()).hexdigest()[:16]
    return f"{opts.client_id}-{digest}"


def session_key(opts: MqttOptions, base: str) -> tuple[str, int, str]:
    """The key of a session family (one broker, one ``session_base``) in the slot registry."""
    return (opts.host, opts.port, base)


class _Leg:
    """One session of a member: a group on one topic (or one pattern)."""

    def __init__(
        self, sub: MqttSubscription, group: str, what: str, topic_filter: str,
        regex: re.Pattern[str] | None,
    ) -> None:
        transport = sub.transport
        self.sub = sub
        self.transport = transport
        self.opts = transport.opts
        self.what = what
        #: a session that ends with its connection (see "Ephemeral groups" above)
        self.ephemeral = sub.spec.ephemeral
        self.filters = [share_filter(group, topic_filter, self.ephemeral)]
        self.regex = regex
        self.base = session_base(self.opts, group + EPHEMERAL_SUFFIX if self.ephemeral else group, what)
        self.key = session_key(self.opts, self.base)
        self.slot: int | None = None
        #: an ephemeral member's client id: unique, never resumed (None: a durable member)
        self.unique_id = f"{self.base}-e{uuid.uuid4().hex[:12]}" if self.ephemeral else None
        self.link: Link | None = None
        self.acks: AckQueue | None = None
        self.reconnect_task: asyncio.Task[None] | None = None
        self.losses: deque[float] = deque(maxlen=FLAP_LOSSES)
        #: set while the session is connected and subscribed
        self.connected = asyncio.Event()
        #: armed while the broker's window is full behind an unacked message
        self.stall_timer: asyncio.TimerHandle | None = None
        self.stall_mark = -1

    @property
    def client_id(self) -> str:
        if self.unique_id is not None:
            return self.unique_id
        return f"{self.base}-{self.slot}"

    async def start(self) -> None:
        if self.ephemeral:
            await self._connect()  # no slot: the session is this member's alone
            return
        async with _slots().lock(self.key):
            self.slot = _slots().acquire(self.key)
        try:
            await self._connect()
        except BaseException:
            _slots().release(self.key, self.slot)
            self.slot = None
            raise

    async def _connect(self) -> None:
        opts = self.opts
        durable = opts.persistent_sessions and not self.ephemeral
        config = LinkConfig(
            client_id=self.client_id,
            clean_start=not durable,
            session_expiry=opts.session_expiry if durable else 0,
            receive_maximum=self.sub.receive_maximum,
            on_message=self._on_message,
            on_lost=self._on_lost,
        )
        link = self.transport._new_link(config)
        acks = AckQueue(link.release)
        # Installed before the connection exists: messages that arrive right after
        # CONNACK (a resumed session's backlog) land in the member's buffer at once.
        self.link, self.acks = link, acks
        try:
            await self.transport._guarded(link.open(), "connect")
            await self.transport._guarded(link.subscribe(self.filters, opts.qos), "subscribe")
            if link.lost:
                raise ConnectionFailed("the connection dropped while subscribing")
            self.connected.set()
        except BaseException:
            self.link = None
            with contextlib.suppress(Exception):
                await link.close(keep_session=not self.ephemeral)
            raise

    def _on_message(self, link: Link, incoming: Incoming) -> None:
        if link is not self.link or self.acks is None:
            return  # a connection we already left: the broker redelivers its messages
        entry = self.acks.add(incoming.handle) if incoming.qos > 0 else None
        if entry is not None and self.acks.pending >= self.sub.receive_maximum:
            self._arm_stall(link)
        if self.regex is not None and not self.regex.fullmatch(incoming.topic):
            if entry is not None:
                self.acks.ack(entry)
            return
        if self.opts.v5:
            key, value, headers = decode_properties(
                incoming.payload, incoming.user_properties, incoming.content_type
            )
        else:
            key, value, headers = None, incoming.payload, {}
        message = Message(
            incoming.topic, value, key, headers, None, None, None,
            (self, link, entry), incoming.dup,
        )
        self.sub._deliver(message)

    def ack(self, link: Link, entry: AckEntry | None) -> None:
        if entry is None or link is not self.link or self.acks is None or link.lost:
            return  # QoS 0, or a connection that is gone: its messages come back anyway
        self.acks.ack(entry)

    # A message never acked (a handler that failed inside ``async with event``) holds back
    # the PUBACK of every later one; once Receive Maximum of them wait, the broker sends no
    # more. If the window stays full and nothing is released for ``stall_timeout`` seconds,
    # the session reconnects: the broker resends the held messages (the unacked one and,
    # as duplicates, those acked behind it) and delivery goes on. At-least-once either way.

    def _arm_stall(self, link: Link) -> None:
        if self.stall_timer is not None or self.acks is None:
            return
        self.stall_mark = self.acks.released
        self.stall_timer = asyncio.get_running_loop().call_later(
            self.opts.stall_timeout, self._check_stall, link
        )

    def _check_stall(self, link: Link) -> None:
        self.stall_timer = None
        acks = self.acks
        if link is not self.link or acks is None or link.lost or self.sub.closed:
            return
        if acks.pending < self.sub.receive_maximum:
            return
        if acks.released != self.stall_mark:
            self._arm_stall(link)  # progress was made; still full: watch again
            return
        log.warning(
            "MQTT session %s: %d messages waited %.0fs behind an unacked one; reconnecting "
            "so the broker resends them",
            self.client_id, acks.pending, self.opts.stall_timeout,
        )
        self.reconnect_task = asyncio.get_running_loop().create_task(self._restart(link))

    async def _restart(self, link: Link) -> None:
        self.link = None  # its messages' acks are void: the broker resends them
        self.connected.clear()
        if not self.ephemeral:
            # An ephemeral session is not resumed: nothing comes back, so what is buffered
            # is still handed out (its acks go nowhere) rather than lost.
            self.sub._drop_buffered(link)
        with contextlib.suppress(Exception):
            await link.close(keep_session=not self.ephemeral)
        await self._reconnect()

    def _on_lost(self, link: Link, reason: int | None) -> None:
        if link is not self.link or self.sub.closed:
            return
        self.connected.clear()
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        now = asyncio.get_running_loop().time()
        self.losses.append(now)
        flapping = len(self.losses) == FLAP_LOSSES and now - self.losses[0] < FLAP_SECONDS
        if reason == SESSION_TAKEN_OVER or flapping:
            # Mosquitto 2.0 closes a taken-over connection without saying why; losing it
            # again and again right after reconnecting is the same fight.
            self.sub._fail(
                ConnectionFailed(
                    f"session {self.client_id!r} was taken over by another client with the same "
                    f"client id (reason {reason}, {len(self.losses)} losses in "
                    f"{now - self.losses[0]:.1f}s); give each process its own ?client_id= "
                    "prefix",
                    broker=self.transport.url,
                )
            )
            return
        if self.reconnect_task is not None and not self.reconnect_task.done():
            return  # the running reconnect loop notices (link.lost) and tries again
        log.warning("MQTT session %s lost its connection; reconnecting", self.client_id)
        self.reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self.sub.closed:
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("reconnecting %s failed: %s", self.client_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            log.info("MQTT session %s reconnected and resubscribed", self.client_id)
            return

    async def close(self) -> None:
        """Leave the group (serialized with the other members of this group and topic)."""
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        if self.reconnect_task is not None:
            self.reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reconnect_task
        link, self.link = self.link, None
        if self.ephemeral:
            await self._leave_ephemeral(link)
            return
        slot = self.slot
        if slot is None:
            return
        async with _slots().lock(self.key):
            try:
                if link is None or link.lost:
                    return
                if not self.opts.persistent_sessions:
                    await link.close(keep_session=False)
                    return
                last = not _slots().others(self.key, slot)
                if self.regex is None and last and slot == 0:
                    await link.close(keep_session=True)  # the anchor keeps the group's messages
                    return
                if self.regex is None and last:
                    await self.transport._ensure_anchor(self)
                # Stop new messages coming to this session. It is kept while it holds
                # messages: what the broker already queued for it (and anything unacked)
                # waits for this slot's next use. A pattern's session (its filter may be
                # "#") keeps nothing once its last member left.
                with contextlib.suppress(Exception):
                    await self.transport._guarded(link.unsubscribe(self.filters), "unsubscribe")
                pending = self.acks.pending if self.acks is not None else 1
                await link.close(keep_session=self.regex is None or pending > 0)
            finally:
                _slots().release(self.key, slot)
                self.slot = None

    async def _leave_ephemeral(self, link: Link | None) -> None:
        """Unsubscribe (no new message is sent to a member on its way out), then DISCONNECT
        with session expiry 0: the broker keeps nothing of this session. A connection
        already lost left nothing either (its session expired with it)."""
        if link is None:
            return
        if not link.lost:
            with contextlib.suppress(Exception):
                await self.transport._guarded(link.unsubscribe(self.filters), "unsubscribe")
        await link.close(keep_session=False)


class MqttSubscription(Subscription):
    """A member of a group: one session per topic (or pattern), one buffer."""

    def __init__(self, transport: MqttTransportBase, spec: SubscriptionSpec) -> None:
        self.transport = transport
        self.spec = spec
        opts = transport.opts
        prefetch = max(1, spec.prefetch)
        self.receive_maximum = min(opts.receive_maximum or prefetch, 65_535)
        # QoS 0 is not flow-controlled by the broker: keep at most this many, drop the rest.
        self.qos0_limit = max(1000, 10 * prefetch)
        self.prefetch = prefetch
        #: messages handed out and not yet acked, by id of their token
        self._outstanding: dict[int, Any] = {}
        self.legs: list[_Leg] = []
        self._buffer: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self.closed = False
        self.dropped = 0
        for topic in spec.topics:
            self.legs.append(_Leg(self, spec.group, topic.name, topic.name, None))
        if spec.pattern is not None:
            regex = re.compile(spec.pattern)
            topic_filter = pattern_filter(spec.pattern)
            what = "pattern:" + spec.pattern
            self.legs.append(_Leg(self, spec.group, what, topic_filter, regex))

    async def start(self) -> None:
        try:
            for leg in self.legs:
                await leg.start()
        except BaseException:
            await self.close()
            raise

    def _deliver(self, message: Message) -> None:
        if self.transport.opts.qos == 0 and len(self._buffer) >= self.qos0_limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("QoS 0 buffer full: %d message(s) dropped so far", self.dropped)
            return
        self._buffer.append(message)
        self._wake.set()

    def _drop_buffered(self, link: Link) -> None:
        """Forget messages of ``link`` not handed out yet (the broker resends them)."""
        self._buffer = deque(m for m in self._buffer if m.token[1] is not link)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake.set()

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            if self.closed:
                raise ClosedError("subscription is closed", broker=self.transport.url)
            # The broker's Receive Maximum is the window already, but Mosquitto 2.0.11 was
            # seen sending one message over it after a window of acks: count here too.
            room = min(max(1, max_messages), self.prefetch - len(self._outstanding))
            if self._buffer and room > 0:
                out = [self._buffer.popleft() for _ in range(min(room, len(self._buffer)))]
                for message in out:
                    self._outstanding[id(message.token)] = message.token
                return out
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()

    async def ack(self, messages: Sequence[Message]) -> None:
        for message in messages:
            token = message.token
            if isinstance(token, tuple) and len(token) == 3 and isinstance(token[0], _Leg):
                leg, link, entry = token
                if leg.sub is self:
                    leg.ack(link, entry)
                if self._outstanding.pop(id(token), None) is not None:
                    self._wake.set()

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        if requeue:
            raise CapabilityNotSupported(
                "nack(requeue=True)",
                "MQTT has no negative acknowledgement; an unacked message comes back only when "
                "its session reconnects",
                driver=type(self.transport).__name__,
                broker=self.transport.url,
            )
        await self.ack(messages)  # dropping a message is acknowledging it

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        self._buffer.clear()
        self.transport._subs.discard(self)
        for leg in self.legs:
            try:
                await leg.close()
            except Exception as exc:  # closing must not fail: the broker redelivers
                log.warning("closing MQTT session %s: %s", leg.client_id, exc)


# -- the transport -------------------------------------------------------------------------------


class MqttTransportBase(Transport):
    """The shared body of both MQTT drivers; subclasses supply ``_new_link``."""

    tls_schemes: ClassVar[tuple[str, ...]] = ()
    #: False when the client library sends PUBREC on receipt (the message is then the
    #: client's, and gone if the process dies before the ack)
    qos2_redelivers: ClassVar[bool] = True
    #: (client exception types, channels error) rows for translate_errors
    error_table: ClassVar[Sequence[tuple[Any, Any]]] = ()

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        self.opts = parse_options(url, self.tls_schemes)
        self._caps = build_capabilities(self.opts, self.qos2_redelivers)
        self._publisher: Link | None = None
        self._publisher_ready = asyncio.Event()
        self._publisher_task: asyncio.Task[None] | None = None
        self._subs: set[MqttSubscription] = set()
        self._closed = False
        self._connected = False
        self._declared: set[tuple[str, str]] = set()

    # -- driver hooks ----------------------------------------------------------------------

    @abc.abstractmethod
    def _new_link(self, config: LinkConfig) -> Link: ...

    def map_errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        from transports.base import translate_errors

        return translate_errors(self.error_table, self.url, what)

    @staticmethod
    def connack_code(exc: BaseException) -> int | None:
        """The CONNACK reason code of a refused connection (None for other errors)."""
        return None

    async def _guarded(self, coro: Any, what: str) -> Any:
        """Run a link operation with the connect timeout and the error table."""
        with self.map_errors(what):
            try:
                return await asyncio.wait_for(coro, self.opts.connect_timeout)
            except TimeoutError:
                raise ConnectionFailed(
                    f"{what}: no answer within {self.opts.connect_timeout}s", broker=self.url
                ) from None
            except Exception as exc:
                if self.connack_code(exc) in LOGIN_REFUSED:
                    raise AuthenticationFailed(
                        f"{what}: the broker refused the login ({exc})", broker=self.url
                    ) from exc
                raise

    # -- contract --------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def validate_topic_name(self, name: str) -> None:
        validate_topic_name(name)

    async def connect(self) -> None:
        if self._closed:
            raise ClosedError("transport is closed", broker=self.url)
        await self._open_publisher()
        self._connected = True

    def _publisher_config(self) -> LinkConfig:
        import uuid

        return LinkConfig(
            client_id=f"{self.opts.client_id}-pub-{uuid.uuid4().hex[:12]}",
            clean_start=True,
            session_expiry=0,
            receive_maximum=None,
            on_lost=self._publisher_lost,
        )

    async def _open_publisher(self) -> None:
        link = self._new_link(self._publisher_config())
        try:
            await self._guarded(link.open(), "connect")
            if link.lost:
                raise ConnectionFailed("the connection dropped right after CONNACK", broker=self.url)
        except BaseException:
            with contextlib.suppress(Exception):
                await link.close(keep_session=False)
            raise
        self._publisher = link
        self._publisher_ready.set()

    def _publisher_lost(self, link: Link, reason: int | None) -> None:
        if link is not self._publisher or self._closed:
            return
        self._publisher_ready.clear()
        log.warning("MQTT publisher connection lost (reason %s); reconnecting", reason)
        self._publisher_task = asyncio.get_running_loop().create_task(self._reconnect_publisher())

    async def _reconnect_publisher(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                await self._open_publisher()
                log.info("MQTT publisher reconnected")
                await self._restore_anchors()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("publisher reconnect failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _live_publisher(self) -> Link:
        if self._closed or not self._connected:
            raise ClosedError("transport is not connected", broker=self.url)
        ready = self._publisher_ready
        if not ready.is_set():
            try:
                await asyncio.wait_for(ready.wait(), self.opts.connect_timeout)
            except TimeoutError:
                raise ConnectionFailed(
                    f"not connected to the broker for {self.opts.connect_timeout}s",
                    broker=self.url,
                ) from None
        link = self._publisher
        if link is None or link.lost or self._closed:
            raise ConnectionFailed("the publisher connection dropped", broker=self.url)
        return link

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.close()
        if self._publisher_task is not None:
            self._publisher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._publisher_task
        link, self._publisher = self._publisher, None
        if link is not None and not link.lost:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(keep_session=False), self.opts.connect_timeout)

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        """Subscribe the group's anchor session, so the broker keeps messages for it.

        MQTT topics need no creating and a broker cannot tell whether one "exists", so a
        source topic is never created and never reported missing (``topic_check`` False).
        """
        if self._closed or not self._connected:
            raise ClosedError("transport is not connected", broker=self.url)
        validate_topic_name(topic.name)
        if group is None or not self.opts.persistent_sessions:
            return
        check_group(group)
        if (group, topic.name) in self._declared:
            return
        base = session_base(self.opts, group, topic.name)
        key = session_key(self.opts, base)
        async with _slots().lock(key):
            if 0 not in _slots().used.get(key, set()):
                await self._subscribe_anchor(f"{base}-0", [share_filter(group, topic.name)])
        self._declared.add((group, topic.name))

    async def _restore_anchors(self) -> None:
        """Subscribe the anchors of the groups declared here again after a lost connection.

        Mosquitto (2.0.11 in our runs) keeps a session's queued messages across a restart but
        not its shared subscriptions: until a session subscribes again the group gets nothing,
        and a send that reaches no group at all is answered "no matching subscribers"
        (:class:`Unroutable`). Members subscribe again when they reconnect; a group with no
        member in this process gets its anchor back here. Groups with a member here are left
        alone (an anchor beside a live member would take a share of its messages)."""
        restored = 0
        for group, name in sorted(self._declared):
            base = session_base(self.opts, group, name)
            key = session_key(self.opts, base)
            try:
                async with _slots().lock(key):
                    if not _slots().used.get(key):
                        await self._subscribe_anchor(f"{base}-0", [share_filter(group, name)])
                        restored += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("MQTT group %r on %r: subscribing its anchor again failed: %s",
                            group, name, exc)
        if restored:
            log.info("MQTT anchors of %d declared group(s) subscribed again", restored)

    async def _ensure_anchor(self, leg: _Leg) -> None:
        """Before the last member (not slot 0) leaves: the anchor holds the subscription."""
        if 0 in _slots().used.get(leg.key, set()):
            return
        await self._subscribe_anchor(f"{leg.base}-0", leg.filters)

    async def _subscribe_anchor(self, client_id: str, filters: list[str]) -> None:
        # The anchor never acknowledges: a backlog it is sent now stays in its session.
        config = LinkConfig(
            client_id=client_id,
            clean_start=False,
            session_expiry=self.opts.session_expiry,
            receive_maximum=1,
            silent=True,
        )
        link = self._new_link(config)
        try:
            await self._guarded(link.open(), "connect")
            await self._guarded(link.subscribe(filters, self.opts.qos), "subscribe")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(keep_session=True), self.opts.connect_timeout)

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata | BaseException]:
        """Publish the batch and wait for every PUBACK. With ``mandatory``, a message the
        broker answered "no matching subscribers" gets its own :class:`Unroutable` in the
        result (the others of the batch were delivered)."""
        import time

        link = await self._live_publisher()
        qos = self.opts.qos
        waits: list[asyncio.Future[int]] = []
        results: list[RecordMetadata | BaseException] = []
        try:
            with self.map_errors("publish"):
                for message in messages:
                    validate_topic_name(message.topic)
                    if not self.opts.v5 and not self.opts.envelope:
                        _check_plain(message)
                    meta = encode_properties(message, self.opts.v5)
                    fut = await self._start_publish(link, message.topic, meta, qos)
                    if fut is not None:
                        waits.append(fut)
                    results.append(RecordMetadata(message.topic, None, None, time.time()))
                if waits:
                    await self._confirmations(waits)
                if link.lost:
                    raise ConnectionFailed(
                        "the connection dropped while publishing", broker=self.url
                    )
                if self.opts.mandatory:
                    # with QoS 1/2 every message has its future, in order
                    for index, fut in enumerate(waits):
                        if fut.result() == NO_MATCHING_SUBSCRIBERS:
                            results[index] = Unroutable(
                                f"no subscriber for {messages[index].topic!r}: the broker "
                                "answered 'no matching subscribers' (start a consumer or declare "
                                "a group first, or ?mandatory=false to accept that)",
                                1,
                                broker=self.url,
                            )
        finally:
            for fut in waits:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
        return results

    async def _confirmations(self, waits: list[asyncio.Future[int]]) -> None:
        """Wait for every PUBACK; fail when none arrives for ``connect_timeout`` seconds
        (a batch of large messages may take longer than that as a whole)."""
        pending: set[asyncio.Future[int]] = set(waits)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=self.opts.connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise ConnectionFailed(
                    f"publish: no PUBACK within {self.opts.connect_timeout}s "
                    f"({len(pending)} of {len(waits)} unconfirmed)",
                    broker=self.url,
                )
            for fut in done:
                fut.result()  # raises what the link set (a dropped connection, a refused publish)

    async def _start_publish(
        self, link: Link, topic: str, meta: WireMeta, qos: int
    ) -> asyncio.Future[int] | None:
        return await link.start_publish(topic, meta, qos)

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        if self._closed or not self._connected:
            raise ClosedError("transport is not connected", broker=self.url)
        check_group(spec.group)
        for topic in spec.topics:
            validate_topic_name(topic.name)
        if spec.from_beginning:
            raise CapabilityNotSupported(
                "from_beginning", "MQTT brokers keep no history to replay",
                driver=type(self).__name__, broker=self.url,
            )
        sub = MqttSubscription(self, spec)
        self._subs.add(sub)
        await sub.start()
        return sub

    def native(self) -> Any:
        return self._publisher

