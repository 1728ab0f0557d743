"""The NSQ driver, on ansq 0.3.0: ``nsq://host:4150``.

Mapping
    topic -> NSQ topic; group -> NSQ channel of that topic (every channel gets a copy of
    every message, inside a channel each message goes to one connection). ``declare()`` of
    an internal topic creates the topic and the group's channel over nsqd's HTTP API
    (``/topic/create``, ``/channel/create``), so messages published afterwards wait in the
    channel for the group. A source topic is never created: a missing one raises
    ``TopicNotFound`` (checked with ``/stats?topic=``); for an existing one the group's
    channel is created, which is the group's own storage.
    ack -> ``FIN``; ``nack(requeue=True)`` -> ``REQ`` (delayed by ``requeue_delay``);
    ``nack(requeue=False)`` -> ``FIN`` (NSQ has no dead-letter: the message is dropped);
    ``touch`` -> ``TOUCH`` (resets nsqd's ``msg_timeout`` for a long handler). The
    subscription's prefetch is the connection's ``RDY`` count: nsqd never has more than
    that many messages in flight to one member, which is the backpressure.
    Closing a subscription sends ``RDY 0``, ``REQ`` for every message still unacked and
    ``CLS``, so they go back to the channel at once; after a crash nsqd redelivers them
    when their ``msg_timeout`` runs out.
    Keys, headers and a None value travel in the portable envelope (NSQ messages are only
    a body); messages from other NSQ producers have no envelope and arrive as they came.
    An ephemeral group reads from the channel ``<group>#ephemeral`` (see
    ``ephemeral_channel``): nsqd keeps it in memory only (at most ``--mem-queue-size``
    messages) and deletes it with its messages when the last client disconnects, a crash
    included. A topic without any channel at all hands what it holds to the first channel
    created, an ephemeral one too: that backlog is the topic's and is left alone.

URL options
    ``http_port`` (nsqd HTTP API, default 4151), ``lookupd`` (comma-separated nsqlookupd
    HTTP ``host:port`` list: consumers also read from every nsqd it reports for the topic,
    polled every 30 s), ``max_in_flight`` (upper bound of the RDY count per connection,
    default 2500 = nsqd's ``--max-rdy-count``), ``msg_timeout`` (seconds nsqd waits for
    FIN/REQ/TOUCH before it redelivers, default 60), ``requeue_delay`` (seconds a nacked
    message waits, default 0), ``tls`` (``tls_v1`` upgrade; with ``tls_ca_file``,
    ``tls_cert_file``, ``tls_key_file``, ``tls_verify``), ``auth_secret`` (sent with
    ``AUTH`` when nsqd asks for it; never logged), ``envelope`` (``on``/``off``, default
    on), ``max_message_size`` (bytes, default 1048576 = nsqd's ``--max-msg-size``),
    ``max_body_size`` (bytes per MPUB, default 5242880 = nsqd's ``--max-body-size``),
    ``publish_timeout`` (seconds, default 10), ``connect_timeout`` (seconds, default 10),
    ``output_buffer_timeout`` (ms nsqd may hold messages for this consumer before it writes
    them, default 25 = nsqd's minimum; nsqd's own default is 250) and ``output_buffer_size``
    (bytes, default 16384; -1 makes nsqd write every message at once: lowest latency),
    ``heartbeat_interval`` (seconds between nsqd's heartbeats, default 10; a consumer
    connection silent for 2.5 intervals is replaced).
    Several hosts (``nsq://h1:4150,h2:4150``): publishers use the first that answers,
    consumers read from all, ``declare`` creates topic and channel on all.

Capabilities
    consumer groups, fan-out groups, ack, redelivery on nack, topic check; persistent
    (nsqd keeps messages beyond ``--mem-queue-size`` on disk and writes the in-memory ones
    to disk on a clean shutdown; a crash loses what was only in memory).

Cannot
    per-key ordering (NSQ promises no order, and a REQ puts a message at the back),
    replay from the start (a new channel sees only messages published after it exists),
    patterns, explicit partitions, exactly-once. Topic and group names must match
    ``^[.a-zA-Z0-9_-]+(#ephemeral)?$`` with 1 to 64 characters (nsqd's rule); others raise
    ``ConfigurationError``. NSQ refuses empty message bodies, so with ``envelope=off``
    neither ``b""`` nor None can be sent, and keys and headers are refused
    (``EncodeError``) rather than dropped.

Workarounds of ansq 0.3.0 defects (see docs/drivers/nsq.md): its automatic reconnect is
off (it leaves stale response waiters behind, so a publish after a reconnect can wait
forever); this driver reconnects itself with bounded backoff and bounds every publish
with ``publish_timeout``. A single message goes out as PUB (ansq's ``mpub`` of one
message writes a malformed MPUB body). ansq's read loop spins forever after a connection
reset, so the connection here has its own. ansq cannot upgrade to TLS and never marks a
connection authorized after AUTH; both are done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from channels.capabilities import Capabilities
from channels.errors import (
    AuthenticationFailed,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    EncodeError,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
)
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport, translate_errors

__all__ = ["NsqTransport"]

log = logging.getLogger("transports.nsq")

_OPTIONS = (
    "http_port",
    "lookupd",
    "max_in_flight",
    "msg_timeout",
    "requeue_delay",
    "tls",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_verify",
    "auth_secret",
    "envelope",
    "max_message_size",
    "max_body_size",
    "publish_timeout",
    "connect_timeout",
    "output_buffer_timeout",
    "output_buffer_size",
    "heartbeat_interval",
)

NAME_RULE = r"^[.a-zA-Z0-9_-]+(#ephemeral)?$, 1 to 64 characters in all"
_NAME = re.compile(r"[.a-zA-Z0-9_-]+(#ephemeral)?")


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and _NAME.fullmatch(name) is not None


_EPHEMERAL = "#ephemeral"


def ephemeral_channel(group: str) -> str:
    """The nsqd channel of the ephemeral group ``group``: its name plus ``#ephemeral``.

    A name that already ends in ``#ephemeral`` is kept. One too long for the suffix (nsqd
    allows 64 characters in all) is cut and keeps a hash of the whole name, so that every
    member of the group still meets in the same channel. The channel never clashes with
    the durable channel of a group of the same name.
    """
    if group.endswith(_EPHEMERAL):
        return group
    if len(group) + len(_EPHEMERAL) > 64:
        digest = hashlib.sha256(group.encode()).hexdigest()[:8]
        group = f"{group[: 64 - len(_EPHEMERAL) - 9]}-{digest}"
    return group + _EPHEMERAL


_TOO_BIG = re.compile(r"too big (\d+) > (\d+)")
_LOOKUPD_POLL = 30.0
_MAX_BACKOFF = 2.0
_CHUNK = 256 * 1024


class _ClientLogFilter(logging.Filter):
    """ansq logs every command it writes at debug level, bodies and AUTH secret included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("NSQ: Executing command")


