"""anychannel: one asyncio Channel/Topic API over Kafka, RabbitMQ, MQTT, NSQ, ZeroMQ and memory."""

from __future__ import annotations

from channels.app import App
from channels.capabilities import Capabilities
from channels.channel import Channel
from channels.errors import (
    AuthenticationFailed,
    CapabilityNotSupported,
    ChannelsError,
    ClosedError,
    ConfigurationError,
    ConnectionFailed,
    DecodeError,
    EncodeError,
    MessageTooLarge,
    Timeout,
    TopicNotFound,
    Unroutable,
)
from channels.events import Event, FutureMessage, Message, RecordMetadata
from channels.topic import EventStream, Topic
from channels.url import BrokerURL, parse_url

__version__ = "0.1.0"

__all__ = [
    "App",
    "AuthenticationFailed",
    "BrokerURL",
    "Capabilities",
    "CapabilityNotSupported",
    "Channel",
    "ChannelsError",
    "ClosedError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "EncodeError",
    "Event",
    "EventStream",
    "FutureMessage",
    "Message",
    "MessageTooLarge",
    "RecordMetadata",
    "Timeout",
    "Topic",
    "TopicNotFound",
    "Unroutable",
    "__version__",
    "parse_url",
]
