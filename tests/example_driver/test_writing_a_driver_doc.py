"""docs/writing-a-driver.md shows the example driver's code as it is."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "writing-a-driver.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_thin_file_in_the_doc_is_the_real_one() -> None:
    thin = (HERE / "test_loopback_conformance.py").read_text()
    body = thin.split("from __future__ import annotations\n\n", 1)[1]
    assert body in _blocks()


def test_capabilities_in_the_doc_are_the_real_ones() -> None:
    source = (HERE / "loopback.py").read_text()
    snippet = next(b for b in _blocks() if "def capabilities" in b)
    body = "\n".join(line.strip() for line in snippet.splitlines())
    real = "\n".join(line.strip() for line in source.splitlines())
    assert body.strip() in real


def test_receive_in_the_doc_matches_the_code() -> None:
    source = (HERE / "loopback.py").read_text()
    snippet = next(b for b in _blocks() if "async def receive" in b)
    for line in snippet.splitlines():
        code = line.split("#")[0].strip()
        if code and code != "...":
            assert code in source, f"doc line not in loopback.py: {code!r}"
