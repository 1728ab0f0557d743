"""``channels doctor [URL...]``: is each broker reachable, and does a round trip work?

For every URL (all at once, each bounded by ``--timeout``): connect, declare the scratch
topic ``channels-doctor`` (internal, so it is created if missing) with a fresh, ephemeral group,
send one message with a key and a header, receive it back, check key, value and header,
and ack it. The table shows the status, connect time and round-trip latency, the driver
class, the client library and its version, and the driver's capabilities.

Without URLs it checks ``--broker`` or ``$CHANNELS_BROKER`` when set, else the test
brokers of ``scripts/brokers`` (each overridable with ``CHANNELS_TEST_<NAME>_URL``) and
``memory://``. ``--test-brokers`` always checks the test brokers.

Statuses: ``ok``; ``failed`` (connected, but the round trip did not work); ``unreachable``
(no answer within the timeout, connection refused); ``refused`` (the broker turned us
away, e.g. bad credentials); ``bad-url`` (malformed URL or an option the driver refuses);
``no-driver`` (unknown scheme or driver not installed).

Exit status: 0 every check passed; 2 a URL was malformed, its driver is missing, or a
broker could not be reached; 1 otherwise (reachable, but the round trip failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from channels.app import App
from channels.cli import _common as c
from channels.errors import AuthenticationFailed, ChannelsError, ConfigurationError, ConnectionFailed, Timeout
from channels.registry import EXTRAS, get_transport_class
from channels.url import parse_url

EPILOG = """\
examples:
  channels doctor
  channels doctor kafka://127.0.0.1:9092 amqp://guest:guest@127.0.0.1:5672/ --json
  CHANNELS_BROKER=nsq://127.0.0.1:4150 channels doctor

Exit status: 0 all passed, 1 a reachable broker failed the round trip, 2 a bad URL, a
missing driver or an unreachable broker.
"""

#: (name for CHANNELS_TEST_<NAME>_URL, default URL)
TEST_BROKERS: tuple[tuple[str, str], ...] = (
    ("KAFKA", "kafka://127.0.0.1:9092"),
    ("RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"),
    ("MQTT", "mqtt://127.0.0.1:1883"),
    ("GMQTT", "gmqtt://127.0.0.1:1883"),
    ("NSQ", "nsq://127.0.0.1:4150"),
    ("ZMQ", "zmq://127.0.0.1:5560"),
    ("MEMORY", "memory://"),
)

SCRATCH_TOPIC = "channels-doctor"
_CLOSE_SECONDS = 5.0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check brokers: reachable, round trip, driver, capabilities",
        description="Connect to each broker, round-trip one message through a scratch topic and report what works.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("urls", nargs="*", metavar="URL", help="brokers to check")
    parser.add_argument("--broker", metavar="URL", help="a broker to check (also $CHANNELS_BROKER)")
    parser.add_argument(
        "--test-brokers",
        action="store_true",
        help="check the test brokers (and memory://) even when $CHANNELS_BROKER is set",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=c.positive_float,
        default=20.0,
        metavar="S",
        help="seconds each check may take (default: 20)",
    )
    parser.add_argument(
        "--topic",
        default=SCRATCH_TOPIC,
        help=f"scratch topic, created if missing (default: {SCRATCH_TOPIC})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=main)


def test_broker_urls() -> list[str]:
    urls = []
    for name, default in TEST_BROKERS:
        override = os.environ.get(f"CHANNELS_TEST_{name}_URL")
        if not override and name == "GMQTT":
            mqtt = os.environ.get("CHANNELS_TEST_MQTT_URL")
            if mqtt and mqtt.startswith("mqtt"):
                override = "g" + mqtt
        urls.append(override or default)
    return urls


def urls_to_check(args: argparse.Namespace) -> list[str]:
    urls = list(args.urls)
    if args.broker:
        urls.append(args.broker)
    if args.test_brokers:
        urls += test_broker_urls()
    if not urls:
        env = c.broker_from_env()
        urls = [env] if env else test_broker_urls()
    return list(dict.fromkeys(urls))


@dataclass
class Result:
    url: str
    status: str = "failed"  # ok | failed | unreachable | refused | bad-url | no-driver
    reachable: bool = False
    connect_ms: float | None = None
    latency_ms: float | None = None
    driver: str = ""
    client_version: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def package_version(scheme: str) -> str:
    """``name version`` of the client library the scheme's extra installs."""
    extra = EXTRAS.get(scheme)
    if extra is None:
        return "built-in" if scheme == "memory" else ""
    try:
        requirements = metadata.requires("anychannel") or []
    except metadata.PackageNotFoundError:
        return ""
    for requirement in requirements:
        if f'extra == "{extra}"' not in requirement:
            continue
        match = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        if match is None:
            continue
        try:
            return f"{match[0]} {metadata.version(match[0])}"
        except metadata.PackageNotFoundError:
            return f"{match[0]} (not installed)"
    return ""


