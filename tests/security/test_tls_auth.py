"""TLS, SASL SCRAM and passwords against the real brokers, and secrets kept secret.

Each case opens an App on a secured listener of `scripts/brokers` (the same broker
processes as the plain listeners; a throwaway CA, certificates and the test user's password
in `.brokers/tls/`), declares a topic and round-trips a message with a key and headers.
The negative cases (a wrong password, a TLS URL without the CA that signed the server's
certificate) must fail with a typed ChannelsError within a bounded time, and neither the
password nor the wrong password may appear in the exception (text, repr, the whole chain
of causes), the logs (every logger at DEBUG), or the output of the `channels` CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass

import pytest

import channels
from channels.errors import AuthenticationFailed, ChannelsError, ConfigurationError
from tests.security._secured import (
    AUTH_CASES,
    BY_ID,
    CASES,
    NO_CA,
    PASSWORD,
    ROOT,
    USER,
    WRONG,
    Secured,
    needs_secured_brokers,
)

pytestmark = [pytest.mark.brokers, needs_secured_brokers]

#: a failed login or TLS handshake must be reported within this many seconds
FAIL_WITHIN = 30.0
CONNECT_TIMEOUT = 10.0


def _name(case: str) -> str:
    return f"sec-{case}-{uuid.uuid4().hex[:10]}"


def _report(**figures: object) -> None:
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


def _exception_text(exc: BaseException) -> str:
    """Everything an exception can show: its text, repr, args, and the chain of causes."""
    parts: list[str] = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        parts += [str(err), repr(err), repr(err.args), repr(getattr(err, "broker", None))]
        todo += [err.__cause__, err.__context__]
    return "\n".join(parts)


def _assert_secret_free(where: str, text: str) -> None:
    for secret in (PASSWORD, WRONG):
        assert secret not in text, f"a password shows up in {where}:\n{text[:2000]}"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG: ours, the drivers', the client libraries', asyncio's."""
    caplog.set_level(logging.DEBUG)
    for name in ("channels", "transports", "aiokafka", "aio_pika", "aiormq", "aiomqtt", "gmqtt", "ansq", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _logs(caplog: pytest.LogCaptureFixture) -> str:
    # the formatted text with tracebacks, plus each record's raw message and arguments
    raw = "\n".join(f"{r.name} {r.msg!r} {r.args!r}" for r in caplog.records)
    return caplog.text + "\n" + raw


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_round_trip_over_a_secured_listener(case: Secured, all_logs: pytest.LogCaptureFixture) -> None:
    url = case.url()
    app = channels.App(_name("app"), broker=url, connect_timeout=CONNECT_TIMEOUT, close_timeout=20)
    topic = app.topic(_name(case.id), internal=True)
    headers = {"trace": b"\x00\xffsecured", "text": b"caf\xc3\xa9"}
    started = time.monotonic()
    async with asyncio.timeout(120):
        async with app:
            await topic.declare()
            connected = time.monotonic() - started
            metadata = await topic.send(key=b"user-1", value=b"over a secured listener", headers=headers)
            event = await topic.get(timeout=30)
            assert event.key == b"user-1"
            assert event.value == b"over a secured listener"
            for name, value in headers.items():
                assert event.headers.get(name) == value, f"header {name!r}: {event.headers!r}"
    _report(case=case.id, connect_and_declare_s=round(connected, 2), total_s=round(time.monotonic() - started, 2))
    assert metadata.topic == topic.name
    _assert_secret_free("str/repr of the app's URL", f"{app.url} {app.url!r} {app.transport_object!r}")
    _assert_secret_free("the logs", _logs(all_logs))


# ------------------------------------------------------------------ refused


async def _attempt(url: str) -> tuple[str, BaseException | None, float]:
    """Start an app, declare a topic and send; returns (step that failed, error, seconds)."""
    app = channels.App(_name("app"), broker=url, connect_timeout=CONNECT_TIMEOUT, close_timeout=10, retries=0)
    topic = app.topic(_name("refused"), internal=True)
    step = "start"
    started = time.monotonic()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(FAIL_WITHIN + 30):
            await app.start()
            step = "declare"
            await topic.declare()
            step = "send"
            await topic.send(key=b"k", value=b"must not arrive")
            step = "none"
    except BaseException as exc:  # recorded and checked by the caller (TimeoutError too)
        error = exc
    finally:
        elapsed = time.monotonic() - started
        try:
            await asyncio.wait_for(app.stop(), 30)
        except Exception as exc:  # a failed stop is reported, and must be secret-free too
            _assert_secret_free("the error of app.stop()", _exception_text(exc))
    return step, error, elapsed


def _check_refused(label: str, step: str, error: BaseException | None, elapsed: float) -> None:
    _report(
        case=label,
        failed_at=step,
        error=type(error).__name__ if error else None,
        seconds=round(elapsed, 2),
        message=repr(str(error)[:300]) if error else None,
    )
    assert error is not None, f"{label}: start, declare and send all succeeded"
    assert not isinstance(error, TimeoutError), f"{label}: no answer within {FAIL_WITHIN + 30}s (a hang)"
    assert isinstance(error, ChannelsError), (
        f"{label}: expected a ChannelsError, got {type(error).__name__}: {_exception_text(error)[:1500]}"
    )
    assert elapsed < FAIL_WITHIN, f"{label}: took {elapsed:.1f}s to fail"
    # a broker that is down (restarting) refuses every connection: that proves nothing here
    for unreachable in ("Errno 111", "Connect call failed", "Connection refused"):
        assert unreachable not in str(error), f"{label}: the listener did not answer at all: {error}"
    _assert_secret_free("the exception", _exception_text(error))


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
async def test_wrong_password_is_a_typed_error_without_the_secret(
    case: Secured, all_logs: pytest.LogCaptureFixture
) -> None:
    step, error, elapsed = await _attempt(case.url(password=WRONG))
    _check_refused(case.id, step, error, elapsed)
    _assert_secret_free("the logs", _logs(all_logs))
    # the one error that says "the credentials", on every broker, and that nothing retries
    assert isinstance(error, AuthenticationFailed), f"{case.id}: {type(error).__name__}: {error}"
    assert not error.retryable and step == "start", (step, error)


@pytest.mark.parametrize("case_id", NO_CA, ids=list(NO_CA))
async def test_tls_without_the_ca_is_a_typed_error(case_id: str, all_logs: pytest.LogCaptureFixture) -> None:
    url = Secured(case_id + "-no-ca", NO_CA[case_id]).url()
    step, error, elapsed = await _attempt(url)
    _check_refused(case_id + "-no-ca", step, error, elapsed)
    _assert_secret_free("the logs", _logs(all_logs))
    # a setting to fix, not a network error to retry, on every driver alike
    assert isinstance(error, ConfigurationError) and not error.retryable, repr(error)
    assert "not trusted" in str(error), str(error)


# ------------------------------------------------------------------ the CLI


@dataclass(frozen=True)
class CliRun:
    """Exit status and output of one `channels` run (no command line: it holds the password)."""

    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _cli(*args: str, timeout: float = 120) -> CliRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELS_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "channels", "-v", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        # the exception's text is the command line, password included: say less
        pytest.fail(f"channels {args[0]} did not finish within {timeout}s", pytrace=False)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)


