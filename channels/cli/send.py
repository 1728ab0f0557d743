"""``channels send [URL] TOPIC [VALUE]``: publish messages to any broker.

The value is VALUE, or one message per line of ``--file`` (``-`` is stdin), or one per
line of stdin when neither is given. Each message waits for the broker's confirmation;
up to ``--window`` messages are in flight at once. By default TOPIC is a *source* topic:
it is never created, and a missing topic is an error where the driver can tell
(capability ``topic_check``). ``--create`` declares it as an internal topic (created if
missing, with ``--partitions``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from channels import codecs
from channels.app import App
from channels.cli import _common as c
from channels.errors import ConfigurationError, EncodeError
from channels.events import FutureMessage, RecordMetadata

EPILOG = """\
examples:
  channels send kafka://127.0.0.1:9092 orders '{"id": 1}' --key u1 --header trace=abc
  printf 'a\\nb\\nc\\n' | channels send amqp://guest:guest@127.0.0.1:5672/ orders --create
  CHANNELS_BROKER=mqtt://127.0.0.1:1883 channels send sensors/t1 21.5 --codec json -v

The URL may be left out when --broker or $CHANNELS_BROKER gives it (the first argument
is taken as the URL only when it contains "://"). Exit status: 0 every message was
confirmed, 1 a send failed, 2 bad input or unreachable broker, 130 interrupted.
"""

#: the first codec of a chain decides how an input line is read
_PARSED_INPUT = ("json", "msgpack")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "send",
        help="send messages to a topic",
        description="Send VALUE, or one message per input line, to TOPIC and wait for the broker to confirm each one.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="channels send [options] [URL] TOPIC [VALUE]",
    )
    parser.add_argument(
        "args",
        nargs="+",
        metavar="[URL] TOPIC [VALUE]",
        help="the broker URL (optional, see below) and the arguments",
    )
    c.add_broker_option(parser)
    parser.add_argument("-k", "--key", help="the key of every message (UTF-8 text)")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a header for every message; repeatable",
    )
    parser.add_argument(
        "--codec",
        default="raw",
        metavar="NAME",
        help="value codec: raw (default: bytes as given), str, json, msgpack, binary, gzip, "
        "or a chain like 'json|gzip'; with json/msgpack each input is parsed as JSON first",
    )
    parser.add_argument("-p", "--partition", type=c.non_negative_int, help="send to this partition")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("-f", "--file", metavar="PATH", help="read one message per line from PATH ('-': stdin)")
    source.add_argument("--null", action="store_true", help="send one message whose value is None (a tombstone)")
    parser.add_argument(
        "--create",
        action="store_true",
        help="declare TOPIC as internal: create it if missing (default: it must exist)",
    )
    parser.add_argument("--partitions", type=c.positive_int, help="partitions for a topic made by --create")
    parser.add_argument(
        "--window",
        type=c.positive_int,
        default=1000,
        metavar="N",
        help="most messages awaiting confirmation at once (default: 1000)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest="print_metadata",
        action="store_true",
        help="print the record metadata (topic, partition, offset, timestamp) of each message",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    redactor = c.Redactor()
    for url in (*args.args[:1], args.broker, c.broker_from_env()):
        if url and c.looks_like_url(url):
            redactor.add(url)
    try:
        url_text, rest = c.split_url_and_args(args.args, args.broker, minimum=1, maximum=2, usage="[URL] TOPIC [VALUE]")
    except ConfigurationError as exc:
        return c.fail("send", exc, redactor)
    return c.run("send", lambda: _send(args, url_text, rest, redactor), redactor)


def _convert(data: bytes, codec_name: str, index: int) -> Any:
    first = codec_name.split("|", 1)[0].strip()
    if first in _PARSED_INPUT:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise EncodeError(f"message {index} is not valid JSON ({exc})") from None
    if first == "str":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncodeError(f"message {index} is not UTF-8 text ({exc})") from None
    return data


async def _lines(fd: int) -> AsyncIterator[bytes]:
    """Lines read from a file descriptor on a daemon thread, so Ctrl-C never waits for
    input. Plain ``os.read`` holds no interpreter lock that could block the exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=64)

    def put(item: bytes | BaseException | None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def reader() -> None:
        try:
            while chunk := os.read(fd, 1 << 16):
                put(chunk)
            put(None)
        except BaseException as exc:  # handed to the event loop
            with contextlib.suppress(RuntimeError):  # the loop is gone
                put(exc)

    threading.Thread(target=reader, name="channels-send-input", daemon=True).start()
    rest = b""
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            if rest:
                yield rest
            return
        *lines, rest = (rest + item).split(b"\n")
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line


async def _values(args: argparse.Namespace, value: str | None) -> AsyncIterator[bytes | None]:
    if value is not None:
        if args.file is not None or args.null:
            raise ConfigurationError("give VALUE, --file or --null, not several")
        yield value.encode("utf-8")
        return
    if args.null:
        yield None
        return
    if args.file is None or args.file == "-":
        if sys.stdin is None:
            raise ConfigurationError("no VALUE and no stdin to read messages from")
        if sys.stdin.isatty():
            print(
                "reading messages from stdin, one per line (Ctrl-D to end)",
                file=sys.stderr,
                flush=True,
            )
        async for line in _lines(sys.stdin.fileno()):
            yield line
        return
    fd = os.open(args.file, os.O_RDONLY)
    try:
        async for line in _lines(fd):
            yield line
    finally:
        os.close(fd)


def _print_metadata(md: RecordMetadata) -> None:
    print(
        f"{md.topic} partition={md.partition} offset={md.offset} timestamp={md.timestamp}",
        flush=True,
    )


async def _send(args: argparse.Namespace, url_text: str, rest: list[str], redactor: c.Redactor) -> int:
    topic_name = rest[0]
    value = rest[1] if len(rest) > 1 else None
    headers = c.parse_headers(args.header)
    codecs.get_codec(args.codec)  # an unknown codec fails before we connect
    if args.partitions is not None and not args.create:
        raise ConfigurationError("--partitions only applies with --create")
    app = App(
        "channels-send", broker=url_text, connect_timeout=args.connect_timeout, wait_for_broker=args.wait_for_broker
    )
    where = f"{topic_name} on {app.url.redacted()}"
    sent = 0
    in_flight: list[FutureMessage[Any, Any]] = []
    awaited: list[FutureMessage[Any, Any]] = []  # the one settle() waits for
    try:
        async with app:
            topic = app.topic(
                topic_name,
                key_serializer="raw",
                value_serializer=args.codec,
                internal=args.create,
                partitions=args.partitions,
            )
            # No group: sending must not create a queue that nobody reads.
            for spec in topic.specs:
                await app.transport.declare(spec, None)
            queue: asyncio.Queue[FutureMessage[Any, Any] | None] = asyncio.Queue(args.window)

            async def feed() -> None:
                index = 0
                async for raw in _values(args, value):
                    index += 1
                    obj = None if raw is None else _convert(raw, args.codec, index)
                    fut = topic.send_soon(key=args.key, value=obj, headers=headers, partition=args.partition)
                    await queue.put(fut)
                await queue.put(None)

            async def settle(counter: c.LiveCounter) -> None:
                nonlocal sent
                while (fut := await queue.get()) is not None:
                    awaited[:] = [fut]
                    md = await fut
                    awaited.clear()
                    sent += 1
                    counter.advance()
                    if args.print_metadata:
                        _print_metadata(md)

            with c.LiveCounter(f"sending to {topic_name}") as counter:
                tasks = (
                    asyncio.create_task(feed(), name="reading the input"),
                    asyncio.create_task(settle(counter), name="waiting for confirmations"),
                )
                try:
                    await c.gather_or_fail(*tasks)
                finally:
                    for task in tasks:
                        if not task.done():
                            task.cancel()
                            with contextlib.suppress(BaseException):
                                await task
                    # Accepted but not yet confirmed: leaving `async with app` flushes them
                    # (within the app's close timeout); they are counted below.
                    in_flight.extend(awaited)
                    while not queue.empty():
                        item = queue.get_nowait()
                        if item is not None:
                            in_flight.append(item)
    except BaseException:
        done = [f.future for f in in_flight if f.future.done() and not f.future.cancelled()]
        late = sum(1 for f in done if f.exception() is None)
        refused = len(done) - late
        unknown = len(in_flight) - len(done)
        if sent or in_flight:
            c.note(
                f"sent {sent + late} message(s) to {where} before stopping"
                + (f"; {refused} refused (not sent)" if refused else "")
                + (f"; {unknown} accepted but not confirmed (may or may not have arrived)" if unknown else ""),
                redactor,
            )
        raise
    suffix = " (memory:// is in-process: no other process sees them)" if app.url.scheme == "memory" else ""
    c.note(f"sent {sent} message(s) to {where}{suffix}", redactor)
    return c.EXIT_OK
