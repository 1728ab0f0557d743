"""The test brokers of scripts/brokers, shared by the test modules that need real brokers."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import socket
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Broker:
    name: str
    url: str
    restart: str | None  # the scripts/brokers name to restart, None if it has no restart

    def with_port(self, port: int) -> str:
        """The same URL pointing at ``port`` on 127.0.0.1."""
        scheme, rest = self.url.split("://", 1)
        auth = rest.split("@", 1)[0] + "@" if "@" in rest else ""
        tail = rest.split("@", 1)[-1]
        path = tail[tail.index("/") :] if "/" in tail else ""
        return f"{scheme}://{auth}127.0.0.1:{port}{path}"

    @property
    def port(self) -> int:
        tail = self.url.split("://", 1)[1].split("@", 1)[-1].split("/", 1)[0]
        return int(tail.rsplit(":", 1)[1])


def _env(name: str, default: str, *aliases: str) -> str:
    for key in (name, *aliases):
        value = os.environ.get(f"CHANNELS_TEST_{key.upper()}_URL")
        if value:
            return value
    return default


BROKERS = {
    b.name: b
    for b in (
        Broker("kafka", _env("kafka", "kafka://127.0.0.1:9092"), "kafka"),
        Broker("amqp", _env("amqp", "amqp://guest:guest@127.0.0.1:5672/", "rabbitmq"), "rabbitmq"),
        Broker("mqtt", _env("mqtt", "mqtt://127.0.0.1:1883"), "mqtt"),
        Broker("gmqtt", _env("gmqtt", "gmqtt://127.0.0.1:1883"), "mqtt"),
        Broker("nsq", _env("nsq", "nsq://127.0.0.1:4150"), "nsq"),
        Broker("zmq", _env("zmq", "zmq://127.0.0.1:5560"), "zmq"),
    )
}


async def bounded(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Await ``awaitable`` for at most ``seconds``; on a timeout, print every thread's stack
    and every pending task (where it hangs) before cancelling it and raising TimeoutError."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    print(f"--- {what}: not done after {seconds}s; threads and tasks follow ---", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for pending in asyncio.all_tasks():
        pending.print_stack(limit=12, file=sys.stderr)
    task.cancel()
    started = time.monotonic()
    await asyncio.wait({task}, timeout=30)
    print(f"--- {what}: cancelled; finished={task.done()} after {time.monotonic() - started:.1f}s ---", file=sys.stderr)
    raise TimeoutError(f"{what}: not done within {seconds}s")


class LogWaiter(logging.Handler):
    """Counts the records of ``logger`` whose message contains ``text``; ``wait(n)`` awaits
    the n-th (an event to await instead of a sleep). Use it as a context manager."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.text = text
        self.count = 0
        self._changed = asyncio.Event()
        self._level = self.logger.level

    def __enter__(self) -> LogWaiter:
        self.logger.addHandler(self)
        if not self.logger.isEnabledFor(logging.DEBUG):
            self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self._changed.set()

    async def wait(self, n: int = 1) -> None:
        while self.count < n:
            self._changed.clear()
            await self._changed.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can cut, to make a broker unreachable."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port  # 0: any free port
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Stop listening and drop every connection (RST where possible)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
        self._writers.clear()


class NsqTopics:
    """Unique names for NSQ tests, and the deletion of every topic among them afterwards.

    nsqd samples 20 channels per 100 ms for deferred and timed-out messages: thousands of
    leftover test channels make REQ delays and msg_timeouts seconds late, so tests clean up.
    """

    def __init__(self, http: str, prefix: str) -> None:
        self.http = http
        self.prefix = prefix
        self.created: list[str] = []

    def name(self, prefix: str | None = None) -> str:
        made = f"{prefix or self.prefix}-{uuid.uuid4().hex[:16]}"
        self.created.append(made)
        return made

    def delete_all(self) -> None:
        while self.created:
            topic = self.created.pop()
            request = urllib.request.Request(f"{self.http}/topic/delete?topic={topic}", data=b"", method="POST")
            try:
                urllib.request.urlopen(request, timeout=2).close()
            except OSError:
                pass  # not a topic (a group name), or never created