CLI_CASES = ["kafka-scram-sha-512", "amqps", "mqtt-password"]


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_cli_send_and_tail_never_print_the_password(case_id: str) -> None:
    url = BY_ID[case_id].url()
    topic, group = _name(case_id), _name("grp")
    # join the group first (declare keeps messages for it), then send, then read it back
    first = _cli("tail", url, topic, "--create", "--group", group, "--count", "1", "--timeout", "3")
    sent = _cli("send", url, topic, "hello", "--create", "--key", "k1", "--header", "trace=abc")
    got = _cli("tail", url, topic, "--create", "--group", group, "--count", "1", "--timeout", "30")
    for label, run in (("first tail", first), ("send", sent), ("tail", got)):
        _assert_secret_free(f"channels {label} output", str(run))
    assert sent.returncode == 0, str(sent)
    assert got.returncode == 0, str(got)
    assert "hello" in got.stdout, str(got)


@pytest.mark.parametrize("case", AUTH_CASES, ids=[c.id for c in AUTH_CASES])
def test_cli_doctor_with_a_wrong_password(case: Secured) -> None:
    started = time.monotonic()
    proc = _cli("doctor", case.url(password=WRONG), "--timeout", "20", "--json", timeout=90)
    _report(case=case.id, exit=proc.returncode, seconds=round(time.monotonic() - started, 2))
    _assert_secret_free("channels doctor output", str(proc))
    assert proc.returncode != 0, str(proc)
    assert "***" in proc.stdout, "the report should name the broker with its password redacted"
    assert '"refused"' in proc.stdout, f"wrong credentials are reported as refused: {proc}"


def test_cli_doctor_with_the_right_passwords() -> None:
    urls = [c.url() for c in AUTH_CASES]
    proc = _cli("doctor", *urls, "--timeout", "40", timeout=180)
    _assert_secret_free("channels doctor output", str(proc))
    assert proc.returncode == 0, str(proc)


def test_cli_send_with_a_wrong_password() -> None:
    url = BY_ID["amqp-password"].url(password=WRONG)
    proc = _cli("send", url, _name("wrong"), "x", "--create", "--connect-timeout", "10", timeout=90)
    _assert_secret_free("channels send output", str(proc))
    assert proc.returncode == 2, str(proc)


def test_demo_with_a_password_url_never_prints_it() -> None:
    url = BY_ID["amqp-password"].url()
    proc = _cli(
        "demo",
        "--broker",
        url,
        "--messages",
        "300",
        "--workers",
        "2",
        "--groups",
        "2",
        "--keys",
        "10",
        "--idle-timeout",
        "20",
        timeout=240,
    )
    _assert_secret_free("channels demo output", str(proc))
    assert proc.returncode == 0, str(proc)


def test_scripts_brokers_env_hides_the_password() -> None:
    plain = subprocess.run(["scripts/brokers", "env"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    _assert_secret_free("scripts/brokers env", plain.stdout + plain.stderr)
    assert "CHANNELS_TEST_KAFKA_SCRAM256_URL=" in plain.stdout
    shown = subprocess.run(
        ["scripts/brokers", "env", "--secrets"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert PASSWORD in shown.stdout, "env --secrets prints the usable URLs"


async def test_kafka_credentials_on_a_listener_without_sasl_are_a_configuration_error() -> None:
    url = f"kafka://{USER}:{WRONG}@127.0.0.1:9092"  # the plain listener takes no login
    step, error, elapsed = await _attempt(url)
    _report(case="kafka-sasl-on-plain", failed_at=step, error=type(error).__name__, seconds=round(elapsed, 2))
    assert isinstance(error, ConfigurationError) and step == "start", repr(error)
    assert "does not take a PLAIN login" in str(error)
    _assert_secret_free("the exception", _exception_text(error))
