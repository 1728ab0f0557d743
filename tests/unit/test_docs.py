"""The README's example runs (on memory://), so it cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_api_example_runs_on_memory() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = next(b for b in blocks if "asyncio.run(main())" in b)
    code = re.sub(r'broker="[^"]+"', 'broker="memory://"', example)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    first, second = sorted(lines[:2])
    assert first.startswith("u1 id=1 item='tea' {'trace': b'a'}")
    assert second.startswith("u2 id=2 item='milk'")
    assert lines[2] == "1"


def test_readme_capability_table_matches_the_drivers() -> None:
    from channels.testing.captable import update

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert update(readme) == readme, "README.md's capability table is stale: run scripts/capability-table"