_client_log = logging.getLogger("transports.nsq.client")
_client_log.addFilter(_ClientLogFilter())


class NsqError(Exception):
    """An error frame from nsqd (``E_BAD_TOPIC`` and so on)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def _import_ansq() -> Any:
    try:
        import ansq
        from ansq.tcp import connection as ansq_connection
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError("the nsq:// driver needs ansq: pip install anychannel[nsq]") from exc
    return ansq, ansq_connection


def _error_table() -> list[Any]:
    from ansq.tcp.exceptions import ConnectionClosedError, NSQException

    table: list[Any] = [
        # a certificate nobody trusts does not get better by retrying
        (ssl.SSLCertVerificationError, ConfigurationError),
        (TimeoutError, Timeout),
        (
            (ConnectionClosedError, NSQException, OSError, asyncio.IncompleteReadError, EOFError),
            ConnectionFailed,
        ),
        (NsqError, ConnectionFailed),
    ]
    try:
        import aiohttp

        table.append((aiohttp.ClientError, ConnectionFailed))
    except ImportError:  # pragma: no cover
        pass
    return table


def _raise_for(code: str, text: str, url: BrokerURL, topic: str = "") -> None:
    """Turn an nsqd error frame into the matching ``channels.errors`` exception."""
    if code in ("E_BAD_MESSAGE", "E_BAD_BODY"):
        match = _TOO_BIG.search(text)
        if match:
            raise MessageTooLarge(int(match[1]), int(match[2]), topic=topic, broker=url)
        raise EncodeError(f"nsqd refused the message: {code} {text}", broker=url)
    if code in ("E_BAD_TOPIC", "E_BAD_CHANNEL"):
        raise ConfigurationError(f"nsqd refused the name: {code} {text}", broker=url)
    if code in ("E_UNAUTHORIZED", "E_AUTH_FAILED"):
        raise AuthenticationFailed(f"nsqd refused the credentials: {code} {text}", broker=url)
    if code == "E_AUTH_DISABLED":
        raise ConfigurationError(f"nsqd does not ask for auth_secret: {code} {text}", broker=url)
    raise NsqError(code, text)


@dataclass(eq=False)
class _Token:
    """The ack handle of one received message: which connection delivered it."""

    reader: _Reader
    conn: Any
    msg_id: str
    done: bool = False

    @property
    def live(self) -> bool:
        # the transport knows of a lost socket before ansq's reader task does
        conn = self.conn
        writer = conn._writer
        return bool(conn is self.reader.conn and conn.status and writer is not None and not writer.is_closing())


class _Inbox(asyncio.Queue[Any]):
    """The message queue ansq fills; hands each message straight to the subscription.

    ansq empties its connection's queue when the connection closes (losing messages of
    other connections sharing it) and puts a None sentinel into it; neither applies here.
    """

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        super().__init__()
        self._deliver = deliver

    def put_nowait(self, item: Any) -> None:
        if item is not None:
            self._deliver(item)

    def qsize(self) -> int:
        return 0


class NsqTransport(Transport):
    """NSQ through ansq; see the module docstring for URL options and semantics."""

    schemes = ("nsq",)

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        # BrokerURL.redacted() shows secret query options when the URL has no password;
        # errors and reprs of this driver use a copy with the secret replaced.
        self.shown_url = dataclasses.replace(
            url, query={k: ("***" if k == "auth_secret" else v) for k, v in url.query.items()}
        )
        shown = self.shown_url
        shown.check_options(_OPTIONS)
        self.hosts = url.host_list(4150) or [("127.0.0.1", 4150)]
        self.http_port = shown.option("http_port", 4151)
        lookupd = shown.option("lookupd", "")
        self.lookupd = [part.strip() for part in lookupd.split(",") if part.strip()]
        self.max_in_flight = shown.option("max_in_flight", 2500)
        self.msg_timeout = shown.option("msg_timeout", 60.0)
        self.requeue_delay = shown.option("requeue_delay", 0.0)
        self.tls = shown.option("tls", False)
        self.tls_verify = shown.option("tls_verify", True)
        self.envelope = shown.option("envelope", True)
        self.max_body_size = shown.option("max_body_size", 5 * 1024 * 1024)
        self.publish_timeout = shown.option("publish_timeout", 10.0)
        self.connect_timeout = shown.option("connect_timeout", 10.0)
        # nsqd holds outgoing messages up to this long (ms) or until the buffer is full;
        # its default of 250 ms is most of a lone message's latency. -1 turns it off.
        self.output_buffer_timeout = shown.option("output_buffer_timeout", 25)
        self.output_buffer_size = shown.option("output_buffer_size", 16384)
        self.heartbeat_interval = shown.option("heartbeat_interval", 10.0)
        if not 1 <= self.heartbeat_interval <= 60:
            raise ConfigurationError("URL option 'heartbeat_interval' must be 1 to 60 seconds", broker=shown)
        self._secret: str | None = url.query.get("auth_secret") or None
        for name in ("max_in_flight", "max_body_size"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"URL option {name!r} must be >= 1", broker=shown)
        for name in ("msg_timeout", "publish_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"URL option {name!r} must be > 0", broker=shown)
        if self.requeue_delay < 0:
            raise ConfigurationError("URL option 'requeue_delay' must be >= 0", broker=shown)
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._ssl = ssl.create_default_context(cafile=shown.option("tls_ca_file", "") or None)
            cert = shown.option("tls_cert_file", "")
            if cert:
                self._ssl.load_cert_chain(cert, shown.option("tls_key_file", "") or None)
            if not self.tls_verify:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        max_size = shown.option("max_message_size", 1024 * 1024)
        # Without the envelope the core must hand us plain payloads: it wraps only when a
        # driver lacks native keys or headers. The driver refuses keys and headers then.
        plain = not self.envelope
        self._caps = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout_groups=True,
            per_key_ordering=False,
            ack=True,
            redelivery_on_nack=True,
            replay_from_start=False,
            native_headers=plain,
            native_keys=plain,
            patterns=False,
            explicit_partitions=False,
            topic_check=True,
            exactly_once=False,
            max_message_size=max_size,
        )
        self._writer: Any = None
        self._writer_lock = asyncio.Lock()
        self._http: Any = None
        self._subs: set[_Subscription] = set()
        self._connected = False

    # -- plumbing -------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    @contextlib.contextmanager
    def map_errors(self, what: str) -> Iterator[None]:
        with translate_errors(_error_table(), self.shown_url, what):
            yield

    def validate_topic_name(self, name: str) -> None:
        if not _valid_name(name):
            raise ConfigurationError(
                f"NSQ topic and channel names must match {NAME_RULE} (letters, digits, '.', '_', '-'): {name[:80]!r}",
                broker=self.shown_url,
            )

    def _check_group(self, group: str) -> None:
        if not _valid_name(group):
            raise ConfigurationError(
                f"an NSQ group is a channel; its name must match {NAME_RULE}: {group[:80]!r}",
                broker=self.shown_url,
            )

    async def _open(
        self,
        host: str,
        port: int,
        deliver: Callable[[Any], None] | None = None,
        on_close: Callable[[Any], None] | None = None,
        on_heartbeat: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Connect, IDENTIFY, upgrade to TLS and AUTH; bounded by ``connect_timeout``."""
        _import_ansq()
        from ansq.tcp.types import ConnectionOptions, NSQErrorSchema

        features = _features_class()(
            client_id="anychannel",
            msg_timeout=int(self.msg_timeout * 1000),
            heartbeat_interval=int(self.heartbeat_interval * 1000),
            tls_v1=self.tls,
            output_buffer_timeout=self.output_buffer_timeout,
            output_buffer_size=self.output_buffer_size,
        )
        options = ConnectionOptions(
            message_queue=_Inbox(deliver or _unexpected),
            on_close=on_close,
            on_heartbeat=on_heartbeat,
            auto_reconnect=False,
            features=features,
            logger=_client_log,
        )
        conn = _connection_class()(host, port, connection_options=options)
        conn.ssl_context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                await conn.connect()
                response = await conn.identify()
                if isinstance(response, NSQErrorSchema):
                    # IDENTIFY carries our URL options (msg_timeout, heartbeat, buffers)
                    text = response.body.decode("utf-8", "replace")
                    raise ConfigurationError(
                        f"nsqd refused the connection settings: {response.code} {text}", broker=self.shown_url
                    )
                negotiated = _identify_json(response)
                if self.tls and not negotiated.get("tls_v1"):
                    raise ConfigurationError(
                        "tls=true, but nsqd did not agree to TLS (is it started with --tls-cert and --tls-key?)",
                        broker=self.shown_url,
                    )
                if conn.is_auth_required:
                    if self._secret is None:
                        raise ConfigurationError(
                            "nsqd requires AUTH: set the auth_secret URL option",
                            broker=self.shown_url,
                        )
                    response = await conn.auth(self._secret)
                    if isinstance(response, NSQErrorSchema):
                        _raise_for(response.code, response.body.decode("utf-8", "replace"), self.shown_url)
                    conn._is_authorized = True
        except BaseException:
            await _close_quietly(conn)
            raise
        return conn

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        import aiohttp

        if self._connected:
            return
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.connect_timeout))
        self._connected = True
        try:
            with self.map_errors("connect"):
                async with self._writer_lock:
                    await self._writer_conn()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._connected = False
        subs, self._subs = list(self._subs), set()
        for sub in subs:
            await sub.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            await _close_quietly(writer)
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def _require(self) -> None:
        if not self._connected:
            raise ClosedError("nsq transport is not connected", broker=self.shown_url)

    # -- HTTP API -------------------------------------------------------------------------

    async def _http_call(self, host: str, method: str, path: str, port: int | None = None, **params: str) -> Any:
        self._require()
        url = f"http://{host}:{port or self.http_port}{path}"
        async with self._http.request(method, url, params=params) as response:
            body = await response.read()
            if response.status >= 400:
                text = body.decode("utf-8", "replace")
                try:
                    text = json.loads(text).get("message", text)
                except (ValueError, AttributeError):
                    pass
                if text in ("INVALID_TOPIC", "INVALID_CHANNEL"):
                    raise ConfigurationError(f"nsqd refused the name: {text}", broker=self.shown_url)
                raise NsqError(f"HTTP {response.status}", f"{method} {path}: {text}")
            return json.loads(body) if body.startswith((b"{", b"[")) else body

    async def _topic_exists(self, host: str, topic: str) -> bool:
        stats = await self._http_call(host, "GET", "/stats", format="json", topic=topic, include_clients="false")
        topics = (stats.get("topics") or []) if isinstance(stats, dict) else []
        return any(item.get("topic_name") == topic for item in topics)

    async def _forget_before_join(self, host: str, http_port: int | None, topic: str, channel: str) -> None:
        """Before a member of an ephemeral group joins on ``host``: drop what nsqd keeps for
        nobody, so that the member gets only what is sent from now on.

        A topic without any channel keeps what is published to it for the first channel
        that comes, whatever it is: that backlog is left alone (it is the topic's, not the
        group's; an application's group may be about to take it), so the first member of
        a new ephemeral channel on such a topic gets it. An ephemeral channel whose last
        member just left is deleted by nsqd a moment later: that is awaited (bounded), and
        a channel of the group's name still without members then is emptied
        (``/channel/empty``).
        """
        channels: list[dict[str, Any]] = []
        for _ in range(20):  # nsqd gives no event for a deleted channel: poll, 1 s at most
            stats = await self._http_call(
                host, "GET", "/stats", http_port, format="json", topic=topic, include_clients="false"
            )
            topics = (stats.get("topics") or []) if isinstance(stats, dict) else []
            entry = next((item for item in topics if item.get("topic_name") == topic), None)
            if entry is None:
                return  # SUB creates the topic: nothing was kept for anybody
            channels = [item for item in entry.get("channels") or [] if isinstance(item, dict)]
            dying = [
                item
                for item in channels
                if str(item.get("channel_name", "")).endswith(_EPHEMERAL) and not item.get("client_count")
            ]
            if not dying or not (len(dying) == len(channels) or any(c.get("channel_name") == channel for c in dying)):
                break
            await asyncio.sleep(0.05)
        mine = next((item for item in channels if item.get("channel_name") == channel), None)
        if mine is not None:
            held = any(mine.get(key) for key in ("depth", "in_flight_count", "deferred_count"))
            if held and not mine.get("client_count"):
                log.debug("emptying the memberless ephemeral channel %s/%s on %s", topic, channel, host)
                await self._http_call(host, "POST", "/channel/empty", http_port, topic=topic, channel=channel)

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        self.validate_topic_name(topic.name)
        if group is not None:
            self._check_group(group)
        with self.map_errors(f"declare {topic.name!r}"):
            for host, _port in self.hosts:
                if topic.internal:
                    await self._http_call(host, "POST", "/topic/create", topic=topic.name)
                elif not await self._topic_exists(host, topic.name):
                    raise TopicNotFound(topic.name, broker=self.shown_url)
                if group is not None:
                    await self._http_call(host, "POST", "/channel/create", topic=topic.name, channel=group)

    # -- publishing -----------------------------------------------------------------------

    async def _writer_conn(self) -> Any:
        """The publishing connection, opened on the first host that answers."""
        conn = self._writer
        if conn is not None and conn.status:
            return conn
        self._writer = None
        errors: list[str] = []
        for host, port in self.hosts:
            try:
                self._writer = await self._open(host, port)
                return self._writer
            except ssl.SSLCertVerificationError as exc:
                raise ConfigurationError(
                    f"TLS: the certificate of nsqd {host}:{port} is not trusted ({exc.verify_message}); "
                    "set tls_ca_file",
                    broker=self.shown_url,
                ) from exc
            except TimeoutError:
                errors.append(f"{host}:{port}: no answer within {self.connect_timeout}s")
            except OSError as exc:
                errors.append(f"{host}:{port}: {str(exc) or type(exc).__name__}")
        raise ConnectionFailed("cannot reach nsqd (" + "; ".join(errors) + ")", broker=self.shown_url)

    def _check_publishable(self, message: Message) -> bytes:
        value = message.value
        if self.envelope:
            if message.key is not None or message.headers or value is None:
                raise EncodeError("internal error: message was not wrapped in the envelope", broker=self.shown_url)
            return value
        if message.key is not None or message.headers:
            raise EncodeError(
                "envelope=off: NSQ has no keys or headers, so they cannot be sent",
                broker=self.shown_url,
            )
        if value is None:
            raise EncodeError(
                "envelope=off: NSQ cannot send None (it has no empty messages)",
                broker=self.shown_url,
            )
        if not value:
            raise EncodeError("envelope=off: NSQ refuses empty message bodies", broker=self.shown_url)
        return value

    def _chunks(self, messages: Sequence[Message]) -> Iterator[tuple[str, list[bytes]]]:
        """Runs of one topic, each small enough for one PUB or MPUB body."""
        topic: str | None = None
        bodies: list[bytes] = []
        size = 4
        for message in messages:
            body = self._check_publishable(message)
            if bodies and (message.topic != topic or size + 4 + len(body) > self.max_body_size):
                assert topic is not None
                yield topic, bodies
                bodies, size = [], 4
            topic = message.topic
            bodies.append(body)
            size += 4 + len(body)
        if bodies:
            assert topic is not None
            yield topic, bodies

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata]:
        self._require()
        for name in {m.topic for m in messages}:
            self.validate_topic_name(name)
        chunks = list(self._chunks(messages))
        results: list[RecordMetadata] = []
        async with self._writer_lock:
            for topic, bodies in chunks:
                with self.map_errors(f"publish to {topic!r}"):
                    await self._publish_chunk(topic, bodies)
                stamp = time.time()
                results.extend(RecordMetadata(topic, None, None, stamp) for _ in bodies)
        return results

    async def _publish_chunk(self, topic: str, bodies: list[bytes]) -> None:
        from ansq.tcp.types import NSQCommands, NSQErrorSchema

        conn: Any = None
        try:
            async with asyncio.timeout(self.publish_timeout):
                conn = await self._writer_conn()
                if len(bodies) == 1:
                    response = await conn.execute(NSQCommands.PUB, topic, data=bodies[0])
                else:
                    response = await conn.execute(NSQCommands.MPUB, topic, data=bodies)
        except TimeoutError as exc:
            await self._drop_writer(conn)
            raise Timeout(
                f"nsqd did not confirm the publish to {topic!r} within {self.publish_timeout}s",
                broker=self.shown_url,
            ) from exc
        except BaseException:
            await self._drop_writer(conn)
            raise
        if isinstance(response, NSQErrorSchema):
            # nsqd closes the connection after an error frame on PUB/MPUB.
            await self._drop_writer(conn)
            _raise_for(response.code, response.body.decode("utf-8", "replace"), self.shown_url, topic)
        if not getattr(response, "is_ok", False):
            await self._drop_writer(conn)
            raise ConnectionFailed(f"unexpected answer to a publish: {response!r}", broker=self.shown_url)

    async def _drop_writer(self, conn: Any) -> None:
        if conn is not None and self._writer is conn:
            self._writer = None
        if conn is not None:
            await _close_quietly(conn)

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        self._require()
        if spec.pattern is not None:
            from channels.errors import CapabilityNotSupported

            raise CapabilityNotSupported("pattern subscriptions", driver="nsq", broker=self.shown_url)
        if spec.from_beginning:
            from channels.errors import CapabilityNotSupported

            raise CapabilityNotSupported(
                "from_beginning",
                "a new NSQ channel only sees later messages",
                driver="nsq",
                broker=self.shown_url,
            )
        self._check_group(spec.group)
        for topic in spec.topics:
            self.validate_topic_name(topic.name)
        sub = _Subscription(self, spec)
        self._subs.add(sub)
        try:
            await sub.start()
        except BaseException:
            await sub.close()
            raise
        return sub

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.shown_url.redacted()}>"

    def native(self) -> Any:
        """The publishing ``ansq.tcp.connection.NSQConnection`` (None until connected)."""
        return self._writer

    def client_version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"ansq {version('ansq')}"
        except PackageNotFoundError:  # pragma: no cover
            return "ansq"


