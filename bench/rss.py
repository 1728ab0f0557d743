"""Resident memory while streaming many messages through a bounded topic.

    python -m bench.rss                                  # memory:// 1,000,000 + nsq 100,000
    python -m bench.rss --run memory://?max_queued=10000 1000000 --plot /tmp/rss.png

Each run is a fresh process: one App, one internal topic whose group queue and prefetch
window are bounded, a producer that keeps at most ~3,000 messages unconfirmed (it awaits
the confirm of the message sent 2,000 earlier) and a consumer stream reading as fast as it
can. Resident memory (``/proc/self/statm``) is sampled every ``--interval`` seconds. The
target: after warm-up (the first 5 % of the messages), resident memory stays within
50 MiB of its lowest value. Writes a PNG plot and, with ``--json``, the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [("memory://?max_queued=10000", 1_000_000), ("nsq://127.0.0.1:4150", 100_000)]
LIMIT_MIB = 50.0
WINDOW = 1000


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def stream(url: str, n: int, size: int, maxsize: int, interval: float) -> dict[str, Any]:
    from channels.app import App

    samples: list[tuple[float, int, float]] = []
    received = 0
    async with App("bench-rss", broker=url) as app:
        topic = app.topic(f"bench-rss-{uuid.uuid4().hex[:10]}", internal=True, group="bench-rss", maxsize=maxsize)
        await topic.declare()
        value = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        start = time.perf_counter()

        async def sample() -> None:
            while True:
                samples.append((time.perf_counter() - start, received, rss_mib()))
                await asyncio.sleep(interval)

        async def produce() -> None:
            marks: list[Any] = []
            for i in range(n):
                fut = topic.send_soon(value=value)
                if i % WINDOW == WINDOW - 1:
                    marks.append(fut)
                    if len(marks) > 2:
                        await marks.pop(0)  # at most ~3 windows unconfirmed
            await app.producer.flush()

        async def consume() -> None:
            nonlocal received
            async with topic.events() as events:
                while received < n:
                    await events.get(timeout=60)
                    received += 1

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(produce(), consume())
        finally:
            sampler.cancel()
        seconds = time.perf_counter() - start
        samples.append((seconds, received, rss_mib()))
    warm = [s for s in samples if s[1] >= n * 0.05] or samples
    low = min(s[2] for s in warm)
    peak = max(s[2] for s in warm)
    return {
        "url": url.split("?", 1)[0],
        "options": url.split("?", 1)[1] if "?" in url else "",
        "messages": n,
        "size": size,
        "maxsize": maxsize,
        "seconds": seconds,
        "msgs_per_s": n / seconds,
        "rss_start_mib": samples[0][2],
        "rss_low_after_warmup_mib": low,
        "rss_peak_mib": peak,
        "rss_end_mib": samples[-1][2],
        "growth_mib": peak - low,
        "flat": peak - low <= LIMIT_MIB,
        "samples": samples,
    }


def _single(args: argparse.Namespace) -> int:
    url, n = args.single
    result = asyncio.run(stream(url, int(n), args.size, args.maxsize, args.interval))
    print(json.dumps(result))
    return 0


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        xs = [s[1] for s in r["samples"]]
        ys = [s[2] for s in r["samples"]]
        ax.plot(xs, ys, label=f"{r['url']} ({r['messages']:,} msgs, +{r['growth_mib']:.1f} MiB)")
    ax.set_xlabel("messages received")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"RSS while streaming through a bounded topic (target: flat within {LIMIT_MIB:.0f} MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run",
        nargs=2,
        action="append",
        metavar=("URL", "MESSAGES"),
        help="a broker URL and a message count (repeatable)",
    )
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--maxsize", type=int, default=1000, help="the topic's prefetch window")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "performance" / "rss.png")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--single", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        return _single(args)
    runs = [(u, int(n)) for u, n in args.run] if args.run else DEFAULT_RUNS
    results: list[dict[str, Any]] = []
    for url, n in runs:
        print(f"{url}: {n:,} messages ...", file=sys.stderr)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.rss",
                "--single",
                url,
                str(n),
                "--size",
                str(args.size),
                "--maxsize",
                str(args.maxsize),
                "--interval",
                str(args.interval),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if proc.returncode != 0:
            print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"  {r['msgs_per_s']:,.0f} msg/s; RSS start {r['rss_start_mib']:.1f} MiB, low after "
            f"warm-up {r['rss_low_after_warmup_mib']:.1f}, peak {r['rss_peak_mib']:.1f}, end "
            f"{r['rss_end_mib']:.1f}: growth {r['growth_mib']:.1f} MiB -> "
            + ("flat" if r["flat"] else f"NOT flat (limit {LIMIT_MIB:.0f} MiB)"),
            file=sys.stderr,
        )
    if results:
        plot(results, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
