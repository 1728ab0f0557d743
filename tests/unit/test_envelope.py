from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from channels import envelope
from channels.errors import DecodeError

DOC = Path(__file__).resolve().parents[2] / "docs" / "envelope.md"


def _vectors(kind: str) -> list[dict[str, Any]]:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- vectors:{kind} -->\s*```jsonl\n(.*?)```", text, re.S)
    assert match, f"no {kind} vectors in {DOC}"
    return [json.loads(line) for line in match.group(1).splitlines() if line.strip()]


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


@pytest.mark.parametrize("vector", _vectors("valid"), ids=lambda v: v["name"])
def test_valid_vectors_encode_and_decode(vector: dict[str, Any]) -> None:
    key, value = _hex(vector["key"]), _hex(vector["value"])
    headers = {name: bytes.fromhex(data) for name, data in vector["headers"].items()}
    wire = bytes.fromhex(vector["wire"])
    assert envelope.wrap(key, value, headers) == wire
    assert envelope.unwrap(wire) == (key, value, headers)


@pytest.mark.parametrize("vector", _vectors("invalid"), ids=lambda v: v["name"])
def test_invalid_vectors_raise_decode_error(vector: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        envelope.unwrap(bytes.fromhex(vector["wire"]))


@pytest.mark.parametrize("vector", _vectors("raw"), ids=lambda v: v["name"])
def test_payload_without_magic_is_raw(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire"])
    assert envelope.unwrap(wire) == (None, wire, {})


def test_documented_vector_counts() -> None:
    assert len(_vectors("valid")) >= 6
    assert len(_vectors("invalid")) >= 7
