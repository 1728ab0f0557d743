"""Run the benchmark matrix and write docs/performance.md (+ plots and raw JSON).

    python -m bench.run [--brokers memory,kafka,...] [--quick] [--rounds 3] [--messages N]
                        [--sizes 100,10240] [--out docs/performance.md] [--no-plots]

For each broker, workload and payload size, the implementations (the raw client library
first: it is the baseline; then this library; then FastStream and faust-streaming where
they support the broker) run one after the other, round after round (A/B/C, then B/C/A,
...: the order rotates so no implementation always runs first), on the same broker in
the same process. The report gives the median of the rounds, the ratio of each
implementation to the baseline, the latency percentiles, the versions and the settings
(each implementation module's docstring), and checks the project's targets.

A broker that does not answer on its port is reported "not run (broker down)"; an
implementation that cannot be imported, or a run that fails, is reported with the reason.
``--quick`` is a smoke run for CI (200 messages, one round) and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import traceback
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
        "faust Channel": "memory_faust",
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

#: "ours" in each broker's targets: the implementation compared with the others
OURS = "anychannel"

WORKLOADS = ("publish_confirm", "publish_batch", "consume", "end_to_end", "latency")
SIZES = (100, 10 * 1024)
LATENCY_RATE = 1000.0
RUN_TIMEOUT = 150.0

VERSIONED = (
    "anychannel",
    "aiokafka",
    "aio-pika",
    "aiomqtt",
    "paho-mqtt",
    "ansq",
    "pyzmq",
    "faststream",
    "zmqtt",
    "faust-streaming",
)

#: client libraries that log every retry at WARNING: quiet during the runs
NOISY_LOGGERS = (
    "aiokafka",
    "aio_pika",
    "aiormq",
    "ansq",
    "faststream",
    "faust",
    "mode",
    "zmqtt",
    "transports",
    "channels",
)

Workload = Callable[[str, int, int], Awaitable[Result]]


def _load(module: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(f"bench.impl.{module}"), None
    except Exception as exc:  # an implementation that cannot load is reported, not fatal
        return None, f"{type(exc).__name__}: {exc}"


def count_for(workload: str, n: int, size: int = 100) -> int:
    """Messages per run: confirm-one-by-one and latency (1,000 msg/s) get a tenth;
    payloads above 1 KiB a quarter (the same bytes on the wire stay modest)."""
    if size > 1024:
        n //= 4
    return max(10, n // 10) if workload in ("publish_confirm", "latency") else max(10, n)


def broker_up(url: str, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections on the URL's first host:port."""
    if url.startswith("memory:"):
        return True
    netloc = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split(",")[0]
    netloc = netloc.rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _row(broker: str, workload: str, size: int, impl: str, **fields: Any) -> dict[str, Any]:
    return {"broker": broker, "workload": workload, "size": size, "impl": impl, **fields}