async def check(url_text: str, timeout: float, topic_name: str, redactor: c.Redactor) -> Result:
    result = Result(url=redactor.url(url_text))
    try:
        url = parse_url(url_text)
    except ConfigurationError as exc:
        result.status = "bad-url"
        result.error = redactor.text(c.describe(exc))
        return result
    try:
        cls = get_transport_class(url.scheme)
        result.driver = f"{cls.__module__}.{cls.__name__}"
        app = App("channels-doctor", broker=url, connect_timeout=timeout, close_timeout=timeout)
        result.capabilities = app.capabilities.as_dict()
        result.client_version = app.transport_object.client_version() or package_version(url.scheme)
    except Exception as exc:  # no such driver, or the driver refused the URL's options
        result.status = "no-driver" if result.driver == "" else "bad-url"
        result.error = redactor.text(c.describe(exc))
        return result
    deadline = time.monotonic() + timeout
    try:
        started = time.monotonic()
        try:
            await asyncio.wait_for(app.start(), timeout)
        except (TimeoutError, Timeout):
            raise ConnectionFailed(f"no answer within {timeout:g}s", broker=url) from None
        result.connect_ms = (time.monotonic() - started) * 1000
        result.reachable = True
        token = uuid.uuid4().hex
        group = f"channels-doctor-{token[:12]}"
        topic = app.topic(
            topic_name,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,
            group=group,
            acks="manual",
            ephemeral=True,  # nothing stays behind on the broker for the check's group
        )
        stream = topic.events()
        try:
            await asyncio.wait_for(stream.start(), max(0.1, deadline - time.monotonic()))
            sent_at = time.monotonic()
            await asyncio.wait_for(
                topic.send(key=b"doctor", value=token.encode(), headers={"channels-doctor": token}),
                max(0.1, deadline - time.monotonic()),
            )
            while True:
                event = await stream.get(timeout=max(0.1, deadline - time.monotonic()))
                await event.ack()
                if event.value == token.encode():
                    break  # older pings (a previous run's) are acked and skipped
            result.latency_ms = (time.monotonic() - sent_at) * 1000
            problems = []
            if event.key != b"doctor":
                problems.append(f"key came back as {event.key!r}")
            if event.headers.get("channels-doctor") != token.encode():
                problems.append(f"header came back as {event.headers.get('channels-doctor')!r}")
            if problems:
                raise ChannelsError("round trip altered the message: " + "; ".join(problems))
            result.status = "ok"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.close(), _CLOSE_SECONDS)
    except (TimeoutError, Timeout):
        result.status = "failed" if result.reachable else "unreachable"
        result.error = f"no round trip within {timeout:g}s"
    except Exception as exc:
        if not result.reachable:
            # the broker turned us away (credentials, or settings it does not accept)
            refused = isinstance(exc, (AuthenticationFailed, ConfigurationError))
            result.status = "refused" if refused else "unreachable"
        result.error = redactor.text(c.describe(exc))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), _CLOSE_SECONDS)
    return result


def capability_summary(caps: dict[str, Any]) -> str:
    flags = [name for name, value in caps.items() if value is True]
    size = caps.get("max_message_size")
    if isinstance(size, int):
        flags.append(f"max={_size(size)}")
    return " ".join(flags)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def print_table(results: list[Result]) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    tty = sys.stdout.isatty()
    console = Console(file=sys.stdout, width=None if tty else 200, no_color=not tty, highlight=False)
    table = Table(box=box.SIMPLE_HEAD if tty else box.ASCII, show_lines=False)
    for column in ("broker", "status", "connect", "round trip", "driver", "client"):
        table.add_column(column, overflow="fold")
    table.add_column("capabilities", overflow="fold", max_width=60)
    for r in results:
        style = "green" if r.ok else "red"
        table.add_row(
            escape(r.url),
            f"[{style}]{r.status}[/{style}]",
            _ms(r.connect_ms),
            _ms(r.latency_ms),
            r.driver.rsplit(".", 1)[-1] if r.driver else "-",
            escape(r.client_version or "-"),
            capability_summary(r.capabilities) or "-",
        )
    console.print(table)
    sys.stdout.flush()
    for r in results:
        if r.error:
            print(f"{r.url}: {r.error}")
    passed = sum(r.ok for r in results)
    print(f"{passed} of {len(results)} broker(s) passed", flush=True)


def main(args: argparse.Namespace) -> int:
    redactor = c.Redactor()
    urls = urls_to_check(args)
    for url in (*urls, c.broker_from_env() or ""):
        if url:
            redactor.add(url)
    results: list[Result] = []

    async def run_all() -> int:
        results.extend(await asyncio.gather(*(check(u, args.timeout, args.topic, redactor) for u in urls)))
        return c.EXIT_OK

    status = c.run("doctor", run_all, redactor)
    if status != c.EXIT_OK:
        return status
    if args.json:
        print(redactor.text(json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2)))
    else:
        print_table(results)
    if all(r.ok for r in results):
        return c.EXIT_OK
    if any(r.status in ("unreachable", "refused", "bad-url", "no-driver") for r in results):
        return c.EXIT_USAGE
    return c.EXIT_FAILURE
