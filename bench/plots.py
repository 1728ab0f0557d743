"""PNG plots of a bench.run result: throughput per broker x workload, latency percentiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.run import IMPLEMENTATIONS, WORKLOADS

THROUGHPUT = tuple(w for w in WORKLOADS if w != "latency")


def write_plots(rows: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for broker in meta["brokers"]:
        broker_rows = [r for r in rows if r["broker"] == broker and "msgs_per_s" in r]
        if not broker_rows:
            continue
        path = out_dir / f"throughput-{broker}.png"
        _throughput(broker, broker_rows, meta["sizes"], path)
        written.append(path)
    lat = [r for r in rows if r["workload"] == "latency" and "p50_ms" in r]
    if lat:
        path = out_dir / "latency.png"
        _latency(lat, meta, path)
        written.append(path)
    return written


def _throughput(broker: str, rows: list[dict[str, Any]], sizes: list[int], path: Path) -> None:
    impls = [i for i in IMPLEMENTATIONS[broker] if any(r["impl"] == i for r in rows)]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        workloads = [w for w in THROUGHPUT if any(r["workload"] == w and r["size"] == size for r in rows)]
        width = 0.8 / max(1, len(impls))
        for k, impl in enumerate(impls):
            values = []
            for w in workloads:
                match = [r for r in rows if r["workload"] == w and r["size"] == size and r["impl"] == impl]
                values.append(match[0]["msgs_per_s"] if match else 0.0)
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(workloads))]
            ax.bar(xs, values, width, label=impl)
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels([w.replace("_", "\n") for w in workloads], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("messages / s (log)")
        ax.set_title(f"{broker}: {size} B payload")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _latency(rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    sizes = meta["sizes"]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    for ax, size in zip((a[0] for a in axes), sizes, strict=True):
        labels: list[str] = []
        p50: list[float] = []
        p99: list[float] = []
        for broker in meta["brokers"]:
            for impl in IMPLEMENTATIONS[broker]:
                match = [r for r in rows if r["broker"] == broker and r["impl"] == impl and r["size"] == size]
                if match:
                    labels.append(f"{broker}\n{impl}")
                    p50.append(match[0]["p50_ms"])
                    p99.append(match[0]["p99_ms"])
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=6, rotation=0)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"send-to-receive latency at 1,000 msg/s, {size} B payload (lower is better)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
