"""``channels bench URL``: throughput and latency of this library's API on your broker."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from channels.cli._common import quiet_libraries
from channels.url import parse_url

EPILOG = """examples:
  channels bench memory://
  channels bench kafka://127.0.0.1:9092 --messages 50000 --size 1024
  channels bench nsq://127.0.0.1:4150 --json
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure throughput and latency of the Topic API on a broker",
        description=(
            "Runs four workloads on fresh topics: publish with confirm (one at a time, "
            "messages/10), publish in batches then flush, consume a pre-filled topic, and "
            "latency at 1,000 msg/s (messages/10). The side-by-side comparison with raw "
            "clients lives in bench/ of the repository."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=None,
        help="broker URL (default: $CHANNELS_BROKER, else memory://)",
    )
    parser.add_argument(
        "--messages", type=int, default=20_000, help="messages per workload (default 20000)"
    )
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from channels.benchmark import run_all

    url = args.url or os.environ.get("CHANNELS_BROKER") or "memory://"
    redacted = parse_url(url).redacted()
    if args.messages < 10 or args.size < 0:
        raise SystemExit("channels bench: --messages must be >= 10 and --size >= 0")
    quiet_libraries()  # a failure is reported in one line (main), not by the client's log too
    results = asyncio.run(run_all(url, args.messages, args.size))
    if args.json:
        print(json.dumps({"broker": redacted, "results": [r.as_dict() for r in results]}))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"channels bench {redacted} ({args.size} B payload)")
    for column in ("workload", "messages", "msg/s", "p50 ms", "p99 ms", "p99.9 ms"):
        table.add_column(column, justify="right" if column != "workload" else "left")

    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    for r in results:
        table.add_row(
            r.workload,
            str(r.messages),
            f"{r.msgs_per_s:,.0f}",
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.p999_ms),
        )
    Console().print(table)
    return 0
