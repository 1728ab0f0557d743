"""The driver contract.

A driver moves bytes between the portable layer (``channels``) and one client library.
It does not retry, does not decode values, does not batch sends on its own and does not
validate sizes or names beyond its broker's own rules: the portable layer does all that
once for every broker.

A driver implements :class:`Transport` and :class:`Subscription`:

* ``Transport(url)`` -- construct only; no I/O.
* ``capabilities`` -- what it can do (may depend on URL options).
* ``connect()`` / ``close()`` -- open and close the client; ``close`` must return in
  bounded time and release every subscription.
* ``declare(topic, group)`` -- for ``topic.internal``: create the topic (idempotently) and
  whatever keeps messages for ``group`` so that a message published after ``declare``
  reaches that group later. For a source topic: create nothing, raise ``TopicNotFound``
  if it is missing (when ``capabilities.topic_check``).
* ``publish(messages)`` -- send a batch in order and return one ``RecordMetadata`` each,
  only once the broker confirmed them (as far as the broker can confirm). A batch may mix
  topics. When one message alone fails (bad for its topic) and the others were confirmed,
  put its exception in its place; raise only when the batch as a whole failed (a dropped
  connection: the portable layer then tries the whole batch again).
* ``subscribe(spec)`` -- join ``spec.group`` on the topics (or the pattern) and return a
  :class:`Subscription`. When it returns, the membership is established: a message
  published afterwards reaches this group.
* ``native()`` -- the client library object, for what the portable API does not cover.

Every message handed to ``publish`` has bytes or None as value, bytes or None as key and
``dict[str, bytes]`` headers. When ``capabilities.uses_envelope`` is true, the portable layer
has already packed key and headers into the value with ``channels.envelope`` and the driver
sees key None and no headers. A value of None must arrive as None (drivers with native
headers mark it however their broker allows).

Errors: translate the client library's exceptions into ``channels.errors`` in one place
(see :func:`translate_errors`), ``raise ... from exc``, with the broker URL attached.
"""

from __future__ import annotations

import abc
import contextlib
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from channels.capabilities import Capabilities
from channels.errors import ChannelsError, ConfigurationError
from channels.events import Message, RecordMetadata
from channels.url import BrokerURL

__all__ = [
    "Subscription",
    "SubscriptionSpec",
    "TopicSpec",
    "Transport",
    "translate_errors",
]


@dataclass(frozen=True)
class TopicSpec:
    """What the portable layer knows of a topic when it declares it."""

    name: str
    internal: bool = False
    partitions: int | None = None
    replicas: int | None = None
    #: retention in seconds, None for the broker's default
    retention: float | None = None
    #: True: keep the last value per key (Kafka compaction)
    compacting: bool | None = None
    #: raw broker-specific settings, passed through
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionSpec:
    """What to subscribe to: one or more topics, or a pattern, as a member of ``group``."""

    topics: tuple[TopicSpec, ...]
    group: str
    #: a regular expression (Python ``re`` syntax) over topic names, or None
    pattern: str | None = None
    #: a new group starts at the oldest retained message instead of the newest
    from_beginning: bool = False
    #: most messages handed out and not yet acked (the backpressure window)
    prefetch: int = 100
    #: the group lives only while it has members: the broker keeps nothing for it (queue,
    #: session, channel, offsets) once the last member is gone, even after a crash, and a
    #: new member gets only what is sent from then on (``channels tail``, ``doctor``)
    ephemeral: bool = False


class Subscription(abc.ABC):
    """One member of a group, receiving messages."""

    @abc.abstractmethod
    async def receive(self, max_messages: int) -> list[Message]:
        """Wait for at least one message and return up to ``max_messages`` of them.

        Cancelling a pending ``receive`` must lose nothing: a message is either returned or
        stays with the broker/driver for a later call.
        """

    @abc.abstractmethod
    async def ack(self, messages: Sequence[Message]) -> None:
        """The messages were handled. Acking an already acked message does nothing."""

    async def nack(self, messages: Sequence[Message], requeue: bool = True) -> None:
        """Handling failed: deliver again (``requeue``) or drop. Only with capability."""
        from channels.errors import CapabilityNotSupported

        raise CapabilityNotSupported("nack", driver=type(self).__name__)

    async def touch(self, messages: Sequence[Message]) -> None:  # noqa: B027 - optional
        """Ask for more time to handle these messages (where the broker times them out)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group. Messages received but not acked go back to the broker."""


class Transport(abc.ABC):
    """A connection to one broker, shared by everything an App does."""

    #: the schemes this driver serves (informational; the registry maps them)
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: BrokerURL) -> None:
        self.url = url

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare(self, topic: TopicSpec, group: str | None = None) -> None: ...

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Message]) -> Sequence[RecordMetadata | BaseException]: ...

    @abc.abstractmethod
    async def subscribe(self, spec: SubscriptionSpec) -> Subscription: ...

    def validate_topic_name(self, name: str) -> None:  # noqa: B027 - optional hook
        """Raise ConfigurationError if ``name`` breaks this broker's rules.

        The portable layer already refused empty names, control characters and names
        longer than 249 characters; drivers add their own rules here.
        """

    def native(self) -> Any:
        """The client library object behind this transport."""
        raise NotImplementedError

    def client_version(self) -> str:
        """Name and version of the client library, for ``channels doctor``."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.redacted()}>"


@contextlib.contextmanager
def translate_errors(
    table: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], type[ChannelsError]]],
    broker: BrokerURL,
    what: str = "",
) -> Iterator[None]:
    """Map client exceptions to ``channels.errors`` by the first matching row of ``table``.

    ``ChannelsError`` passes through (with the broker filled in), as do cancellation and
    exceptions no row matches.
    """
    try:
        yield
    except ChannelsError as exc:
        if exc.broker is None:
            exc.set_broker(broker)
        raise
    except Exception as exc:
        untrusted = untrusted_certificate(exc)
        if untrusted is not None:
            prefix = f"{what}: " if what else ""
            raise ConfigurationError(
                f"{prefix}the broker's TLS certificate is not trusted ({untrusted}); "
                "give the CA that signed it (ssl_cafile / tls_ca_file)",
                broker=broker,
            ) from exc
        for exc_types, error in table:
            if isinstance(exc, exc_types):
                text = f"{what}: {exc}" if what else str(exc) or type(exc).__name__
                raise error.from_text(text, broker=broker) from exc
        raise


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the broker's certificate was refused, when that is what ``exc`` (or its cause)
    says; None otherwise. Not retryable: the same certificate fails the same way."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):  # a client that kept only the text
            return "certificate verify failed"
        seen = seen.__cause__ or seen.__context__
    return None


_ILLEGAL = re.compile(r"[\x00-\x20\x7f]")


def check_topic_name(name: str) -> None:
    """The rules every broker shares; drivers add theirs in ``validate_topic_name``."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"topic name must be a non-empty string, not {name!r}")
    if len(name) > 249:
        raise ConfigurationError(f"topic name longer than 249 characters: {name[:40]!r}...")
    if _ILLEGAL.search(name):
        raise ConfigurationError(f"topic name {name!r} contains whitespace or control characters")
