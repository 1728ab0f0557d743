"""The Kafka driver, on aiokafka.

``kafka://host:port[,host:port...]`` (plain TCP) and ``kafka+ssl://...`` (TLS). Credentials
for SASL come from the URL's user info: ``kafka+ssl://user:secret@host:9093?sasl_mechanism=
SCRAM-SHA-512``. The password is only handed to aiokafka; it never appears in logs, reprs or
errors.

Semantic mapping
----------------
* topic = Kafka topic; group = Kafka consumer group (the Topic's ``group``, default the app id).
* key = record key. Keys are put on partitions by aiokafka's ``DefaultPartitioner``, which is
  the Java client's murmur2 (``toPositive(murmur2(key)) % partitions``), so a Java,
  librdkafka (``murmur2_random``) or kcat producer and ours agree. ``partition=`` is honoured.
  A message without key (and without ``partition=``) goes to a random available partition.
* headers = native record headers (bytes values round-trip). A foreign record with a null
  header value arrives with ``b""``; with a repeated header name the last value wins.
* value None = a tombstone (null record value) and arrives as None; ``b""`` arrives as ``b""``.
* ack = the offset of a partition is committed only up to the first message handed out and
  not yet acked: the committed offset is the highest *contiguous* acked offset + 1. Commits
  happen every ``commit_interval_ms``, when partitions are revoked in a rebalance (in the
  rebalance listener, before the group moves on) and on close. Nothing is committed for a
  partition this member no longer owns; a commit that fails (a rebalance, a broker restart)
  is logged and tried again on the next interval: the acks stay recorded.
* ``nack(requeue=True)`` seeks the partition back to the nacked offset: that message and
  every later one of the same partition are delivered again, in order. Acks for the
  later ones that arrive afterwards are ignored until they are redelivered.
  ``nack(requeue=False)`` is an ack (the message is skipped).
* backpressure: at most ``prefetch`` messages are handed out and not yet acked; while the
  window is full every assigned partition is paused, so aiokafka stops fetching.
* declare (internal topic): ``create_topics`` with ``partitions`` (else the URL option),
  ``replicas``, ``retention.ms``, ``cleanup.policy`` (compact / delete), raw ``config`` and
  ``max.message.bytes`` (from ``max_message_size``). Idempotent: an existing topic is kept;
  if it has *fewer* partitions than asked, ``ConfigurationError`` (we never add partitions
  silently: it moves keys to other partitions and breaks per-key order); more is logged.
  Source topics are never created or altered; a missing one is ``TopicNotFound``.
* declare(topic, group): "publish after declare, before subscribe". If ``group`` has no
  committed offset for a partition, the partition's current end offset is committed for
  the group (with metadata ``anychannel:declared``), so the group starts exactly where the
  topic stood at declare time and every message published afterwards reaches it. The end
  offsets are read *before* the committed offsets are checked, so two processes declaring
  at once can only make the group start earlier, never later. Kafka accepts that commit
  only while the group has no live members; for a busy group (one group for several
  topics) the start offsets are kept in this process and a member of ours that gets such a
  partition without a committed offset seeks there.
* subscribe: a group without committed offsets starts at the end (``latest``); with
  ``from_beginning`` at the oldest retained message (offsets that only come from declare,
  recognisable by their metadata, count as "no offsets" then). After the first assignment
  each assigned partition's starting position is committed, so ``subscribe`` returning
  means later messages reach the group even if the partition moves to another member.
* pattern subscriptions: ``spec.pattern`` must match the whole topic name (Python ``re``).
  Topics that match when subscribing start at their end (unless ``from_beginning``);
  topics created later start at their beginning (all their messages were published after
  the subscription). New topics are found within ``metadata_max_age_ms``.
* ephemeral groups (``spec.ephemeral``): the member joins the consumer group
  ``<group>~ephemeral`` (``EPHEMERAL_SUFFIX``; a distinct id, so that it never joins, steals
  partitions from or starts at the offsets of a durable group of the same name) and commits
  nothing, ever: acks only free room in the prefetch window. A new member starts at the end
  (with ``from_beginning`` at the oldest retained message; with a pattern, topics that
  appear later at their beginning), and ``subscribe`` returns once its positions are
  resolved. Across a rebalance the member keeps, in memory, where it stood on the
  partitions it gives up (the first unacked offset) and goes on from there when it gets
  them back; a partition that moves to another member continues at the end there. Kafka
  keeps no offsets for such a group: once its last member has left (``LeaveGroup``) or
  timed out (``session_timeout_ms``, after a crash) the group is ``Empty`` without offsets,
  and the broker deletes it at its next offsets clean-up
  (``offsets.retention.check.interval.ms``, 10 minutes by default). On a clean close the
  last member also deletes the empty group at once (``DeleteGroups``, best effort).

URL options
-----------
``client_id`` (default ``anychannel``); ``acks`` (``0``, ``1``, ``all``; default ``all``);
``compression`` (``none``, ``gzip``, and ``snappy``/``lz4``/``zstd`` when ``cramjam`` is
installed); ``linger_ms`` (0); ``max_batch_size`` (bytes per partition batch, 16384);
``enable_idempotence`` (false); ``request_timeout_ms`` (40000);
``sasl_mechanism`` (``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``; user and password from
the URL; credentials without a mechanism mean ``PLAIN``); ``ssl_cafile``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_keyfile_password`` (TLS with ``kafka+ssl://``);
``partitions`` (default partition count of internal topics, 4); ``replicas`` (1);
``max_message_size`` (bytes of key + value + headers, default 1,000,000: below the 1 MiB
``message.max.bytes`` a broker has by default, so it holds for source topics too. A larger
value makes internal topics get ``max.message.bytes`` and the producer
``max_request_size`` to match; a source topic's limit stays the broker's);
``session_timeout_ms`` (6000), ``heartbeat_interval_ms`` (1000), ``rebalance_timeout_ms``
(10000), ``max_poll_interval_ms`` (300000), ``metadata_max_age_ms`` (5000: how soon a new
topic matching a pattern is seen), ``fetch_max_wait_ms`` (100), ``commit_interval_ms``
(1000), ``isolation_level`` (``read_uncommitted``/``read_committed``).
Small group timeouts keep rebalances short on a slow machine; a consumer that does not ask
for messages for ``max_poll_interval_ms`` leaves the group (its unacked messages go to
another member).

Capabilities: persistent, consumer_groups, fanout_groups, per_key_ordering, ack,
redelivery_on_nack, replay_from_start, native_headers, native_keys, patterns,
explicit_partitions, topic_check. Not exactly-once (redelivery after a rebalance or a nack
can repeat messages).

What it cannot do: delay or dead-letter on nack (Kafka has no per-message requeue: a nack
replays the partition from that offset). A rebalance redelivers messages that were handed
out but not acked yet (eager rebalancing). Header values that are null on the wire arrive
as ``b""``. The size limit of a source topic is the broker's (``MessageTooLarge`` comes
back from the broker then, after the attempt, naming the topic's ``max.message.bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from channels.capabilities import Capabilities
from channels.errors import (
    AuthenticationFailed,
    ChannelsError,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
)
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL
from transports.base import Subscription, SubscriptionSpec, TopicSpec, Transport, translate_errors

__all__ = ["EPHEMERAL_SUFFIX", "KafkaTransport", "group_id_for", "partition_for_key"]

log = logging.getLogger("transports.kafka")

_OPTIONS = (
    "client_id",
    "acks",
    "compression",
    "linger_ms",
    "max_batch_size",
    "enable_idempotence",
    "request_timeout_ms",
    "sasl_mechanism",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_keyfile_password",
    "partitions",
    "replicas",
    "max_message_size",
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "rebalance_timeout_ms",
    "max_poll_interval_ms",
    "metadata_max_age_ms",
    "fetch_max_wait_ms",
    "commit_interval_ms",
    "isolation_level",
)
_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")
#: metadata of an offset committed by ``declare`` (not by a consumer)
DECLARED = "anychannel:declared"
#: appended to the group name to make the Kafka group id of an ephemeral group
EPHEMERAL_SUFFIX = "~ephemeral"
#: the broker's default message.max.bytes is 1 MiB + 12; stay below it with room to spare
DEFAULT_MAX_MESSAGE_SIZE = 1_000_000
#: bytes a record batch adds around one record (batch header, varints, header names)
_OVERHEAD = 64 * 1024
#: bytes a record batch with one small record adds (header 61, record framing ~20)
_BATCH_OVERHEAD = 128
_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_UNKNOWN_TOPIC = 3
_TOPIC_EXISTS = 36


# ------------------------------------------------------------------------------ errors

_TABLE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], type[ChannelsError]], ...] = (
    # TimeoutError: our own bounds (asyncio.wait_for) around aiokafka calls
    ((kerr.KafkaTimeoutError, kerr.RequestTimedOutError, TimeoutError), Timeout),
    (
        (
            kerr.KafkaConnectionError,
            kerr.NodeNotReadyError,
            kerr.NoBrokersAvailable,
            kerr.KafkaUnavailableError,
            kerr.LeaderNotAvailableError,
            kerr.NotLeaderForPartitionError,
            kerr.BrokerNotAvailableError,
            kerr.GroupCoordinatorNotAvailableError,
            kerr.NotCoordinatorForGroupError,
            kerr.NotEnoughReplicasError,
            kerr.NotEnoughReplicasAfterAppendError,
            kerr.ProducerClosed,
        ),
        ConnectionFailed,
    ),
    ((kerr.ConsumerStoppedError,), ClosedError),
    ((kerr.AuthenticationFailedError, kerr.SaslAuthenticationFailed), AuthenticationFailed),
    (
        (
            kerr.TopicAuthorizationFailedError,
            kerr.GroupAuthorizationFailedError,
            kerr.ClusterAuthorizationFailedError,
            kerr.AuthenticationMethodNotSupported,
            kerr.UnsupportedSaslMechanismError,
            kerr.InvalidTopicError,
            kerr.InvalidPartitionsError,
            kerr.InvalidReplicationFactorError,
            kerr.InvalidConfigurationError,
            kerr.PolicyViolationError,
            kerr.UnsupportedCodecError,
            kerr.KafkaConfigurationError,
            kerr.InvalidGroupIdError,
        ),
        ConfigurationError,
    ),
    ((kerr.KafkaError,), ChannelsError),
)


_SPECIFIC = tuple(t for types, _ in _TABLE[:-1] for t in (types if isinstance(types, tuple) else (types,)))


#: Answers a group request gets while its coordinator is being chosen or is loading.
_COORDINATOR_MOVING = (
    kerr.GroupCoordinatorNotAvailableError,
    kerr.NotCoordinatorForGroupError,
    kerr.GroupLoadInProgressError,
)

_TOO_LARGE = (kerr.MessageSizeTooLargeError, kerr.RecordTooLargeError, kerr.RecordListTooLargeError)


@contextlib.contextmanager
def map_errors(url: BrokerURL, what: str = "", *, topic: str = "", size: int = 0, limit: int = 0) -> Iterator[None]:
    """The one place where aiokafka's exceptions become ``channels.errors``.

    Size errors become ``MessageTooLarge`` (with ``size`` and ``limit``), an unknown topic
    ``TopicNotFound`` (``topic``), any other retriable broker error ``ConnectionFailed``;
    the rest goes by ``_TABLE``.
    """
    with translate_errors(_TABLE, url, what):
        try:
            yield
        except _TOO_LARGE as exc:
            raise MessageTooLarge(size, limit, topic=topic, broker=url) from exc
        except kerr.UnknownTopicOrPartitionError as exc:
            raise TopicNotFound(topic or "?", broker=url) from exc
        except kerr.KafkaError as exc:
            if getattr(exc, "retriable", False) and not isinstance(exc, _SPECIFIC):
                text = f"{what}: {exc}" if what else str(exc) or type(exc).__name__
                raise ConnectionFailed(text, broker=url) from exc
            raise


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``."""
    from aiokafka.partitioner import murmur2

    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