async def measure(
    broker: str,
    url: str,
    n: int,
    rounds: int,
    sizes: tuple[int, ...] = SIZES,
    workloads: tuple[str, ...] = WORKLOADS,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> list[dict[str, Any]]:
    """Every workload x size x implementation of one broker, alternating, medians."""
    loaded = {name: _load(mod) for name, mod in IMPLEMENTATIONS[broker].items()}
    rows: list[dict[str, Any]] = []
    baseline = next(iter(IMPLEMENTATIONS[broker]))
    for workload in workloads:
        for size in sizes:
            runners: dict[str, Workload] = {}
            for name, (mod, error) in loaded.items():
                if mod is None:
                    rows.append(_row(broker, workload, size, name, error=f"not run: {error}"))
                elif hasattr(mod, workload):
                    runners[name] = getattr(mod, workload)
            if len(runners) < 2:
                continue
            count = count_for(workload, n, size)
            samples: dict[str, list[Result]] = {name: [] for name in runners}
            errors: dict[str, str] = {}
            order = list(runners)
            for r in range(rounds):
                shift = r % len(order)
                for name in order[shift:] + order[:shift]:  # A/B/C, B/C/A, ...
                    try:
                        result = await asyncio.wait_for(runners[name](url, count, size), RUN_TIMEOUT)
                    except Exception as exc:  # a failed run is reported, not hidden
                        errors[name] = f"{type(exc).__name__}: {exc}".strip()[:160]
                        log(f"  {broker}/{workload}/{size}B/{name} failed: {errors[name]}")
                        if os.environ.get("BENCH_TRACEBACKS"):
                            traceback.print_exc()
                        continue
                    samples[name].append(result)
            base = _median([s.msgs_per_s for s in samples.get(baseline, [])])
            for name, results in samples.items():
                if not results:
                    rows.append(_row(broker, workload, size, name, error=errors.get(name, "failed")))
                    continue
                rate = _median([s.msgs_per_s for s in results])
                row = _row(
                    broker,
                    workload,
                    size,
                    name,
                    messages=count,
                    runs=len(results),
                    msgs_per_s=rate,
                    ratio=(rate / base) if base else None,
                    baseline=baseline,
                    spread=(
                        (max(s.msgs_per_s for s in results) - min(s.msgs_per_s for s in results)) / rate
                        if rate and len(results) > 1
                        else 0.0
                    ),
                )
                if name in errors:
                    row["partial_error"] = errors[name]
                if workload == "latency":
                    for q in ("p50_ms", "p99_ms", "p999_ms"):
                        row[q] = _median([getattr(s, q) or 0.0 for s in results])
                rows.append(row)
                ratio = row["ratio"]
                log(
                    f"  {broker:7} {workload:16} {size:>6}B {name:20} {rate:>12,.0f} msg/s"
                    + (f"  x{ratio:.2f} of {baseline}" if name != baseline and ratio else "")
                )
    return rows


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def settings() -> dict[str, dict[str, str]]:
    """broker -> implementation -> the first paragraph of its module docstring."""
    out: dict[str, dict[str, str]] = {}
    for broker, impls in IMPLEMENTATIONS.items():
        out[broker] = {}
        for name, module in impls.items():
            mod, error = _load(module)
            doc = (mod.__doc__ or "") if mod is not None else f"(cannot load: {error})"
            out[broker][name] = " ".join(doc.split())
    return out


# -- targets -----------------------------------------------------------------------------


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The project's targets, checked on the measured medians (never asserted)."""
    index = {(r["broker"], r["workload"], r["size"], r["impl"]): r for r in rows}
    checks: list[dict[str, Any]] = []

    def rate(broker: str, workload: str, size: int, impl: str) -> float | None:
        row = index.get((broker, workload, size, impl))
        if row is None or "msgs_per_s" not in row:
            return None
        return float(row["msgs_per_s"])

    for broker, workload, size in dict.fromkeys((r["broker"], r["workload"], r["size"]) for r in rows):
        impls = list(IMPLEMENTATIONS.get(broker, {}))
        if not impls:
            continue
        if workload == "latency":
            continue  # a fixed rate: throughput says nothing; see the percentiles
        if broker == "memory":
            pairs = [("anychannel Channel", "asyncio.Queue", 0.8)]
            pairs += [("anychannel Channel", "faust Channel", 1.0)]
        else:
            pairs = [(OURS, impls[0], 0.95)]
            pairs += [(OURS, peer, 1.0) for peer in impls[2:]]
        for ours, other, goal in pairs:
            a, b = rate(broker, workload, size, ours), rate(broker, workload, size, other)
            if a is None or b is None or not b:
                continue
            checks.append(
                {
                    "broker": broker,
                    "workload": workload,
                    "size": size,
                    "ours": ours,
                    "other": other,
                    "ratio": a / b,
                    "goal": goal,
                    "met": a / b >= goal,
                }
            )
    brokers = list(DEFAULT_URLS)
    checks.sort(key=lambda c: (brokers.index(c["broker"]), WORKLOADS.index(c["workload"]), c["size"]))
    return checks


# -- report ------------------------------------------------------------------------------


def _fmt_rate(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "msgs_per_s" not in row:
        return "not run" if str(row.get("error", "")).startswith("not run") else "failed"
    text = f"{row['msgs_per_s']:,.0f}"
    if row.get("ratio") is not None and row["impl"] != row.get("baseline"):
        text += f" ({row['ratio']:.2f}x)"
    return text


def write_report(
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    out: Path,
    plots: list[Path] | None = None,
) -> None:
    checks = targets(rows)
    lines = [
        "# Performance",
        "",
        "<!-- generated by scripts/bench (python -m bench.run); edit bench/run.py, not this file -->",
        "",
        f"Measured on {meta['date']} ({meta['machine']}, {meta['cpus']} CPU(s) shared with "
        f"other work), {meta['rounds']} round(s) per cell, alternating the implementations and "
        f"rotating their order each round; every figure is the median. Messages per run: "
        f"{meta['messages']:,} for 100 B payloads, a quarter of that for 10 KiB; "
        f"`publish_confirm` and `latency` a tenth of those (latency at "
        f"{LATENCY_RATE:,.0f} msg/s). Payloads: {', '.join(str(s) + ' B' for s in meta['sizes'])}.",
        "",
        "Regenerate with `scripts/bench` (all brokers of `scripts/brokers` that are up; see "
        "[How to run](#how-to-run)).",
        "",
    ]
    if meta.get("quick"):
        lines += ["**Quick smoke run: too few messages for the figures to mean anything.**", ""]
    lines += [
        "Workloads (the same for every implementation):",
        "",
        "* `publish_confirm`: one message at a time, each waiting for the broker's confirm.",
        "* `publish_batch`: publish everything without waiting, then wait for all confirms.",
        "* `consume`: a subscribed group, a topic pre-filled with every message, timed from "
        "the first receive to the last (acked as each implementation acks by default).",
        "* `end_to_end`: a producer and a consumer running at once on one topic.",
        "* `latency`: a fixed rate of 1,000 msg/s; send-to-receive time of each message "
        "(the send time travels in a header, or in the body where the broker has none).",
        "",
        "Cells give msg/s and, in parentheses, the ratio to the first column (the raw client "
        "library; a bare `asyncio.Queue` loop for memory://). Higher is better.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    if plots:
        lines += ["## Plots", ""]
        for plot in plots:
            rel = os.path.relpath(plot, out.parent)
            lines += [f"![{plot.stem}]({rel})", ""]
    if checks:
        met = sum(1 for c in checks if c["met"])
        lines += [
            "## Targets",
            "",
            f"{met} of {len(checks)} checks met. Goals: this library's throughput >= 0.95x the "
            "raw client on every broker and workload; the in-memory `Channel` >= 0.8x a bare "
            "`asyncio.Queue` loop; faster (>= 1.0x) than FastStream and faust-streaming on "
            "every shared case. Ratios are ours / theirs.",
            "",
            "| broker | workload | size | ours | vs | ratio | goal | met |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['broker']} | {c['workload']} | {c['size']} | {c['ours']} | {c['other']} | "
                f"{c['ratio']:.2f} | {c['goal']:.2f} | {'yes' if c['met'] else '**no**'} |"
            )
        lines.append("")
    if meta.get("notes"):
        lines += ["## Notes", "", *meta["notes"], ""]
    for broker in meta["brokers"]:
        impls = list(IMPLEMENTATIONS[broker])
        lines += [f"## {broker}", "", f"URL: `{meta['urls'][broker]}`", ""]
        if broker in meta.get("skipped", {}):
            lines += [f"Not run: {meta['skipped'][broker]}.", ""]
            continue
        broker_rows = [r for r in rows if r["broker"] == broker]
        lines += [
            "| workload | size | " + " | ".join(impls) + " |",
            "|---|---|" + "---|" * len(impls),
        ]
        for workload in WORKLOADS:
            for size in meta["sizes"]:
                cells = {r["impl"]: r for r in broker_rows if r["workload"] == workload and r["size"] == size}
                if not cells:
                    continue
                lines.append(f"| {workload} | {size} | " + " | ".join(_fmt_rate(cells.get(i)) for i in impls) + " |")
        lat = [r for r in broker_rows if r["workload"] == "latency" and "p50_ms" in r]
        if lat:
            lines += [
                "",
                "Latency at 1,000 msg/s (ms):",
                "",
                "| size | implementation | p50 | p99 | p99.9 |",
                "|---|---|---|---|---|",
            ]
            for r in lat:
                lines.append(
                    f"| {r['size']} | {r['impl']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} |"
                )
        problems = [r for r in broker_rows if "error" in r or "partial_error" in r]
        if problems:
            lines += ["", "Runs that failed:", ""]
            for r in problems:
                if "error" in r:
                    lines.append(f"* {r['workload']} {r['size']} B, {r['impl']}: {r['error']}")
                else:
                    lines.append(
                        f"* {r['workload']} {r['size']} B, {r['impl']}: a round failed "
                        f"({r['partial_error']}); the median is of the {r['runs']} that ran"
                    )
        lines += ["", "Settings:", ""]
        for name in impls:
            lines.append(f"* **{name}**: {meta['settings'][broker].get(name, '')}")
        lines.append("")
    lines += [
        "## How to run",
        "",
        "```",
        "scripts/bench                  # every broker that is up; writes this file and the plots",
        "scripts/bench --quick          # smoke run (CI): 200 messages, one round, report in $TMPDIR",
        "scripts/bench --brokers memory,kafka --messages 50000 --rounds 5",
        "channels bench kafka://127.0.0.1:9092 --messages 20000 --size 1024   # our API only",
        "python -m bench.rss            # resident memory while streaming 1,000,000 messages",
        "python -m bench.run --from-json bench/results.json   # re-render this file and the plots",
        "```",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--brokers", default=",".join(DEFAULT_URLS), help="comma-separated: " + ",".join(DEFAULT_URLS))
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="payload sizes in bytes (default 100,10240)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 messages, one round")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report path (default docs/performance.md; with --quick a file in the temp directory, "
        "so a smoke run never replaces the committed report)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows (for --merge, --from-json)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="JSON of an earlier run: keep its rows for brokers not measured now",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: write the report and plots from a results JSON of an earlier run",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = (
            Path(tempfile.gettempdir()) / "anychannel-bench-quick" / "performance.md"
            if args.quick
            else ROOT / "docs" / "performance.md"
        )
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        saved["meta"]["settings"] = settings()
        saved["meta"]["notes"] = _notes()
        _write_all(saved["rows"], saved["meta"], args)
        return 0
    if args.quick:
        args.messages, args.rounds = 200, 1
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for broker in brokers:
        if broker not in DEFAULT_URLS:
            parser.error(f"unknown broker {broker!r}")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    urls = {b: os.environ.get(f"BENCH_{b.upper()}_URL", DEFAULT_URLS[b]) for b in DEFAULT_URLS}
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for broker in brokers:
        print(f"{broker}:", file=sys.stderr)
        if not broker_up(urls[broker]):
            skipped[broker] = "broker down (nothing answers on its port)"
            print(f"  {broker}: not run, broker down", file=sys.stderr)
            continue
        rows += asyncio.run(measure(broker, urls[broker], args.messages, args.rounds, sizes))
    measured = list(brokers)
    if args.merge is not None and args.merge.exists():
        old = json.loads(args.merge.read_text(encoding="utf-8"))
        keep = [b for b in old["meta"]["brokers"] if b not in measured or b in skipped]
        keep = [b for b in keep if b not in old["meta"].get("skipped", {})]
        rows += [r for r in old["rows"] if r["broker"] in keep]
        for b in keep:
            skipped.pop(b, None)
            if b not in measured:
                measured.append(b)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.system()}",
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "messages": args.messages,
        "sizes": list(sizes),
        "quick": args.quick,
        "brokers": [b for b in DEFAULT_URLS if b in measured],
        "urls": {b: _redact(u) for b, u in urls.items()},
        "skipped": skipped,
        "versions": versions(),
        "settings": settings(),
        "notes": _notes(),
    }
    _write_all(rows, meta, args)
    return 0


def _write_all(rows: list[dict[str, Any]], meta: dict[str, Any], args: argparse.Namespace) -> None:
    plots: list[Path] = []
    plot_dir = args.out.parent / "performance"
    if not args.no_plots:
        try:
            from bench.plots import write_plots

            plots = write_plots(rows, meta, plot_dir)
        except ImportError as exc:
            print(f"plots skipped: {exc}", file=sys.stderr)
    write_report(rows, meta, args.out, plots)
    json_out = args.json
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


def _redact(url: str) -> str:
    from channels.url import parse_url

    try:
        return parse_url(url).redacted()
    except Exception:
        return url.split("://", 1)[0] + "://..."


def _notes() -> list[str]:
    path = ROOT / "bench" / "NOTES.md"
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").strip().splitlines()


if __name__ == "__main__":
    sys.exit(main())
