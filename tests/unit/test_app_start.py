"""App.start(): one bounded attempt by default, or retries for ``wait_for_broker`` seconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

import channels
from channels import registry
from channels.errors import AuthenticationFailed, ChannelsError, ConfigurationError, ConnectionFailed
from transports.memory import MemoryTransport


class Flaky(MemoryTransport):
    """The memory driver behind a broker that refuses the first ``failures`` connects."""

    schemes = ("flaky-test",)
    failures: ClassVar[int] = 0
    error: ClassVar[type[ChannelsError]] = ConnectionFailed
    attempts: ClassVar[int] = 0

    async def connect(self) -> None:
        type(self).attempts += 1
        if type(self).attempts <= type(self).failures:
            raise type(self).error("refused by the test")
        await super().connect()


@pytest.fixture
def flaky() -> Iterator[type[Flaky]]:
    registry.register("flaky-test", Flaky)
    Flaky.attempts, Flaky.failures, Flaky.error = 0, 0, ConnectionFailed
    yield Flaky
    registry.unregister("flaky-test")


async def test_one_attempt_by_default(flaky: type[Flaky]) -> None:
    flaky.failures = 1
    app = channels.App("start", broker="flaky-test://")
    with pytest.raises(ConnectionFailed, match="refused by the test"):
        await app.start()
    assert flaky.attempts == 1
    assert not app.running
    await app.start()  # a failed start can be tried again
    assert app.running
    await app.stop()


async def test_wait_for_broker_retries_until_it_answers(flaky: type[Flaky]) -> None:
    flaky.failures = 3
    app = channels.App("start", broker="flaky-test://", wait_for_broker=30)
    async with app:
        topic = app.topic("t", internal=True)
        async with topic.events() as stream:
            await topic.send(value=b"after the retries")
            assert (await stream.get(timeout=5)).value == b"after the retries"
    assert flaky.attempts == 4


async def test_wait_for_broker_gives_up_after_its_time(flaky: type[Flaky]) -> None:
    flaky.failures = 1_000
    app = channels.App("start", broker="flaky-test://", wait_for_broker=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        await app.start()
    assert 1.0 <= time.monotonic() - started < 5
    assert flaky.attempts >= 2


@pytest.mark.parametrize("error", [AuthenticationFailed, ConfigurationError])
async def test_errors_that_are_not_retryable_end_the_wait_at_once(
    flaky: type[Flaky], error: type[ChannelsError]
) -> None:
    flaky.failures, flaky.error = 1_000, error
    app = channels.App("start", broker="flaky-test://", wait_for_broker=60)
    with pytest.raises(error):
        await app.start()
    assert flaky.attempts == 1


def test_authentication_failed_is_a_connection_failure_nothing_retries() -> None:
    assert issubclass(AuthenticationFailed, ConnectionFailed)
    assert ConnectionFailed.retryable and not AuthenticationFailed.retryable
    assert channels.AuthenticationFailed is AuthenticationFailed


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_wait_for_broker_must_be_a_duration(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="wait_for_broker"):
        channels.App("start", wait_for_broker=bad)


@pytest.mark.parametrize(
    "options",
    [
        {"connect_timeout": "x"},
        {"close_timeout": 0},
        {"delivery_timeout": True},
        {"batch_size": 0},
        {"max_buffer": 1.5},
        {"retries": -1},
        {"wait_for_broker": "60"},
    ],
)
def test_bad_app_options_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        channels.App("start", **options)  # type: ignore[arg-type]


def test_an_app_id_must_be_text() -> None:
    with pytest.raises(ConfigurationError, match="non-empty string, not 123"):
        channels.App(123)  # type: ignore[arg-type]