def group_id_for(spec: SubscriptionSpec) -> str:
    """The Kafka group id a subscription joins (``<group>~ephemeral`` for an ephemeral one)."""
    return spec.group + EPHEMERAL_SUFFIX if spec.ephemeral else spec.group


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class _Config:
    client_id: str
    bootstrap: list[str]
    security_protocol: str
    ssl_context: ssl.SSLContext | None
    #: holds the password: kept out of repr
    sasl: dict[str, Any] = field(repr=False)
    acks: int | str
    compression: str | None
    linger_ms: int
    max_batch_size: int
    enable_idempotence: bool
    request_timeout_ms: int
    partitions: int
    replicas: int
    max_message_size: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    rebalance_timeout_ms: int
    max_poll_interval_ms: int
    metadata_max_age_ms: int
    fetch_max_wait_ms: int
    commit_interval_ms: int
    isolation_level: str

    def common(self) -> dict[str, Any]:
        """Connection settings every aiokafka client takes."""
        return {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "ssl_context": self.ssl_context,
            "request_timeout_ms": self.request_timeout_ms,
            **self.sasl,
        }


def _parse_config(url: BrokerURL) -> _Config:
    url.check_options(_OPTIONS)
    if not url.hosts:
        raise ConfigurationError("a kafka:// URL needs at least one host", broker=url)
    bootstrap = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in url.host_list(9092)]
    tls = url.scheme == "kafka+ssl"

    mechanism = url.option("sasl_mechanism", "").upper()
    sasl: dict[str, Any] = {}
    if url.username is not None and not mechanism:
        mechanism = "PLAIN"
    if mechanism:
        if mechanism not in _SASL:
            raise ConfigurationError(f"sasl_mechanism must be one of {', '.join(_SASL)}, not {mechanism!r}", broker=url)
        if url.username is None or url.password is None:
            raise ConfigurationError(f"sasl_mechanism={mechanism} needs user:password in the URL", broker=url)
        sasl = {
            "sasl_mechanism": mechanism,
            "sasl_plain_username": url.username,
            "sasl_plain_password": url.password,
        }
        security = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    else:
        security = "SSL" if tls else "PLAINTEXT"

    ssl_files = {name: url.option(name, "") for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")}
    key_password = url.option("ssl_keyfile_password", "")
    context: ssl.SSLContext | None = None
    if tls:
        from aiokafka.helpers import create_ssl_context

        try:
            context = create_ssl_context(
                cafile=ssl_files["ssl_cafile"] or None,
                certfile=ssl_files["ssl_certfile"] or None,
                keyfile=ssl_files["ssl_keyfile"] or None,
                password=key_password or None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the TLS files: {exc.strerror or exc}", broker=url) from None
    elif any(ssl_files.values()):
        raise ConfigurationError("ssl_* options need the kafka+ssl:// scheme", broker=url)

    acks_text = url.option("acks", "all").lower()
    acks: int | str
    if acks_text in ("all", "-1"):
        acks = "all"
    elif acks_text in ("0", "1"):
        acks = int(acks_text)
    else:
        raise ConfigurationError(f"acks must be 0, 1 or all, not {acks_text!r}", broker=url)

    compression = url.option("compression", "none").lower()
    if compression not in _COMPRESSION:
        raise ConfigurationError(
            f"compression must be one of {', '.join(_COMPRESSION)}, not {compression!r}", broker=url
        )
    if compression in ("snappy", "lz4", "zstd"):
        from aiokafka import codec

        available = {"snappy": codec.has_snappy, "lz4": codec.has_lz4, "zstd": codec.has_zstd}
        if not available[compression]():
            raise ConfigurationError(
                f"compression={compression} needs the cramjam package: pip install cramjam",
                broker=url,
            )

    idempotent = url.option("enable_idempotence", False)
    if idempotent and acks != "all":
        raise ConfigurationError("enable_idempotence=true needs acks=all", broker=url)

    isolation = url.option("isolation_level", "read_uncommitted")
    if isolation not in ("read_uncommitted", "read_committed"):
        raise ConfigurationError(f"invalid isolation_level {isolation!r}", broker=url)

    def positive(name: str, default: int, minimum: int = 1) -> int:
        value = url.option(name, default)
        if value < minimum:
            raise ConfigurationError(f"URL option {name} must be >= {minimum}", broker=url)
        return value

    return _Config(
        client_id=url.option("client_id", "anychannel"),
        bootstrap=bootstrap,
        security_protocol=security,
        ssl_context=context,
        sasl=sasl,
        acks=acks,
        compression=None if compression == "none" else compression,
        linger_ms=positive("linger_ms", 0, 0),
        max_batch_size=positive("max_batch_size", 16384),
        enable_idempotence=idempotent,
        request_timeout_ms=positive("request_timeout_ms", 40000),
        partitions=positive("partitions", 4),
        replicas=positive("replicas", 1),
        max_message_size=positive("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
        session_timeout_ms=positive("session_timeout_ms", 6000),
        heartbeat_interval_ms=positive("heartbeat_interval_ms", 1000),
        rebalance_timeout_ms=positive("rebalance_timeout_ms", 10000),
        max_poll_interval_ms=positive("max_poll_interval_ms", 300000),
        metadata_max_age_ms=positive("metadata_max_age_ms", 5000),
        fetch_max_wait_ms=positive("fetch_max_wait_ms", 100, 0),
        commit_interval_ms=positive("commit_interval_ms", 1000),
        isolation_level=isolation,
    )


class _BusyGroup(Exception):
    """A commit for a group without a member was refused: the group has live members."""


class _NoKey:
    """Stands in for a missing key so aiokafka accepts a record with neither key nor value."""


_NO_KEY = _NoKey()


def _serialize_key(key: Any) -> bytes | None:
    if key is _NO_KEY:
        return None
    data: bytes = key
    return data


async def _stop_consumer(consumer: AIOKafkaConsumer, timeout: float) -> bool:
    """Stop ``consumer`` (leaving its group), bounded in time; False if that went wrong.

    aiokafka 0.14's fetcher awaits the fetch tasks it has just cancelled when it closes, so
    ``stop()`` can raise ``CancelledError`` although nobody cancelled us (a fetch was waiting
    out a retry backoff; aiokafka#647). That is not our cancellation: it is swallowed and the consumer's
    connections, which ``stop()`` then did not reach, are closed.
    """
    try:
        await asyncio.wait_for(consumer.stop(), timeout)
        return True
    except (TimeoutError, kerr.KafkaError) as exc:
        log.debug("stopping a consumer: %r", exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("aiokafka raised CancelledError while stopping a consumer; ignored")
        client = getattr(consumer, "_client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout)
    return False


# ------------------------------------------------------------------------------ subscription


@dataclass
class _PartitionState:
    """What one member handed out of one partition since it was assigned."""

    generation: int
    delivered: deque[int] = field(default_factory=deque)
    pending: set[int] = field(default_factory=set)
    acked: set[int] = field(default_factory=set)
    #: next offset to commit (after the last contiguous acked one), None until known
    commit: int | None = None
    committed: int | None = None
    #: the highest offset handed out; lower ones handed out again are redeliveries
    high: int = -1
    #: the starting position was committed (see ``_commit_baselines``)
    baselined: bool = False

    def deliver(self, offset: int) -> None:
        self.delivered.append(offset)
        self.pending.add(offset)

    def ack(self, offset: int) -> bool:
        if offset not in self.pending or offset in self.acked:
            return False
        self.acked.add(offset)
        while self.delivered and self.delivered[0] in self.acked:
            done = self.delivered.popleft()
            self.pending.discard(done)
            self.acked.discard(done)
            self.commit = done + 1
        return True

    def rewind(self, offset: int) -> int:
        """Forget everything from ``offset`` on; return how many were unacked."""
        unacked = 0
        while self.delivered and self.delivered[-1] >= offset:
            gone = self.delivered.pop()
            self.pending.discard(gone)
            if gone in self.acked:
                self.acked.discard(gone)
            else:
                unacked += 1
        return unacked

    @property
    def unacked(self) -> int:
        return len(self.delivered) - len(self.acked)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: _KafkaSubscription) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sub._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sub._on_assigned(set(assigned))


class _KafkaSubscription(Subscription):
    """One member of a consumer group (one AIOKafkaConsumer)."""

    def __init__(self, transport: KafkaTransport, spec: SubscriptionSpec) -> None:
        self.transport = transport
        self.url = transport.url
        self.spec = spec
        self.config = transport.config
        self.prefetch = max(1, spec.prefetch)
        self.pattern = re.compile(f"(?:{spec.pattern})\\Z") if spec.pattern is not None else None
        self.consumer: AIOKafkaConsumer | None = None
        self.states: dict[TopicPartition, _PartitionState] = {}
        self.inflight = 0
        self.room = asyncio.Event()
        self.paused = False
        self.closed = False
        self.generation = 0
        self.commit_lock = asyncio.Lock()
        self.commit_task: asyncio.Task[None] | None = None
        self.baseline_needed = asyncio.Event()
        #: set once the rebalance listener has run for an assignment
        self.assigned = asyncio.Event()
        self.commit_timeout = max(5.0, self.config.request_timeout_ms / 1000 / 4)
        #: an ephemeral member commits nothing (see the module docstring)
        self.ephemeral = spec.ephemeral
        #: the Kafka group id (``<group>~ephemeral`` for an ephemeral group)
        self.group_id = group_id_for(spec)
        #: the consumer's ``auto_offset_reset``
        self.reset = "latest"
        #: ephemeral: where this member stood on the partitions it gave up in the last
        #: rebalance (first unacked offset); used when it gets them back, then forgotten
        self.resume: dict[TopicPartition, int] = {}
        #: ephemeral: topics whose partitions, newly assigned, continue at the end
        self.known_topics: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        spec = self.spec
        names = [t.name for t in spec.topics]
        reset = "earliest" if spec.from_beginning else "latest"
        existing: list[str] = []
        if self.pattern is not None:
            # Topics matching now start at their end; topics that appear later start at
            # their beginning: every message in them came after this subscription.
            reset = "earliest"
            if not spec.from_beginning:
                existing = [
                    t
                    for t in await self.transport._list_topics()
                    if self.pattern.match(t) and not t.startswith("__")  # Kafka's own topics
                ]
                if self.ephemeral:
                    # Nothing is committed: the rebalance listener seeks these to the end.
                    self.known_topics.update(existing)
                elif existing:
                    await self.transport._init_group_offsets(existing, spec.group)
        self.reset = reset
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=reset,
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,
            max_poll_interval_ms=self.config.max_poll_interval_ms,
            metadata_max_age_ms=self.config.metadata_max_age_ms,
            fetch_max_wait_ms=self.config.fetch_max_wait_ms,
            isolation_level=self.config.isolation_level,
            **self.config.common(),
        )
        listener = _Listener(self)
        if self.pattern is not None:
            consumer.subscribe(pattern=self.pattern.pattern, listener=listener)
        else:
            consumer.subscribe(topics=names, listener=listener)
        self.consumer = consumer
        try:
            join = (self.config.request_timeout_ms + self.config.rebalance_timeout_ms) / 1000
            with map_errors(self.url, f"joining group {self.group_id!r}"):
                try:
                    await asyncio.wait_for(consumer.start(), join)
                except TimeoutError:
                    raise Timeout(f"joining group {self.group_id!r} took over {join:.0f}s") from None
            if self.pattern is None or (self.ephemeral and existing):
                # start() returns once partitions are assigned, possibly before our
                # listener ran for them; wait for it so the baselines below see them.
                # (An ephemeral pattern member has no commit to stand for it: it waits
                # for the topics that match now, so that they are positioned too.)
                await self._await_assignment(set(existing))
                # Resolves every start position (committed for a durable group): a
                # message published after subscribe returns reaches the group.
                await self._commit_baselines()
        except BaseException:
            self.closed = True
            await _stop_consumer(consumer, self.commit_timeout)
            raise
        self.commit_task = asyncio.create_task(self._commit_loop(), name=f"kafka-commit-{self.group_id}")

    async def _await_assignment(self, topics: set[str]) -> None:
        """Wait (bounded) until the listener ran for an assignment of a subscription that
        covers ``topics`` (for a pattern: the topics that match when subscribing)."""
        consumer = self.consumer
        wait = (self.config.rebalance_timeout_ms + self.config.session_timeout_ms) / 1000
        deadline = asyncio.get_running_loop().time() + wait
        while consumer is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self.assigned.wait(), remaining)
            except TimeoutError:
                raise Timeout(
                    f"group {self.group_id!r} got no assignment within {wait:.0f}s",
                    broker=self.url,
                ) from None
            if topics <= set(consumer.subscription()):
                return
            self.assigned.clear()  # an assignment of an older topic set: wait for the next

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.room.set()
        if self.commit_task is not None:
            self.commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.commit_task
        consumer = self.consumer
        left = False
        if consumer is not None:
            try:
                await self._commit(set(consumer.assignment()))
            except Exception as exc:  # logged: the unacked rest comes back anyway
                log.warning("final commit for group %s failed: %s", self.group_id, exc)
            left = await _stop_consumer(consumer, self.commit_timeout * 2)
            if not left:
                log.warning("leaving group %s did not finish cleanly", self.group_id)
        self.states.clear()
        self.resume.clear()
        self.inflight = 0
        self.transport._subs.discard(self)
        if self.ephemeral and left and not any(s.group_id == self.group_id for s in self.transport._subs):
            # The broker drops the empty group (it has no offsets) at its next clean-up
            # anyway; the last member deletes it now so that nothing shows meanwhile.
            await self.transport._delete_empty_group(self.group_id)

    # -- receiving ----------------------------------------------------------------------

    async def receive(self, max_messages: int) -> list[Message]:
        poll_ms = max(100, self.config.fetch_max_wait_ms * 2)
        while True:
            if self.closed or self.consumer is None:
                raise ClosedError("subscription is closed", broker=self.url)
            consumer = self.consumer
            room = min(max_messages, self.prefetch - self.inflight)
            if room <= 0:
                self._pause()
                self.room.clear()
                await self.room.wait()
                continue
            self._resume()
            with map_errors(self.url, "receiving"):
                records = await consumer.getmany(timeout_ms=poll_ms, max_records=room)
            if records:
                # No await from here on: whatever getmany returned is handed out.
                return self._deliver(records)

    def _deliver(self, records: Mapping[TopicPartition, list[Any]]) -> list[Message]:
        out: list[Message] = []
        for tp, batch in records.items():
            state = self.states.get(tp)
            if state is None:
                state = self.states[tp] = self._new_state()
            for record in batch:
                offset = record.offset
                state.deliver(offset)
                headers = {name: (value if value is not None else b"") for name, value in record.headers or ()}
                out.append(
                    Message(
                        record.topic,
                        record.value,
                        record.key,
                        headers,
                        record.partition,
                        offset,
                        record.timestamp / 1000 if record.timestamp is not None and record.timestamp >= 0 else None,
                        (tp, offset, state.generation),
                        offset <= state.high,
                    )
                )
                state.high = max(state.high, offset)
        self.inflight += len(out)
        return out

    def _new_state(self) -> _PartitionState:
        self.generation += 1
        return _PartitionState(self.generation)

    def _state_for(self, message: Message) -> tuple[TopicPartition, int, _PartitionState] | None:
        token = message.token
        if not (isinstance(token, tuple) and len(token) == 3 and isinstance(token[0], TopicPartition)):
            return None
        tp, offset, generation = token
        state = self.states.get(tp)
        if state is None or state.generation != generation:
            return None  # revoked since: the new owner gets it again
        return tp, offset, state

    def _pause(self) -> None:
        consumer = self.consumer
        if consumer is not None:
            assigned = consumer.assignment()
            if assigned:
                consumer.pause(*assigned)
            self.paused = True

    def _resume(self) -> None:
        if self.paused and self.consumer is not None:
            paused = self.consumer.paused()
            if paused:
                self.consumer.resume(*paused)
            self.paused = False

    # -- settling -----------------------------------------------------------------------

    async def ack(self, messages: Sequence[Message]) -> None:
        freed = 0
        for message in messages:
            found = self._state_for(message)
            if found is not None and found[2].ack(found[1]):
                freed += 1
        if freed:
            self.inflight -= freed
            self.room.set()

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        if not requeue:
            await self.ack(messages)
            return
        rewind: dict[TopicPartition, int] = {}
        for message in messages:
            found = self._state_for(message)
            if found is None:
                continue
            tp, offset, state = found
            if offset in state.pending and offset not in state.acked:
                rewind[tp] = min(offset, rewind.get(tp, offset))
        consumer = self.consumer
        if consumer is None or not rewind:
            return
        assigned = consumer.assignment()
        for tp, offset in rewind.items():
            state = self.states[tp]
            self.inflight -= state.rewind(offset)
            if tp in assigned:
                # Drops what aiokafka buffered past the offset: order within the partition holds.
                consumer.seek(tp, offset)
        self.room.set()

    # -- committing ---------------------------------------------------------------------

    def _offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        out = {}
        for tp in tps:
            state = self.states.get(tp)
            if state is None or state.commit is None or state.commit == state.committed:
                continue
            out[tp] = OffsetAndMetadata(state.commit, "")
        return out

    async def _commit(self, tps: set[TopicPartition], *, revoking: bool = False) -> None:
        """Commit the acked prefix of ``tps`` (only partitions this member still owns).

        ``revoking``: called from the revoke listener, where the partitions still belong
        to this member's (old) generation even if aiokafka already swapped its
        subscription (a pattern that matched a new topic).
        """
        consumer = self.consumer
        if consumer is None or self.ephemeral:
            return  # an ephemeral group keeps no offsets on the broker
        async with self.commit_lock:
            assigned = consumer.assignment()
            offsets = self._offsets(tp for tp in tps if revoking or tp in assigned)
            if not offsets:
                return
            if all(tp in assigned for tp in offsets):
                await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout)
            else:
                coordinator = getattr(consumer, "_coordinator", None)
                if coordinator is None:
                    return
                await asyncio.wait_for(coordinator.commit_offsets(None, offsets), self.commit_timeout)
            for tp, meta in offsets.items():
                state = self.states.get(tp)
                if state is not None:
                    state.committed = meta.offset
            log.debug("group %s committed %s", self.group_id, offsets)

    async def _commit_baselines(self) -> None:
        """Commit the starting position of newly assigned partitions nothing was taken from.

        aiokafka resolves ``latest``/``earliest`` lazily; committing the resolved position
        fixes where the group stands, whichever member owns the partition later.
        """
        consumer = self.consumer
        if consumer is None:
            return
        self.baseline_needed.clear()
        todo = [tp for tp, st in self.states.items() if not st.baselined]
        for tp in todo:
            state = self.states.get(tp)
            if state is None or tp not in consumer.assignment():
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), self.commit_timeout)
            except (TimeoutError, kerr.KafkaError) as exc:
                # Revoked meanwhile, or the broker is away: the next round tries again.
                log.debug("no start position for %s yet: %r", tp, exc)
                continue
            if self.states.get(tp) is not state:
                continue
            if state.commit is None and not state.delivered:
                state.commit = position
            state.baselined = True
        await self._commit(set(todo))

    async def _commit_loop(self) -> None:
        interval = self.config.commit_interval_ms / 1000
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.baseline_needed.wait(), interval)
            consumer = self.consumer
            if consumer is None or self.closed:
                return
            try:
                if self.baseline_needed.is_set() or any(not st.baselined for st in self.states.values()):
                    await self._commit_baselines()
                await self._commit(set(consumer.assignment()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A rebalance or a restarting broker: the acks stay recorded, try again.
                log.warning("offset commit for group %s failed (will retry): %r", self.group_id, exc)

    # -- rebalance callbacks (run inside aiokafka's coordinator task) --------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._commit(revoked, revoking=True)
        except Exception as exc:
            log.warning("commit on revoke for group %s failed: %r", self.group_id, exc)
        for tp in revoked:
            state = self.states.pop(tp, None)
            if state is not None:
                self.inflight -= state.unacked
                if self.ephemeral:
                    # What a commit would have kept: the first offset not handled yet.
                    start = state.delivered[0] if state.delivered else state.commit
                    if start is not None:
                        self.resume[tp] = start
        self.inflight = max(0, self.inflight)
        self.room.set()

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in list(self.states):
            if tp not in assigned:
                state = self.states.pop(tp)
                self.inflight = max(0, self.inflight - state.unacked)
        if self.ephemeral:
            await self._position_ephemeral(assigned)
        elif self.spec.from_beginning and assigned:
            await self._replay_declared(assigned)
        elif assigned:
            await self._apply_pending_starts(assigned)
        for tp in assigned:
            if tp not in self.states:
                self.states[tp] = self._new_state()
        if self.paused and self.consumer is not None:
            self.consumer.pause(*assigned)
        self.baseline_needed.set()
        self.assigned.set()
        self.room.set()

    async def _position_ephemeral(self, assigned: set[TopicPartition]) -> None:
        """Where an ephemeral member starts on ``assigned`` (there are no committed offsets).

        A partition it gave up in the rebalance just before goes on where it stood; a
        partition of a topic it already knew (it held some of it, or it matched the pattern
        when subscribing) continues at the end; anything else follows ``auto_offset_reset``
        (the end; the beginning with ``from_beginning`` or for a topic created later).
        """
        consumer = self.consumer
        resume, self.resume = self.resume, {}
        if consumer is None:
            return
        to_end: list[TopicPartition] = []
        for tp in assigned:
            if tp in resume:
                consumer.seek(tp, resume[tp])
            elif self.reset == "earliest" and tp.topic in self.known_topics:
                to_end.append(tp)
        self.known_topics.update(tp.topic for tp in assigned)
        if to_end:
            try:
                await asyncio.wait_for(consumer.seek_to_end(*to_end), self.commit_timeout)
            except Exception as exc:
                log.warning("could not move group %s to the end of %s: %r", self.group_id, to_end, exc)

    async def _apply_pending_starts(self, assigned: set[TopicPartition]) -> None:
        """Seek to the start offsets declare remembered for a busy group (see there)."""
        consumer = self.consumer
        starts = self.transport._pending_starts.get(self.spec.group)
        if consumer is None or not starts:
            return
        wanted = [tp for tp in assigned if tp in starts]
        if not wanted:
            return
        try:
            committed = await self.transport._committed(self.spec.group, wanted)
            for tp in wanted:
                if tp not in committed:
                    consumer.seek(tp, starts[tp])
                # Committed now, or about to be (the start position is committed next).
                del starts[tp]
        except Exception as exc:
            log.warning("could not apply start offsets of group %s: %r", self.spec.group, exc)

    async def _replay_declared(self, assigned: set[TopicPartition]) -> None:
        """With ``from_beginning``, offsets that only ``declare`` committed mean "new group"."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            committed = await self.transport._committed(self.spec.group, assigned)
            fresh = [tp for tp in assigned if tp in committed and committed[tp].metadata == DECLARED]
            if fresh:
                beginnings = await consumer.beginning_offsets(fresh)
                for tp in fresh:
                    consumer.seek(tp, beginnings[tp])
        except Exception as exc:
            log.warning("could not rewind declared offsets of group %s: %r", self.spec.group, exc)


# ------------------------------------------------------------------------------ transport


class KafkaTransport(Transport):
    """Kafka through aiokafka; see the module docstring for options and semantics."""

    schemes = ("kafka", "kafka+ssl")

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        self.config = _parse_config(url)
        self._caps = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout_groups=True,
            per_key_ordering=True,
            ack=True,
            redelivery_on_nack=True,
            replay_from_start=True,
            native_headers=True,
            native_keys=True,
            patterns=True,
            explicit_partitions=True,
            topic_check=True,
            max_message_size=self.config.max_message_size,
        )
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._subs: set[_KafkaSubscription] = set()
        self._partitions: dict[str, int] = {}
        #: group -> partition -> start offset that declare could not commit (busy group)
        self._pending_starts: dict[str, dict[TopicPartition, int]] = {}

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def client_version(self) -> str:
        return f"aiokafka {aiokafka.__version__}"

    def validate_topic_name(self, name: str) -> None:
        if name in (".", ".."):
            raise ConfigurationError(f"Kafka refuses the topic names '.' and '..': {name!r}")
        if not _LEGAL_NAME.match(name):
            raise ConfigurationError(f"Kafka topic names use only ASCII letters, digits, '.', '_' and '-': {name!r}")

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._producer is not None:
            return
        cfg = self.config
        producer = AIOKafkaProducer(
            acks=cfg.acks,
            compression_type=cfg.compression,
            linger_ms=cfg.linger_ms,
            max_batch_size=cfg.max_batch_size,
            max_request_size=max(1024 * 1024, cfg.max_message_size + _OVERHEAD),
            enable_idempotence=cfg.enable_idempotence,
            key_serializer=_serialize_key,
            metadata_max_age_ms=cfg.metadata_max_age_ms,
            **cfg.common(),
        )
        admin = AIOKafkaAdminClient(**cfg.common())
        try:
            with map_errors(self.url, "connecting"):
                try:
                    await producer.start()
                    await admin.start()
                except kerr.KafkaConnectionError:
                    await self._diagnose_bootstrap()
                    raise
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        self._producer, self._admin = producer, admin

    async def _diagnose_bootstrap(self) -> None:
        """Say why bootstrapping failed, when the cause is the login or the certificate.

        aiokafka only logs the cause and raises "Unable to bootstrap"; one more connection
        to the first bootstrap server, made only after that failure, names it.
        """
        cfg = self.config
        if cfg.security_protocol == "PLAINTEXT":
            return  # no login, no certificate: "unreachable" is the whole story
        from aiokafka.conn import create_conn

        host, _, port = cfg.bootstrap[0].rpartition(":")
        options = {k: v for k, v in cfg.common().items() if k != "bootstrap_servers"}
        try:
            conn = await asyncio.wait_for(create_conn(host.strip("[]"), int(port), **options), 10)
        except (kerr.SaslAuthenticationFailed, kerr.AuthenticationFailedError) as exc:
            mechanism = cfg.sasl.get("sasl_mechanism", "SASL")
            raise AuthenticationFailed(
                f"the broker refused the {mechanism} login of user {cfg.sasl.get('sasl_plain_username')!r}",
                broker=self.url,
            ) from exc
        except (kerr.IllegalSaslStateError, kerr.UnsupportedSaslMechanismError) as exc:
            raise ConfigurationError(
                f"the listener does not take a {cfg.sasl.get('sasl_mechanism', 'SASL')} login ({exc}): "
                "leave user:password out of the URL, or use the broker's SASL listener",
                broker=self.url,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(
                f"the broker's TLS certificate is not trusted ({exc.verify_message}); "
                "set ssl_cafile to the CA that signed it",
                broker=self.url,
            ) from exc
        except Exception:
            return  # unreachable, or something else: the bootstrap error stands
        conn.close()

    async def close(self) -> None:
        for sub in list(self._subs):
            try:
                await sub.close()
            except Exception as exc:
                log.warning("closing a subscription failed: %r", exc)
        self._subs.clear()
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            with contextlib.suppress(kerr.KafkaError):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(kerr.KafkaError):
                await admin.close()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise ClosedError("kafka transport is not connected", broker=self.url)
        return self._producer

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise ClosedError("kafka transport is not connected", broker=self.url)
        return self._admin

    def native(self) -> Any:
        """The AIOKafkaProducer (consumers: ``subscription.consumer``)."""
        return self.producer

    # -- metadata helpers ---------------------------------------------------------------

    async def _describe(self, name: str) -> int | None:
        """Partition count of topic ``name``, None if it does not exist."""
        with map_errors(self.url, f"describing topic {name!r}", topic=name):
            topics = await self.admin.describe_topics([name])
        for entry in topics:
            if entry["topic"] != name:
                continue
            if entry["error_code"] == _UNKNOWN_TOPIC:
                return None
            if entry["error_code"]:
                with map_errors(self.url, f"describing topic {name!r}", topic=name):
                    raise kerr.for_code(entry["error_code"])(name)
            count = len(entry["partitions"])
            self._partitions[name] = count
            return count
        return None

    async def _list_topics(self) -> list[str]:
        with map_errors(self.url, "listing topics"):
            return list(await self.admin.list_topics())

    async def _committed(self, group: str, tps: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        wanted = list(tps)
        # A fresh cluster creates its offsets topic on the first group request and answers
        # "coordinator not available" until it is ready: that is waited out, within a bound.
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout_ms / 1000
        delay = 0.1
        with map_errors(self.url, f"reading offsets of group {group!r}"):
            while True:
                try:
                    found = await self.admin.list_consumer_group_offsets(group, partitions=wanted)
                    break
                except _COORDINATOR_MOVING:
                    if asyncio.get_running_loop().time() + delay > deadline:
                        raise
                    log.debug("group %s: coordinator not ready; asking again in %.1fs", group, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        return {tp: meta for tp, meta in found.items() if meta.offset >= 0}

    async def _init_group_offsets(self, topics: Sequence[str], group: str) -> None:
        """Commit the end offsets for ``group`` where it has no offsets (see declare)."""
        tps: list[TopicPartition] = []
        for name in topics:
            count = self._partitions.get(name) or await self._describe(name)
            if count is None:
                raise TopicNotFound(name, broker=self.url)
            tps.extend(TopicPartition(name, p) for p in range(count))
        consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **self.config.common())
        try:
            with map_errors(self.url, f"starting group {group!r}"):
                await asyncio.wait_for(consumer.start(), self.config.request_timeout_ms / 1000)
                consumer.assign(tps)
                # End offsets first, then the check: a racing declare can only start earlier.
                ends = await consumer.end_offsets(tps)
            committed = await self._committed(group, tps)
            missing = {tp: OffsetAndMetadata(ends[tp], DECLARED) for tp in tps if tp not in committed}
            if not missing:
                return
            try:
                if await self._group_busy(group):
                    raise _BusyGroup
                with map_errors(self.url, f"setting start offsets of group {group!r}"):
                    try:
                        await asyncio.wait_for(consumer.commit(missing), self.config.request_timeout_ms / 1000)
                    except kerr.CommitFailedError as exc:
                        raise _BusyGroup from exc
                log.debug("group %s starts at %s", group, missing)
            except _BusyGroup as exc:
                # The group has live members (on other topics, or on this one) and only
                # they may commit. Remember where the group should start: a member of ours
                # that gets one of these partitions without a committed offset seeks there.
                log.debug("group %s is active; start offsets kept in memory (%r)", group, exc)
                starts = self._pending_starts.setdefault(group, {})
                for tp, meta in missing.items():
                    starts.setdefault(tp, meta.offset)
        finally:
            await _stop_consumer(consumer, 10)

    async def _group_busy(self, group: str) -> bool:
        """True when ``group`` has live members (only they may commit its offsets).

        Asked first so that the commit refused for a busy group (which aiokafka logs as an
        error) is the exception, not the rule.
        """
        try:
            responses = await asyncio.wait_for(self.admin.describe_consumer_groups([group]), 10)
            state = responses[0].groups[0][2]
        except Exception as exc:
            log.debug("cannot describe group %s: %r", group, exc)
            return False
        return state not in ("Empty", "Dead")

    async def _delete_empty_group(self, group: str, timeout: float = 10.0) -> bool:
        """Delete ``group`` if it has no members (``DeleteGroups``); True if it is gone.

        Best effort, bounded in time, never raises: the broker refuses a group that still
        has members (``NON_EMPTY_GROUP``), and an empty group without offsets goes at the
        broker's next offsets clean-up anyway.
        """
        from aiokafka.protocol.admin import DeleteGroupsRequest

        admin = self._admin
        if admin is None:
            return False

        async def delete() -> int:
            coordinator = await admin.find_coordinator(group)
            response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
            codes = [code for name, code in response.results if name == group]
            return int(codes[0]) if codes else -1

        try:
            code = await asyncio.wait_for(delete(), timeout)
        except Exception as exc:
            log.debug("could not delete group %s: %r", group, exc)
            return False
        if code in (0, kerr.GroupIdNotFound.errno):
            log.debug("deleted empty group %s", group)
            return True
        log.debug("group %s not deleted: error code %d", group, code)
        return False

    # -- declare / publish / subscribe ---------------------------------------------------

    async def declare(self, topic: TopicSpec, group: str | None = None) -> None:
        if topic.internal:
            await self._create(topic)
        elif await self._describe(topic.name) is None:
            raise TopicNotFound(topic.name, broker=self.url)
        if group is not None:
            await self._init_group_offsets([topic.name], group)

    async def _create(self, topic: TopicSpec) -> None:
        wanted = topic.partitions or self.config.partitions
        configs: dict[str, str] = {}
        if topic.retention is not None:
            configs["retention.ms"] = str(int(topic.retention * 1000))
        if topic.compacting is not None:
            configs["cleanup.policy"] = "compact" if topic.compacting else "delete"
        if self.config.max_message_size > DEFAULT_MAX_MESSAGE_SIZE:
            configs["max.message.bytes"] = str(self.config.max_message_size + _OVERHEAD)
        configs.update({str(k): str(v) for k, v in topic.config.items()})
        new = NewTopic(topic.name, wanted, topic.replicas or self.config.replicas, topic_configs=configs)
        with map_errors(self.url, f"creating topic {topic.name!r}", topic=topic.name):
            response = await self.admin.create_topics([new])
        for name, code, message in response.topic_errors:
            if code == 0:
                log.info("created topic %s (%d partitions)", name, wanted)
                await self._await_visible(name)
                self._partitions[name] = wanted
            elif code == _TOPIC_EXISTS:
                await self._check_existing(topic, wanted)
            else:
                error = kerr.for_code(code)
                with map_errors(self.url, f"creating topic {name!r}", topic=name):
                    raise error(message or name)

    async def _await_visible(self, name: str, limit: float = 10.0) -> None:
        """Wait (bounded) until a topic just created answers a describe, so that another
        process declaring it as a source right after our declare returns finds it."""
        deadline = time.monotonic() + limit
        while await self._describe(name) is None:
            if time.monotonic() > deadline:
                log.warning("topic %s created but not visible after %.0fs", name, limit)
                return
            await asyncio.sleep(0.05)  # Kafka offers no notification for this

    async def _check_existing(self, topic: TopicSpec, wanted: int) -> None:
        count = await self._describe(topic.name)
        if count is None:  # deleted in between
            raise TopicNotFound(topic.name, broker=self.url)
        if topic.partitions is not None and count < topic.partitions:
            raise ConfigurationError(
                f"topic {topic.name!r} exists with {count} partition(s), fewer than the "
                f"{topic.partitions} asked for; add partitions deliberately (it moves keys)",
                broker=self.url,
            )
        if topic.partitions is not None and count > topic.partitions:
            log.warning(
                "topic %s exists with %d partitions (asked for %d)",
                topic.name,
                count,
                topic.partitions,
            )

    async def _partition_count(self, name: str) -> int:
        producer = self.producer
        parts = producer.client.cluster.partitions_for_topic(name)
        if parts:
            return len(parts)
        count = self._partitions.get(name) or await self._describe(name)
        if count is None:
            raise TopicNotFound(name, broker=self.url)
        return count

    async def publish(self, messages: Sequence[Message]) -> list[RecordMetadata | BaseException]:
        """Queue every message with aiokafka, then wait for the broker's answers.

        A message that alone is wrong (a partition the topic lacks, a source topic that does
        not exist, too large for the topic) gets its own error in the result and is not
        sent; the others go out. An error of the connection fails the whole batch, so the
        portable layer can try it again.
        """
        producer = self.producer
        limit = self.config.max_message_size
        queued: list[asyncio.Future[Any] | BaseException] = []
        counts: dict[str, int] = {}  # partition counts, looked up once per topic and batch
        try:
            for message in messages:
                try:
                    queued.append(await self._queue(producer, message, limit, counts))
                except ChannelsError as exc:
                    if exc.retryable:
                        raise
                    queued.append(exc)
        except BaseException:
            # What was queued still goes out; collect it so no outcome is left unread.
            futures = [f for f in queued if isinstance(f, asyncio.Future)]
            if futures:
                await asyncio.gather(*futures, return_exceptions=True)
            raise
        results: list[RecordMetadata | BaseException] = []
        for message, item in zip(messages, queued, strict=True):
            if isinstance(item, BaseException):
                results.append(item)
                continue
            try:
                md = await item
            except Exception as outcome:
                if isinstance(outcome, _TOO_LARGE):
                    # The topic's own limit is below ours (a source topic): name it.
                    limit = await self._topic_limit(message.topic) or limit
                try:
                    with map_errors(
                        self.url, f"sending to {message.topic!r}", topic=message.topic, size=message.size, limit=limit
                    ):
                        raise outcome
                except ChannelsError as error:
                    if error.retryable:
                        raise
                    results.append(error)
                continue
            timestamp = md.timestamp / 1000 if md.timestamp is not None and md.timestamp >= 0 else None
            results.append(RecordMetadata(md.topic, md.partition, md.offset, timestamp))
        return results

    async def _queue(
        self, producer: Any, message: Message, limit: int, counts: dict[str, int]
    ) -> asyncio.Future[Any]:
        count = counts.get(message.topic)
        if count is None:
            count = counts[message.topic] = await self._partition_count(message.topic)
        if message.partition is not None and message.partition >= count:
            raise ConfigurationError(
                f"partition {message.partition} does not exist: topic {message.topic!r} has {count}",
                broker=self.url,
            )
        try:
            future: asyncio.Future[Any] = await producer.send(
                message.topic,
                message.value,
                message.key if message.key is not None else _NO_KEY,
                partition=message.partition,
                timestamp_ms=(int(message.timestamp * 1000) if message.timestamp is not None else None),
                headers=list(message.headers.items()),
            )
        except BaseException:
            # translated on the error path only (a context manager per message costs more
            # than the rest of this method)
            with map_errors(
                self.url, f"sending to {message.topic!r}", topic=message.topic, size=message.size, limit=limit
            ):
                raise
        return future

    async def _topic_limit(self, name: str) -> int | None:
        """The topic's ``max.message.bytes`` minus the batch around a record, if readable."""
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        resource = ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None})
        try:
            responses = await asyncio.wait_for(self.admin.describe_configs([resource]), 10)
            for _, _, _, _, entries in responses[0].resources:
                for entry in entries:
                    if entry[0] == "max.message.bytes":
                        return max(0, int(entry[1]) - _BATCH_OVERHEAD)
        except Exception as exc:  # only for the error message
            log.debug("cannot read max.message.bytes of %s: %r", name, exc)
        return None

    async def subscribe(self, spec: SubscriptionSpec) -> Subscription:
        self.producer  # noqa: B018 - raises ClosedError when not connected
        sub = _KafkaSubscription(self, spec)
        await sub.start()
        self._subs.add(sub)
        return sub
