"""``channels bridge SRC_URL SRC_TOPIC DST_URL DST_TOPIC``: move messages between brokers.

Every message is forwarded as bytes (raw codecs on both sides) with its key and headers;
the value None stays None. A source message is acked only after the destination broker
confirmed its copy, in the order they arrived, so a crash or Ctrl-C loses nothing: what
was not acked is delivered again to the group when the bridge restarts (at-least-once:
after a crash the destination may see a message twice).

The default group, ``channels-bridge-<src>-to-<dst>``, is the same on every run, so a
restarted bridge resumes where the previous one stopped. Up to ``--window`` messages are
in flight at once. On Ctrl-C the bridge stops reading, waits (a few seconds at most) for
the copies in flight to be confirmed and acks them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

from channels.app import App
from channels.cli import _common as c
from channels.errors import ConfigurationError, Timeout
from channels.events import Event, FutureMessage

EPILOG = """\
examples:
  channels bridge kafka://127.0.0.1:9092 orders mqtt://127.0.0.1:1883 orders/copy
  channels bridge --broker amqp://guest:guest@127.0.0.1:5672/ orders orders-archive
  channels bridge kafka://127.0.0.1:9092 in nsq://127.0.0.1:4150 out --count 1000

A URL may be left out before either topic; --broker or $CHANNELS_BROKER fills it in (an
argument is a URL when it contains "://"). Exit status: 0 done, 1 a forward failed or
fewer than --count messages before --timeout, 2 bad input or unreachable broker,
130 interrupted.
"""

_DRAIN_SECONDS = 10.0


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bridge",
        help="forward messages from one broker/topic to another",
        description="Forward every message of SRC_TOPIC to DST_TOPIC with its key and "
        "headers, acking the source only once the destination confirmed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="channels bridge [options] [SRC_URL] SRC_TOPIC [DST_URL] DST_TOPIC",
    )
    parser.add_argument(
        "args",
        nargs="+",
        metavar="[SRC_URL] SRC_TOPIC [DST_URL] DST_TOPIC",
        help="the broker URL (optional, see below) and the arguments",
    )
    c.add_broker_option(parser)
    parser.add_argument("-g", "--group", help="source group (default: channels-bridge-<src>-to-<dst>)")
    parser.add_argument("-n", "--count", type=c.positive_int, metavar="N", help="stop after forwarding N messages")
    parser.add_argument(
        "-t",
        "--timeout",
        type=c.positive_float,
        metavar="S",
        help="stop after S seconds without a message",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new group starts at the oldest retained message (drivers with replay_from_start)",
    )
    parser.add_argument(
        "--create",
        action="store_true",
        help="declare both topics as internal: create them if missing (default: they must exist)",
    )
    parser.add_argument(
        "--window",
        type=c.positive_int,
        default=500,
        metavar="N",
        help="most messages forwarded and not yet confirmed (default: 500)",
    )
    parser.set_defaults(func=main)


def split_endpoints(tokens: Sequence[str], default: str | None) -> list[tuple[str, str]]:
    """``[SRC_URL] SRC_TOPIC [DST_URL] DST_TOPIC`` -> ``[(url, topic), (url, topic)]``."""
    pairs: list[tuple[str, str]] = []
    url: str | None = None
    for token in tokens:
        if c.looks_like_url(token):
            if url is not None:
                raise ConfigurationError("two URLs in a row: each URL must be followed by a topic")
            url = token
            continue
        chosen = url or default
        if chosen is None:
            raise ConfigurationError(
                f"no broker for topic {token!r}: put its URL before it, or give --broker URL or ${c.ENV_BROKER}"
            )
        pairs.append((chosen, token))
        url = None
    if url is not None:
        raise ConfigurationError("a URL at the end without a topic after it")
    if len(pairs) != 2:
        raise ConfigurationError("expected [SRC_URL] SRC_TOPIC [DST_URL] DST_TOPIC")
    return pairs


def default_group(src: str, dst: str) -> str:
    """A stable group name for a bridge, at most 60 characters (NSQ allows 64)."""

    def clean(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", name)

    name = f"channels-bridge-{clean(src)}-to-{clean(dst)}"
    if len(name) <= 60:
        return name
    digest = hashlib.sha256(f"{src}\0{dst}".encode()).hexdigest()[:10]
    return f"{name[:49]}-{digest}"


def main(args: argparse.Namespace) -> int:
    redactor = c.Redactor()
    for token in (*args.args, args.broker, c.broker_from_env()):
        if token and c.looks_like_url(token):
            redactor.add(token)
    try:
        pairs = split_endpoints(args.args, args.broker or c.broker_from_env())
    except ConfigurationError as exc:
        return c.fail("bridge", exc, redactor)
    return c.run("bridge", lambda: _bridge(args, pairs, redactor), redactor)


async def _bridge(args: argparse.Namespace, pairs: list[tuple[str, str]], redactor: c.Redactor) -> int:
    (src_url, src_name), (dst_url, dst_name) = pairs
    group = args.group or default_group(src_name, dst_name)
    timeouts = {"connect_timeout": args.connect_timeout, "wait_for_broker": args.wait_for_broker}
    src_app = App("channels-bridge", broker=src_url, **timeouts)
    dst_app = App("channels-bridge", broker=dst_url, **timeouts)
    if src_name == dst_name and src_app.url == dst_app.url:
        raise ConfigurationError(
            f"bridging {src_name!r} on {src_app.url.redacted()} to itself would forward every message forever"
        )
    src_where = f"{src_name} on {src_app.url.redacted()}"
    dst_where = f"{dst_name} on {dst_app.url.redacted()}"
    forwarded = 0
    timed_out = False
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dst_app)
        await stack.enter_async_context(src_app)
        dst = dst_app.topic(dst_name, key_serializer="raw", value_serializer="raw", internal=args.create)
        for spec in dst.specs:
            await dst_app.transport.declare(spec, None)
        src = src_app.topic(
            src_name,
            key_serializer="raw",
            value_serializer="raw",
            internal=args.create,
            group=group,
            acks="manual",
            from_beginning=args.from_beginning,
        )
        stream = src.events(prefetch=args.window)
        stack.push_async_callback(stream.close)
        await stream.start()
        c.note(f"bridging {src_where} -> {dst_where} (group {group}); Ctrl-C to stop", redactor)
        for app in (src_app, dst_app):
            if app.url.scheme == "memory":
                c.memory_note(app.url, redactor)
                break

        queue: asyncio.Queue[tuple[Event[Any, Any], FutureMessage[Any, Any]] | None] = asyncio.Queue(
            maxsize=args.window
        )
        started = time.monotonic()

        async def reader() -> None:
            nonlocal timed_out
            read = 0
            while args.count is None or read < args.count:
                try:
                    event = await stream.get(timeout=args.timeout)
                except Timeout:
                    timed_out = True
                    break
                fut = dst.send_soon(key=event.key, value=event.value, headers=event.headers)
                read += 1
                await queue.put((event, fut))
            await queue.put(None)

        async def acker(counter: c.LiveCounter) -> None:
            nonlocal forwarded
            while True:
                item = await queue.get()
                if item is None:
                    return
                event, fut = item
                await fut  # the destination confirmed its copy ...
                await event.ack()  # ... so the source may forget it
                forwarded += 1
                counter.advance()

        with c.LiveCounter(f"bridging {src_name} -> {dst_name}", total=args.count, plain_every=10.0) as counter:
            read_task = asyncio.create_task(reader(), name="reading the source")
            ack_task = asyncio.create_task(acker(counter), name="confirming and acking")
            try:
                await c.gather_or_fail(read_task, ack_task)
            except asyncio.CancelledError:
                # Interrupted: stop reading, let the copies in flight be confirmed and acked.
                read_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await read_task
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(_finish(queue, ack_task), _DRAIN_SECONDS)
                _summary(forwarded, src_where, dst_where, started, redactor)
                raise
            finally:
                for task in (read_task, ack_task):
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
    _summary(forwarded, src_where, dst_where, started, redactor)
    if timed_out and args.count is not None and forwarded < args.count:
        c.note(
            f"channels bridge: no message for {args.timeout:g}s: forwarded {forwarded} of {args.count}",
            redactor,
        )
        return c.EXIT_FAILURE
    return c.EXIT_OK


async def _finish(
    queue: asyncio.Queue[tuple[Event[Any, Any], FutureMessage[Any, Any]] | None],
    ack_task: asyncio.Task[None],
) -> None:
    if ack_task.done():
        return
    await queue.put(None)
    await ack_task


def _summary(forwarded: int, src_where: str, dst_where: str, started: float, redactor: c.Redactor) -> None:
    elapsed = time.monotonic() - started
    c.note(
        f"forwarded {forwarded} message(s) from {src_where} to {dst_where} "
        f"in {elapsed:.1f}s{c.rate(forwarded, elapsed)}",
        redactor,
    )
