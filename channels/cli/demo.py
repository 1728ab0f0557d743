"""``channels demo``: one producer, G groups of K workers, the same code on every broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from channels.app import App
from channels.cli._common import quiet_libraries
from channels.errors import Timeout
from channels.topic import EventStream, Topic

EPILOG = """examples:
  channels demo                                   # memory://, 10,000 messages, 2 groups x 3 workers
  channels demo --broker kafka://127.0.0.1:9092 --messages 50000
  channels demo --broker amqp://guest:guest@127.0.0.1:5672/ --json
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="send N keyed messages and consume them with G groups of K workers",
        description=(
            "One producer sends N keyed messages with headers; G groups of K workers consume "
            "them through the same code whatever the broker. Ends with a table per group: "
            "received, unique, duplicates, lost, per-worker share, per-key order violations, "
            "throughput and latency."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker", default=None, help="broker URL (default: $CHANNELS_BROKER, else memory://)"
    )
    parser.add_argument(
        "--messages", type=_positive, default=10_000, help="messages to send (default 10000)"
    )
    parser.add_argument(
        "--workers", type=_positive, default=3, help="workers per group (default 3)"
    )
    parser.add_argument("--groups", type=_positive, default=2, help="consumer groups (default 2)")
    parser.add_argument("--keys", type=_positive, default=100, help="distinct keys (default 100)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        help="stop waiting after this many seconds without progress (default 15)",
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


@dataclass
class GroupTally:
    name: str
    workers: int
    received: int = 0
    seen: set[int] = field(default_factory=set)
    per_worker: list[int] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    order_violations: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.per_worker = [0] * self.workers

    def record(self, worker: int, key: str, seq: int, expected: int) -> None:
        self.received += 1
        if seq in self.seen:
            return
        self.seen.add(seq)
        self.per_worker[worker] += 1
        if seq < self.last_seq.get(key, -1):
            self.order_violations += 1
        else:
            self.last_seq[key] = seq
        if len(self.seen) >= expected:
            self.complete.set()


@dataclass
class DemoRun:
    app: App
    messages: int
    workers: int
    groups: int
    keys: int
    idle_timeout: float
    tallies: list[GroupTally] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    started: float = 0.0
    last_progress: float = 0.0
    last_receive: float = 0.0


async def _worker(
    run: DemoRun, stream: EventStream[str, dict[str, Any]], tally: GroupTally, index: int
) -> None:
    while not tally.complete.is_set():
        try:
            event = await stream.get(timeout=0.5)
        except Timeout:
            continue
        now = time.time_ns()
        seq = int(event.value["seq"])
        sent_ns = int(event.headers.get("sent-ns", b"0"))
        if sent_ns:
            run.latencies_ms.append((now - sent_ns) / 1e6)
        before = len(tally.seen)
        tally.record(index, event.key, seq, run.messages)
        if len(tally.seen) != before:
            run.last_progress = run.last_receive = time.monotonic()


async def _produce(run: DemoRun, topic: Topic[str, dict[str, Any]]) -> None:
    chunk = 500
    for start in range(0, run.messages, chunk):
        futures = []
        for seq in range(start, min(start + chunk, run.messages)):
            futures.append(
                topic.send_soon(
                    key=f"key-{seq % run.keys}",
                    value={"seq": seq},
                    headers={"seq": str(seq), "sent-ns": str(time.time_ns())},
                )
            )
        await asyncio.gather(*futures)
        run.sent += len(futures)
        run.last_progress = time.monotonic()


async def _run(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    app = App("channels-demo", broker=args.broker)
    run = DemoRun(app, args.messages, args.workers, args.groups, args.keys, args.idle_timeout)
    tag = uuid.uuid4().hex[:10]
    caps = app.capabilities
    topic: Topic[str, dict[str, Any]] = app.topic(
        f"demo-{tag}",
        key_type=str,
        value_serializer="json",
        internal=True,
        partitions=max(2 * args.workers, 6),
    )
    async with app:
        streams: list[tuple[EventStream[str, dict[str, Any]], GroupTally, int]] = []
        for g in range(args.groups):
            group_topic = topic.clone(group=f"demo-{tag}-g{g + 1}")
            await group_topic.declare()
            tally = GroupTally(group_topic.group, args.workers)
            run.tallies.append(tally)
            for w in range(args.workers):
                streams.append((group_topic.events(), tally, w))
        await asyncio.gather(*(stream.start() for stream, _, _ in streams))
        workers = [asyncio.create_task(_worker(run, s, t, w)) for s, t, w in streams]
        run.started = run.last_progress = time.monotonic()
        producer = asyncio.create_task(_produce(run, topic))
        bar = progress.start(run) if progress is not None else None
        try:
            while True:
                if producer.done() and producer.exception() is not None:
                    raise producer.exception()  # type: ignore[misc]
                if producer.done() and all(t.complete.is_set() for t in run.tallies):
                    break
                if time.monotonic() - run.last_progress > run.idle_timeout:
                    break
                if bar is not None:
                    bar.update(run)
                await asyncio.sleep(0.1)
            if bar is not None:
                bar.update(run)
        finally:
            if bar is not None:
                bar.stop()
            for t in run.tallies:
                t.complete.set()
            producer.cancel()
            for task in workers:
                task.cancel()
            for task in [producer, *workers]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for stream, _, _ in streams:
                await stream.close(clean=True)
    elapsed = max((run.last_receive or time.monotonic()) - run.started, 1e-9)
    unique_total = sum(len(t.seen) for t in run.tallies)
    lat = sorted(run.latencies_ms)
    return {
        "broker": app.url.redacted(),
        "sent": run.sent,
        "groups": {
            t.name: {
                "received": t.received,
                "unique": len(t.seen),
                "duplicates": t.received - len(t.seen),
                "lost": run.sent - len(t.seen),
                "per_worker": t.per_worker,
                "order_violations": t.order_violations,
            }
            for t in run.tallies
        },
        "throughput_msgs_per_s": round(unique_total / elapsed, 1),
        "latency_ms": {
            "p50": round(_percentile(lat, 50), 3),
            "p99": round(_percentile(lat, 99), 3),
        },
        "at_least_once": caps.at_least_once,
        "per_key_ordering": caps.per_key_ordering,
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


class _Progress:
    """A rich progress display on stderr: sent, and unique received per group."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def start(self, run: DemoRun) -> _Progress:
        self.tasks["sent"] = self.progress.add_task("sent", total=run.messages)
        for t in run.tallies:
            self.tasks[t.name] = self.progress.add_task(t.name, total=run.messages)
        self.progress.start()
        return self

    def update(self, run: DemoRun) -> None:
        self.progress.update(self.tasks["sent"], completed=run.sent)
        for t in run.tallies:
            self.progress.update(self.tasks[t.name], completed=len(t.seen))

    def stop(self) -> None:
        self.progress.stop()


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(f"broker {report['broker']}: sent {report['sent']} messages")
    table = Table(title="per group")
    for column in (
        "group",
        "received",
        "unique",
        "duplicates",
        "lost",
        "per-worker share",
        "order violations",
    ):
        table.add_column(column, justify="right" if column != "group" else "left")
    for name, g in report["groups"].items():
        table.add_row(
            name,
            str(g["received"]),
            str(g["unique"]),
            str(g["duplicates"]),
            str(g["lost"]),
            " / ".join(str(n) for n in g["per_worker"]),
            str(g["order_violations"]),
        )
    console.print(table)
    lat = report["latency_ms"]
    console.print(
        f"throughput {report['throughput_msgs_per_s']:,.0f} msg/s (unique deliveries, all groups); "
        f"latency p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms"
    )


def run(args: argparse.Namespace) -> int:
    quiet_libraries()  # a failure is reported in one line (main), not by the client's log too
    progress = None if args.json else _Progress()
    report = asyncio.run(_run(args, progress))
    lost = sum(g["lost"] for g in report["groups"].values())
    at_least_once = report.pop("at_least_once")
    report.pop("per_key_ordering")
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
        if lost:
            promise = "promises at-least-once" if at_least_once else "promises at most once"
            print(f"{lost} message(s) lost; this driver {promise}", file=sys.stderr)
    return 1 if lost and at_least_once else 0
