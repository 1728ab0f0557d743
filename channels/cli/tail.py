"""``channels tail [URL] TOPIC``: print messages as they arrive, on any broker.

Tail joins ``--group`` (default: a fresh, ephemeral ``channels-tail-<hex>`` group, so it
never takes messages from an application's group and leaves nothing behind on the
broker), prints each message, then acks it. It stops on
Ctrl-C, after ``--count`` messages, or after ``--timeout`` seconds without a message.
Once it is a member of the group it prints ``listening on TOPIC ...`` to stderr: a message
sent after that line reaches it (a new group sees older messages only with
``--from-beginning``, where the driver has ``replay_from_start``).

Formats (``--format``):

* ``text``: ``TOPIC[PARTITION]@OFFSET key=KEY headers={k=v,...} VALUE`` on one line (no
  ``[PARTITION]`` or ``@OFFSET`` where the broker has none, e.g. MQTT); text
  is shown with control characters escaped (``\\n``, ``\\x1b``), bytes that are not UTF-8
  as ``base64:...``, a missing key or value as ``(null)``.
* ``json``: one object per line with ``topic``, ``partition``, ``offset``, ``key``,
  ``value``, ``headers`` and ``timestamp`` (seconds since the epoch). Keys, values and
  header values are strings when they are UTF-8, ``{"base64": "..."}`` when not, and
  null when absent. With ``--codec json`` the value is the decoded JSON.
* ``raw``: the value bytes followed by a newline, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

from channels import codecs
from channels.app import App
from channels.cli import _common as c
from channels.errors import ConfigurationError, DecodeError, Timeout
from channels.events import Message

EPILOG = """\
examples:
  channels tail kafka://127.0.0.1:9092 orders --from-beginning --count 10
  channels tail amqp://guest:guest@127.0.0.1:5672/ orders --format json
  channels tail --broker mqtt://127.0.0.1:1883 sensors/t1 --codec json --timeout 30

The default group is a new one per run (channels-tail-<hex>): tail never takes messages
from an application's group. Use --group to join one on purpose. Exit status: 0 done,
1 fewer than --count messages before --timeout, 2 bad input or unreachable broker,
130 interrupted.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "tail",
        help="print messages as they arrive",
        description="Print the messages of TOPIC as they arrive, acking each once printed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="channels tail [options] [URL] TOPIC",
    )
    parser.add_argument(
        "args",
        nargs="+",
        metavar="[URL] TOPIC",
        help="the broker URL (optional, see below) and the arguments",
    )
    c.add_broker_option(parser)
    parser.add_argument("-g", "--group", help="the group to join (default: a new channels-tail-<hex> group)")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new group starts at the oldest retained message (drivers with replay_from_start)",
    )
    parser.add_argument("-n", "--count", type=c.positive_int, metavar="N", help="stop after N messages")
    parser.add_argument(
        "-t",
        "--timeout",
        type=c.positive_float,
        metavar="S",
        help="stop after S seconds without a message",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "raw"),
        default="text",
        help="output format (default: text)",
    )
    parser.add_argument(
        "--codec",
        default="raw",
        metavar="NAME",
        help="decode values with this codec (default: raw bytes)",
    )
    parser.add_argument(
        "--create",
        action="store_true",
        help="declare TOPIC as internal: create it if missing (default: it must exist)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    redactor = c.Redactor()
    for url in (*args.args[:1], args.broker, c.broker_from_env()):
        if url and c.looks_like_url(url):
            redactor.add(url)
    try:
        url_text, rest = c.split_url_and_args(args.args, args.broker, minimum=1, maximum=1, usage="[URL] TOPIC")
    except ConfigurationError as exc:
        return c.fail("tail", exc, redactor)
    return c.run("tail", lambda: _tail(args, url_text, rest[0], redactor), redactor)


def _text_value(value: Any) -> str:
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        return c.render_bytes_text(None if value is None else bytes(value))
    if isinstance(value, str):
        return value.translate(c._CONTROL)
    return json.dumps(c.json_safe(value), ensure_ascii=False)


def format_text(message: Message, value: Any) -> str:
    where = message.topic if message.partition is None else f"{message.topic}[{message.partition}]"
    line = f"{where} " if message.offset is None else f"{where}@{message.offset} "
    line += f"key={c.render_bytes_text(message.key)}"
    if message.headers:
        pairs = ",".join(
            f"{c.render_bytes_text(name.encode('utf-8'))}={c.render_bytes_text(data)}"
            for name, data in message.headers.items()
        )
        line += f" headers={{{pairs}}}"
    return f"{line} {_text_value(value)}"


def format_json(message: Message, value: Any) -> str:
    return json.dumps(
        {
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": c.render_bytes_json(message.key),
            "value": c.json_safe(value),
            "headers": {name: c.render_bytes_json(data) for name, data in message.headers.items()},
            "timestamp": message.timestamp,
        },
        ensure_ascii=False,
    )


class _Output:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def write(self, message: Message, value: Any) -> None:
        if self.fmt == "raw":
            out = sys.stdout.buffer
            out.write((message.value or b"") + b"\n")
            out.flush()
            return
        line = format_json(message, value) if self.fmt == "json" else format_text(message, value)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def _tail(args: argparse.Namespace, url_text: str, topic_name: str, redactor: c.Redactor) -> int:
    codecs.get_codec(args.codec)  # an unknown codec fails before we connect
    group = args.group or f"channels-tail-{uuid.uuid4().hex[:12]}"
    app = App(
        "channels-tail", broker=url_text, connect_timeout=args.connect_timeout, wait_for_broker=args.wait_for_broker
    )
    output = _Output(args.format)
    received = 0
    started = False
    status = c.EXIT_OK
    async with app:
        topic = app.topic(
            topic_name,
            key_serializer="raw",
            value_serializer=args.codec,
            internal=args.create,
            group=group,
            acks="manual",
            from_beginning=args.from_beginning,
            # tail's own group lives only while tail runs: nothing is left on the broker
            ephemeral=args.group is None,
        )
        stream = topic.events()
        try:
            await stream.start()
            started = True
            c.note(
                f"listening on {topic_name} (group {group}) at {app.url.redacted()}"
                + (" from the beginning" if args.from_beginning else "")
                + "; Ctrl-C to stop",
                redactor,
            )
            c.memory_note(app.url, redactor)
            while args.count is None or received < args.count:
                try:
                    event = await stream.get(timeout=args.timeout)
                except Timeout:
                    if args.count is not None:
                        c.note(
                            f"channels tail: no message for {args.timeout:g}s: received {received} of {args.count}",
                            redactor,
                        )
                        status = c.EXIT_FAILURE
                    break
                except DecodeError as exc:
                    if exc.raw is None:
                        raise
                    # Show what arrived rather than stop on one bad message.
                    c.note(f"cannot decode a message with {args.codec}: {exc}", redactor)
                    output.write(exc.raw, exc.raw.value)
                    await stream.ack_message(exc.raw)
                    received += 1
                    continue
                output.write(event.message, event.value)
                await event.ack()
                received += 1
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            try:
                await stream.close(clean=True)
            finally:
                if started:
                    c.note(
                        f"received {received} message(s) from {topic_name} on {app.url.redacted()}",
                        redactor,
                    )
    return status
