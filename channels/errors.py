"""One error hierarchy for every driver.

Drivers translate their client library's exceptions into these (``raise ... from exc``)
in one place each, so callers can tell failures apart without knowing the broker.
Every message names the broker with its password redacted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels.events import Message

__all__ = [
    "AuthenticationFailed",
    "CapabilityNotSupported",
    "ChannelsError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "EncodeError",
    "MessageTooLarge",
    "Timeout",
    "TopicNotFound",
    "Unroutable",
]


class ChannelsError(Exception):
    """Base class of every error raised by anychannel.

    ``broker`` is the redacted URL of the broker involved, when there is one.
    ``retryable`` tells the portable layer that trying the same operation again may work.
    """

    retryable: bool = False

    def __init__(self, message: str = "", *, broker: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.broker: str | None = None
        if broker is not None:
            self.set_broker(broker)

    @classmethod
    def from_text(cls, text: str, *, broker: Any = None) -> ChannelsError:
        """Build the error from a message alone (what ``translate_errors`` does)."""
        return cls(text, broker=broker)

    def set_broker(self, broker: Any) -> None:
        """Record the broker; URL objects and strings are redacted before they are kept."""
        from channels.url import redact

        self.broker = redact(broker)

    def __str__(self) -> str:
        if self.broker and self.broker not in self.message:
            return f"{self.message} [broker: {self.broker}]"
        return self.message


class ConfigurationError(ChannelsError, ValueError):
    """Bad URL, unknown scheme, missing extra, invalid option, name or header."""


class ConnectionFailed(ChannelsError, ConnectionError):
    """The broker could not be reached, or the connection dropped."""

    retryable = True


class AuthenticationFailed(ConnectionFailed):
    """The broker refused the credentials (user and password, SASL, an auth secret).

    A ``ConnectionFailed`` that is not retryable: the same credentials fail the same way,
    so nothing retries them until a timeout; the message never contains the secret.
    """

    retryable = False


class TopicNotFound(ChannelsError, LookupError):
    """A source topic does not exist on the broker (source topics are never created)."""

    def __init__(self, topic: str, message: str = "", *, broker: Any = None) -> None:
        super().__init__(message or f"topic {topic!r} does not exist", broker=broker)
        self.topic = topic

    @classmethod
    def from_text(cls, text: str, *, broker: Any = None) -> TopicNotFound:
        return cls("", text, broker=broker)


class MessageTooLarge(ChannelsError, ValueError):
    """A message is larger than the driver or broker accepts; nothing was sent."""

    def __init__(
        self, size: int | None, limit: int | None, *, topic: str = "", broker: Any = None, message: str = ""
    ) -> None:
        where = f" for topic {topic!r}" if topic else ""
        super().__init__(message or f"message of {size} bytes{where} exceeds the limit of {limit} bytes", broker=broker)
        self.size = size
        self.limit = limit

    @classmethod
    def from_text(cls, text: str, *, broker: Any = None) -> MessageTooLarge:
        return cls(None, None, broker=broker, message=text)


class EncodeError(ChannelsError, ValueError):
    """A key, value or header could not be serialized; nothing was sent."""


class DecodeError(ChannelsError, ValueError):
    """A received message could not be decoded; ``raw`` keeps the wire message."""

    def __init__(self, message: str, raw: Message | None = None, *, broker: Any = None) -> None:
        super().__init__(message, broker=broker)
        self.raw = raw


class CapabilityNotSupported(ChannelsError, NotImplementedError):
    """The driver cannot do what was asked (see its ``Capabilities``)."""

    def __init__(self, capability: str, reason: str = "", *, driver: str = "", broker: Any = None) -> None:
        who = f"driver {driver!r}" if driver else "this driver"
        text = f"{who} does not support {capability}"
        if reason:
            text += f": {reason}"
        super().__init__(text, broker=broker)
        self.capability = capability

    @classmethod
    def from_text(cls, text: str, *, broker: Any = None) -> CapabilityNotSupported:
        error = cls("", broker=broker)
        error.message = text
        error.args = (text,)
        return error


class ClosedError(ChannelsError, RuntimeError):
    """The app, topic, stream or transport is closed (or not started)."""


class Timeout(ChannelsError, TimeoutError):
    """An operation did not finish within its time limit."""

    retryable = True


class Unroutable(ChannelsError):
    """The broker accepted messages that reached no group or subscriber: nobody will get them.

    RabbitMQ returns them (``?mandatory=true``): ``count`` of the batch were not routed, the
    others were delivered. An MQTT 5 broker answers "no matching subscribers"
    (``?mandatory=true``): each such message fails on its own (``count`` 1) and the rest of
    its batch succeeds.
    """

    def __init__(self, message: str, count: int, *, broker: Any = None) -> None:
        super().__init__(message, broker=broker)
        self.count = count