def _unexpected(message: Any) -> None:
    log.warning("message on a publishing connection ignored")


def _identify_json(response: Any) -> dict[str, Any]:
    body = getattr(response, "body", b"")
    if body.startswith(b"{"):
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
    return {}


async def _close_quietly(conn: Any) -> None:
    if conn is None:
        return
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception as exc:
        log.debug("closing an nsqd connection failed: %r", exc)


_FEATURES_CLASS: Any = None


def _features_class() -> Any:
    """ansq's IDENTIFY features plus nsqd's output buffer settings, which ansq lacks."""
    global _FEATURES_CLASS
    if _FEATURES_CLASS is None:
        import attr
        from ansq.tcp.types import ConnectionFeatures

        base: Any = ConnectionFeatures

        @attr.define(frozen=True, auto_attribs=True, kw_only=True)
        class _Features(base):  # type: ignore[misc]
            output_buffer_timeout: int = 250
            output_buffer_size: int = 16384

        _FEATURES_CLASS = _Features
    return _FEATURES_CLASS


_CONNECTION_CLASS: Any = None


def _connection_class() -> Any:
    """ansq's connection with the TLS upgrade it lacks (``tls_v1`` in IDENTIFY)."""
    global _CONNECTION_CLASS
    if _CONNECTION_CLASS is not None:
        return _CONNECTION_CLASS
    _, ansq_connection = _import_ansq()

    base: Any = ansq_connection.NSQConnection

    class _Connection(base):  # type: ignore[misc]
        ssl_context: ssl.SSLContext | None = None

        async def _upgrade_to_tls(self) -> None:
            if self.ssl_context is None:  # pragma: no cover - tls_v1 is only asked for with tls
                raise ConfigurationError("nsqd offered TLS but no TLS context is configured")
            # nsqd answers the handshake with an OK frame; wait for it like a command.
            done = self._loop.create_future()
            self._cmd_waiters.append((done, None))
            await self._writer.start_tls(self.ssl_context, server_hostname=self._host)
            self._is_upgrading = False
            await self._read_buffer()
            response = await done
            if not getattr(response, "is_ok", False):
                raise NsqError("E_TLS", f"TLS upgrade failed: {response!r}")
            self._is_upgrading = True  # identify() ends the upgrade itself

        async def _read_data_task(self) -> None:
            # ansq's loop ends only at EOF; after a connection reset the stream raises the
            # same exception forever without waiting, so the loop spins, freezes the event
            # loop and grows that exception's traceback without bound. Any error ends it here.
            error: Exception | None = None
            try:
                while data := await self._reader.read(_CHUNK):
                    self._parser.feed(data)
                    if not self._is_upgrading:
                        await self._read_buffer()
            except asyncio.CancelledError:
                return
            except Exception as exc:
                error = exc
            self.logger.info("lost the connection to nsqd %s: %r", self.endpoint, error)
            await self._do_close(error=error, silent=True)

        def _frame_ready(self) -> bool:
            parser = self._parser
            buffer = parser.buffer
            if parser._is_header:
                return bool(len(buffer) >= 4 + parser._payload_size)
            return len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big")

        async def _read_buffer(self) -> None:
            # ansq stops parsing after an error frame nobody waits for (E_FIN_FAILED),
            # leaving complete frames behind it in the buffer until more bytes arrive.
            while await self._parse_data() or (self._status and self._frame_ready()):
                pass

    _CONNECTION_CLASS = _Connection
    return _Connection


