"""What a driver can do, declared up front and checked by the conformance suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Capabilities"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """Flags a driver sets honestly; the suite gates its cases on them.

    Asking a driver for something whose flag is False raises ``CapabilityNotSupported``.
    """

    #: messages survive a broker restart (written to disk before they are confirmed)
    persistent: bool = False
    #: members of one group share a topic, each message going to one member
    consumer_groups: bool = False
    #: every group receives every message
    fanout_groups: bool = False
    #: messages with the same key arrive in the order they were sent
    per_key_ordering: bool = False
    #: unacked messages are redelivered (at-least-once delivery)
    ack: bool = False
    #: ``nack(requeue=True)`` makes the broker deliver the message again
    redelivery_on_nack: bool = False
    #: a new group can start from the oldest retained message (``from_beginning=True``)
    replay_from_start: bool = False
    #: headers travel natively; otherwise the core wraps key and headers in the envelope
    native_headers: bool = False
    #: keys travel natively; otherwise the core wraps key and headers in the envelope
    native_keys: bool = False
    #: ``pattern=`` subscriptions
    patterns: bool = False
    #: ``send(partition=...)`` is honoured
    explicit_partitions: bool = False
    #: a missing source topic is detected at declare time (``TopicNotFound``)
    topic_check: bool = False
    #: messages are delivered exactly once (the suite then counts duplicates as failures)
    exactly_once: bool = False
    #: largest key + value + headers accepted, in bytes
    max_message_size: int = MiB

    @property
    def at_least_once(self) -> bool:
        return self.ack

    @property
    def uses_envelope(self) -> bool:
        return not (self.native_headers and self.native_keys)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
