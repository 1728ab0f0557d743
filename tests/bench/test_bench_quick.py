"""Smoke test of the benchmark harness: ``--quick`` on memory:// writes a complete report.

Asserts nothing about speed, only that every expected row is there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run

pytestmark = pytest.mark.timeout(60)


def test_quick_memory_report(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    raw = tmp_path / "results.json"
    assert run.main(["--brokers", "memory", "--quick", "--out", str(out), "--json", str(raw)]) == 0
    text = out.read_text(encoding="utf-8")
    rows = json.loads(raw.read_text(encoding="utf-8"))["rows"]

    impls = run.IMPLEMENTATIONS["memory"]
    modules = {name: run._load(module)[0] for name, module in impls.items()}
    expected = {
        (workload, size, name)
        for workload in run.WORKLOADS
        for size in run.SIZES
        for name, module in modules.items()
        if module is not None
        and hasattr(module, workload)
        # a cell is measured only where at least two implementations have the workload
        and sum(hasattr(m, workload) for m in modules.values() if m is not None) >= 2
    }
    assert expected, "no workload is shared by two memory implementations"
    measured = {(r["workload"], r["size"], r["impl"]) for r in rows if "msgs_per_s" in r}
    assert measured == expected
    assert all(r["msgs_per_s"] > 0 for r in rows if "msgs_per_s" in r)

    # the markdown has one table line per measured workload and size, with every column
    header = "| workload | size | " + " | ".join(impls) + " |"
    assert header in text
    for workload, size in {(w, s) for w, s, _ in expected}:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {workload} | {size} |"))
        assert line.count("|") == len(impls) + 3
    assert "## Targets" in text
    assert "Quick smoke run" in text