class _Reader:
    """One connection reading ``topic``/``channel`` from one nsqd, reconnecting forever."""

    def __init__(
        self,
        sub: _Subscription,
        topic: str,
        host: str,
        port: int,
        fail_fast: bool = True,
        http_port: int | None = None,
    ) -> None:
        self.sub = sub
        #: the first connection failing ends the reader (subscribe raises); otherwise it retries
        self.fail_fast = fail_fast
        self.topic = topic
        self.host = host
        self.port = port
        #: nsqd's HTTP port (None: the URL's ``http_port``)
        self.http_port = http_port
        self.conn: Any = None
        self.unacked: dict[str, _Token] = {}
        self.ready = asyncio.Event()
        self.first_error: BaseException | None = None
        self.last_seen = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"nsq-reader-{self.topic}-{self.host}:{self.port}")

    async def _run(self) -> None:
        from ansq.tcp.types import NSQCommands, NSQErrorSchema

        transport = self.sub.transport
        backoff = 0.1
        failures = 0
        while not self.sub.closed:
            lost = asyncio.Event()
            conn: Any = None

            def on_close(_conn: Any, lost: asyncio.Event = lost) -> None:
                lost.set()

            try:
                if self.sub.spec.ephemeral and not self.ready.is_set():
                    await self._forget_before_join()
                conn = await transport._open(
                    self.host,
                    self.port,
                    deliver=self._arrived,
                    on_close=on_close,
                    on_heartbeat=self._heartbeat,
                )
                async with asyncio.timeout(transport.connect_timeout):
                    response = await conn.execute(NSQCommands.SUB, self.topic, self.sub.channel)
                    if isinstance(response, NSQErrorSchema):
                        _raise_for(response.code, response.body.decode("utf-8", "replace"), transport.shown_url)
                    self.conn = conn
                    await conn.execute(NSQCommands.RDY, self.sub.rdy)
                self.last_seen = time.monotonic()
                backoff = 0.1
                if failures:
                    log.info("nsq reader %s/%s on %s:%s is back", self.topic, self.sub.channel, self.host, self.port)
                failures = 0
                self.ready.set()
                log.debug(
                    "reading %s/%s from %s:%s",
                    self.topic,
                    self.sub.channel,
                    self.host,
                    self.port,
                )
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), transport.heartbeat_interval / 2)
                    if time.monotonic() - self.last_seen > 2.5 * transport.heartbeat_interval:
                        log.warning("no heartbeat from nsqd %s:%s; reconnecting", self.host, self.port)
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # E_SUB_FAILED on an ephemeral channel: most likely it was being deleted as
                # we joined; a new one is made on the next attempt (a few attempts only)
                lost_race = (
                    self.sub.spec.ephemeral
                    and isinstance(exc, NsqError)
                    and exc.code == "E_SUB_FAILED"
                    and failures < 3
                )
                if not self.ready.is_set() and self.fail_fast and not lost_race:
                    self.first_error = exc
                    self.ready.set()
                    return
                failures += 1
                # the first failure of a streak is a warning, the retries that follow are not
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "nsq reader %s/%s on %s:%s: %s; retrying (every %.1fs at most)",
                    self.topic,
                    self.sub.channel,
                    self.host,
                    self.port,
                    str(exc) or type(exc).__name__,
                    _MAX_BACKOFF,
                )
            finally:
                if self.conn is conn:
                    self.conn = None
                    self.unacked.clear()
                if conn is not None and conn.status:
                    await _close_quietly(conn)
            if self.sub.closed:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _forget_before_join(self) -> None:
        try:
            await self.sub.transport._forget_before_join(self.host, self.http_port, self.topic, self.sub.channel)
        except Exception as exc:
            # the member still joins; it may get what was sent before it, that is all
            log.warning(
                "nsqd %s: could not drop what %s kept before the ephemeral group %s joined: %s",
                self.host,
                self.topic,
                self.sub.channel,
                str(exc) or type(exc).__name__,
            )

    async def _heartbeat(self, _conn: Any) -> None:
        self.last_seen = time.monotonic()

    def _arrived(self, raw: Any) -> None:
        self.last_seen = time.monotonic()
        token = _Token(self, raw._connection, raw.id)
        self.unacked[raw.id] = token
        message = Message(
            self.topic,
            raw.body,
            None,
            {},
            None,
            raw.id,
            raw.timestamp / 1e9,
            token,
            raw.attempts > 1,
        )
        self.sub.arrived(message)

    async def close(self) -> None:
        """RDY 0, REQ whatever is unacked, CLS, then close the socket (bounded)."""
        from ansq.tcp.types import NSQCommands

        task, self.task = self.task, None
        conn = self.conn
        if conn is not None and conn.status:
            try:
                async with asyncio.timeout(3):
                    await conn.execute(NSQCommands.RDY, 0)
                    await self._requeue_all(conn)
                    await conn.execute(NSQCommands.CLS)
                    await self._requeue_all(conn)
            except (Exception, TimeoutError) as exc:
                log.debug("clean close of %s:%s failed: %r", self.host, self.port, exc)
        if task is not None:
            task.cancel()
            # wait() never raises the task's outcome, so our own cancellation still propagates
            await asyncio.wait([task], timeout=10)
        if conn is not None:
            await _close_quietly(conn)
        self.conn = None
        self.unacked.clear()

    async def _requeue_all(self, conn: Any) -> None:
        from ansq.tcp.types import NSQCommands

        tokens, self.unacked = list(self.unacked.values()), {}
        for token in tokens:
            if not token.done and token.conn is conn:
                token.done = True
                await conn.execute(NSQCommands.REQ, token.msg_id, 0)


