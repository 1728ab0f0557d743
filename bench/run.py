"""Run the benchmark matrix and write docs/performance.md.

    python -m bench.run [--brokers memory,kafka,...] [--quick] [--rounds 3] [--messages N]

For each broker and workload, the implementations (this library, the raw client, peers
where installed) run alternately A/B/A/B for ``--rounds`` rounds on the same broker in the
same process run; the report gives medians and per-pair ratios against the raw client,
with versions and settings. ``--quick`` is a smoke run: few messages, one round, and it
asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from channels.benchmark import Result

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_URLS = {
    "memory": "memory://",
    "kafka": "kafka://127.0.0.1:9092",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "mqtt": "mqtt://127.0.0.1:1883",
    "nsq": "nsq://127.0.0.1:4150",
    "zmq": "zmq://127.0.0.1:5560",
}

#: broker -> implementation name -> module under bench.impl (the first is the baseline)
IMPLEMENTATIONS: dict[str, dict[str, str]] = {
    "memory": {
        "asyncio.Queue": "memory_raw",
        "anychannel Channel": "memory_channel",
        "anychannel": "anychannel",
    },
    "kafka": {
        "aiokafka": "kafka_raw",
        "anychannel": "anychannel",
        "faststream": "kafka_faststream",
        "faust": "kafka_faust",
    },
    "amqp": {"aio-pika": "amqp_raw", "anychannel": "anychannel", "faststream": "amqp_faststream"},
    "mqtt": {"aiomqtt": "mqtt_raw", "anychannel": "anychannel", "faststream": "mqtt_faststream"},
    "nsq": {"ansq": "nsq_raw", "anychannel": "anychannel"},
    "zmq": {"pyzmq": "zmq_raw", "anychannel": "anychannel"},
}

WORKLOADS = ("publish_confirm", "publish_batch", "consume", "end_to_end", "latency")
SIZES = (100, 10 * 1024)

Workload = Callable[[str, int, int], Awaitable[Result]]


def _load(module: str) -> Any | None:
    try:
        return importlib.import_module(f"bench.impl.{module}")
    except ImportError as exc:
        print(f"  (skipping {module}: {exc})", file=sys.stderr)
        return None


def _count(workload: str, n: int) -> int:
    return max(10, n // 10) if workload in ("publish_confirm", "latency") else n


async def _measure(broker: str, url: str, n: int, rounds: int) -> list[dict[str, Any]]:
    impls = {name: _load(mod) for name, mod in IMPLEMENTATIONS[broker].items()}
    rows: list[dict[str, Any]] = []
    for workload in WORKLOADS:
        for size in SIZES:
            runners: dict[str, Workload] = {
                name: getattr(mod, workload)
                for name, mod in impls.items()
                if mod is not None and hasattr(mod, workload)
            }
            if len(runners) < 2:
                continue
            samples: dict[str, list[Result]] = {name: [] for name in runners}
            count = _count(workload, n)
            for _ in range(rounds):
                for name, fn in runners.items():  # alternate A/B/A/B
                    try:
                        samples[name].append(await asyncio.wait_for(fn(url, count, size), 600))
                    except Exception as exc:  # a failed run is reported, not hidden
                        print(
                            f"  {broker}/{workload}/{size}B/{name} failed: {exc!r}", file=sys.stderr
                        )
            baseline = next(iter(runners))
            base = _median([r.msgs_per_s for r in samples[baseline]])
            for name, results in samples.items():
                if not results:
                    rows.append(
                        {
                            "broker": broker,
                            "workload": workload,
                            "size": size,
                            "impl": name,
                            "failed": True,
                        }
                    )
                    continue
                rate = _median([r.msgs_per_s for r in results])
                row: dict[str, Any] = {
                    "broker": broker,
                    "workload": workload,
                    "size": size,
                    "impl": name,
                    "messages": count,
                    "runs": len(results),
                    "msgs_per_s": rate,
                    "ratio": rate / base if base else None,
                    "baseline": baseline,
                }
                if workload == "latency":
                    row["p50_ms"] = _median([r.p50_ms or 0.0 for r in results])
                    row["p99_ms"] = _median([r.p99_ms or 0.0 for r in results])
                rows.append(row)
                print(
                    f"  {broker:7} {workload:16} {size:>6}B {name:20} {rate:>12,.0f} msg/s"
                    + (
                        f"  x{row['ratio']:.2f} of {baseline}"
                        if name != baseline and row["ratio"]
                        else ""
                    ),
                    file=sys.stderr,
                )
    return rows


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "anychannel",
        "aiokafka",
        "aio-pika",
        "aiomqtt",
        "ansq",
        "pyzmq",
        "faststream",
        "faust-streaming",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def write_report(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    lines = [
        "# Performance",
        "",
        f"Generated by `python -m bench.run` on {meta['date']} ({meta['machine']}); "
        f"{meta['rounds']} alternating round(s) per cell, medians; messages per run: {meta['messages']} "
        "(publish_confirm and latency: a tenth).",
        "",
        "Ratios compare each implementation with the first one of its broker (the raw client, "
        "or a bare `asyncio.Queue` for memory://), measured in the same run. Higher is better.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    if meta.get("quick"):
        lines += ["**Quick smoke run: too few messages for the figures to mean much.**", ""]
    for broker in dict.fromkeys(r["broker"] for r in rows):
        lines += [
            f"## {broker}",
            "",
            "| workload | size | implementation | msg/s | ratio | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["broker"] == broker):
            if r.get("failed"):
                lines.append(f"| {r['workload']} | {r['size']} | {r['impl']} | failed | | | |")
                continue
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else ""
            p50 = f"{r['p50_ms']:.2f}" if "p50_ms" in r else ""
            p99 = f"{r['p99_ms']:.2f}" if "p99_ms" in r else ""
            lines.append(
                f"| {r['workload']} | {r['size']} | {r['impl']} | {r['msgs_per_s']:,.0f} | {ratio} | {p50} | {p99} |"
            )
        lines.append("")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--brokers",
        default=",".join(DEFAULT_URLS),
        help="comma-separated: " + ",".join(DEFAULT_URLS),
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 messages, one round")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 500, 1
    rows: list[dict[str, Any]] = []
    for broker in [b.strip() for b in args.brokers.split(",") if b.strip()]:
        if broker not in DEFAULT_URLS:
            parser.error(f"unknown broker {broker!r}")
        print(f"{broker}:", file=sys.stderr)
        rows += asyncio.run(_measure(broker, DEFAULT_URLS[broker], args.messages, args.rounds))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.system()}",
        "rounds": args.rounds,
        "messages": args.messages,
        "quick": args.quick,
        "versions": _versions(),
    }
    write_report(rows, meta, args.out)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