@dataclass(eq=False)
class _Subscription(Subscription):
    transport: NsqTransport
    spec: SubscriptionSpec
    readers: list[_Reader] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.rdy = max(1, min(self.spec.prefetch, self.transport.max_in_flight))
        #: the nsqd channel: the group, with nsqd's ``#ephemeral`` suffix for an ephemeral one
        self.channel = ephemeral_channel(self.spec.group) if self.spec.ephemeral else self.spec.group
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for topic in self.spec.topics:
            for host, port in self.transport.hosts:
                self._add_reader(topic.name, host, port)
        # The nsqds of the URL must take the subscription before subscribe() returns;
        # those nsqlookupd reports are joined as they answer, and retried when they do not.
        await self._wait_ready(list(self.readers))
        for topic in self.spec.topics:
            if self.transport.lookupd:
                for host, port, http_port in await self._lookup(topic.name):
                    self._add_reader(topic.name, host, port, fail_fast=False, http_port=http_port)
        if self.transport.lookupd:
            self._poller = asyncio.create_task(self._poll_lookupd(), name="nsq-lookupd-poll")

    def _add_reader(
        self, topic: str, host: str, port: int, fail_fast: bool = True, http_port: int | None = None
    ) -> _Reader | None:
        if any(r.topic == topic and (r.host, r.port) == (host, port) for r in self.readers):
            return None
        reader = _Reader(self, topic, host, port, fail_fast, http_port)
        self.readers.append(reader)
        reader.start()
        return reader

    async def _wait_ready(self, readers: list[_Reader]) -> None:
        timeout = self.transport.connect_timeout * 2
        try:
            async with asyncio.timeout(timeout):
                for reader in readers:
                    await reader.ready.wait()
        except TimeoutError as exc:
            raise Timeout(f"could not subscribe within {timeout}s", broker=self.transport.shown_url) from exc
        for reader in readers:
            if reader.first_error is not None:
                with self.transport.map_errors(f"subscribe to {reader.topic!r}"):
                    raise reader.first_error

    async def _lookup(self, topic: str) -> list[tuple[str, int, int | None]]:
        """(address, TCP port, HTTP port) of every nsqd the nsqlookupds report for ``topic``."""
        found: list[tuple[str, int, int | None]] = []
        http = self.transport._http
        for address in self.transport.lookupd:
            base = address if "://" in address else f"http://{address}"
            try:
                async with http.get(f"{base}/lookup", params={"topic": topic}) as response:
                    if response.status != 200:
                        continue
                    data = await response.json(content_type=None)
            except Exception as exc:
                log.warning("nsqlookupd %s: %r", address, exc)
                continue
            for producer in data.get("producers", []) if isinstance(data, dict) else []:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    http_port = producer.get("http_port")
                    found.append(
                        (
                            str(producer["broadcast_address"]),
                            int(producer["tcp_port"]),
                            int(http_port) if http_port else None,
                        )
                    )
        return found

    async def _poll_lookupd(self) -> None:
        while not self.closed:
            await asyncio.sleep(_LOOKUPD_POLL)
            for topic in self.spec.topics:
                for host, port, http_port in await self._lookup(topic.name):
                    self._add_reader(topic.name, host, port, fail_fast=False, http_port=http_port)

    def arrived(self, message: Message) -> None:
        self.queue.append(message)
        self.wake.set()

    async def receive(self, max_messages: int) -> list[Message]:
        while True:
            if self.closed:
                raise ClosedError("subscription is closed", broker=self.transport.shown_url)
            out: list[Message] = []
            while self.queue and len(out) < max_messages:
                message = self.queue.popleft()
                token = message.token
                if isinstance(token, _Token) and not token.live:
                    continue  # its connection died: nsqd delivers it again
                out.append(message)
            if out:
                return out
            self.wake.clear()
            await self.wake.wait()

    def _settle(self, messages: Sequence[Message]) -> Iterator[_Token]:
        for message in messages:
            token = message.token
            if not isinstance(token, _Token) or token.done:
                continue
            token.done = True
            token.reader.unacked.pop(token.msg_id, None)
            if token.live:
                yield token
            else:
                log.debug("settling %s after its connection closed; nsqd redelivers it", token.msg_id)

    async def _send(self, tokens: Iterator[_Token], *args: Any) -> None:
        from ansq.tcp.exceptions import ConnectionClosedError

        for token in tokens:
            try:
                await token.conn.execute(*args[:1], token.msg_id, *args[1:])
            except (ConnectionClosedError, OSError) as exc:
                log.debug("%s %s failed: %r; nsqd redelivers it", args[0], token.msg_id, exc)

    async def ack(self, messages: Sequence[Message]) -> None:
        from ansq.tcp.types import NSQCommands

        await self._send(self._settle(messages), NSQCommands.FIN)

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        from ansq.tcp.types import NSQCommands

        if requeue:
            delay = int(self.transport.requeue_delay * 1000)
            await self._send(self._settle(messages), NSQCommands.REQ, delay)
        else:
            await self._send(self._settle(messages), NSQCommands.FIN)

    async def touch(self, messages: Sequence[Message]) -> None:
        from ansq.tcp.types import NSQCommands

        live = (m.token for m in messages if isinstance(m.token, _Token) and not m.token.done and m.token.live)
        await self._send(live, NSQCommands.TOUCH)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller], timeout=10)
        await asyncio.gather(*(reader.close() for reader in self.readers), return_exceptions=True)
        self.queue.clear()
        self.transport._subs.discard(self)
