"""The suite fails broken drivers, with a message that says what went wrong.

Toy drivers (tests/toys) each have one bug; the matching case must fail on them and pass
on memory://. Also: the pytest plugin is inactive unless asked for, and `channels
conformance` exits 1 with the failure in its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from channels.cli.main import main as channels_main
from channels.testing import CASES, Harness, run_case
from tests.toys import AmnesiaHarness, KeepingHarness, register_toys

register_toys()

#: toys wait a tenth of the usual time: the memory driver answers at once
FAST = 0.1

CAUGHT = [
    (
        "toy-lossy://",
        "round_trip_1000",
        r"messages lost .*: sent 1000, received 998 unique, "
        r"lost 2 \(ids m00499, m00999\), duplicates 0$",
    ),
    (
        "toy-dup://",
        "round_trip_1000",
        r"duplicates on a driver that promises exactly-once delivery: .*duplicates [1-9]",
    ),
    ("toy-reorder://", "per_key_ordering", r"messages out of order: .*out of order [1-9]"),
    ("toy-header://", "headers_fidelity", r"rich: header 'empty' lost"),
]


@pytest.mark.parametrize(("url", "case", "message"), CAUGHT, ids=[c[0] for c in CAUGHT])
async def test_suite_catches_broken_driver(url: str, case: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        await run_case(Harness(url=url, timeout_scale=FAST), case)


@pytest.mark.parametrize("case", sorted({c[1] for c in CAUGHT}))
async def test_same_cases_pass_on_memory(case: str) -> None:
    await run_case(Harness(url="memory://"), case)


@pytest.mark.parametrize("url", ["toy-lossy://", "toy-reorder://", "toy-header://"])
async def test_toys_pass_what_they_do_not_break(url: str) -> None:
    """Each toy breaks one thing: unrelated cases still pass (the failures above are not noise)."""
    for case in ("key_fidelity_and_none_value", "fanout_two_groups", "nack_redelivers"):
        await run_case(Harness(url=url, timeout_scale=FAST), case)


async def test_restart_case_passes_when_the_broker_keeps_messages() -> None:
    await run_case(KeepingHarness(url="toy-persistent://", timeout_scale=FAST), "broker_restart_loses_nothing")
    # the default restart path: run restart_command
    harness = Harness(url="toy-persistent://", restart_command=["true"], timeout_scale=FAST)
    await run_case(harness, "broker_restart_loses_nothing")


async def test_restart_case_catches_a_broker_that_forgets() -> None:
    with pytest.raises(AssertionError, match=r"lost across a broker restart.*lost [1-9]\d* \(ids stored"):
        await run_case(AmnesiaHarness(url="toy-persistent://", timeout_scale=0.04), "broker_restart_loses_nothing")


async def test_restart_case_fails_without_a_way_to_restart() -> None:
    with pytest.raises(AssertionError, match="cannot restart the broker"):
        await run_case(Harness(url="toy-persistent://"), "broker_restart_loses_nothing")


def test_enough_distinct_cases() -> None:
    assert len(CASES) >= 25
    assert all(info.doc for info in CASES.values()), "every case says what it checks"


def test_harness_names_are_portable() -> None:
    harness = Harness(url="memory://", name_prefix="My Prefix!")
    names = {harness.topic_name("a very long case name " * 5) for _ in range(100)}
    names |= {harness.group_name("Case") for _ in range(100)}
    assert len(names) == 200
    for name in names:
        assert len(name) <= 48 and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789-_" for ch in name), name


def _pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_plugin_inactive_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CHANNELS_CONFORMANCE_URL"}
    plain = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--co"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "1 test collected" in plain.stdout, plain.stdout
    asked = _pytest(tmp_path, "--channels-url", "memory://", "-k", "plain or round_trip or key_fidelity")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "3 passed" in asked.stdout, asked.stdout
    by_env = _pytest(tmp_path, "--co", env={"CHANNELS_CONFORMANCE_URL": "memory://"})
    assert f"{len(CASES) + 1} tests collected" in by_env.stdout, by_env.stdout


def test_plugin_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_fixture.py").write_text(
        "def test_url(channels_url, channels_harness):\n"
        "    assert channels_url == channels_harness.url == 'memory://?partitions=2'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CHANNELS_CONFORMANCE_URL"}
    without = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "test_fixture.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert "1 skipped" in without.stdout and "--channels-url" in without.stdout, without.stdout
    given = _pytest(tmp_path, "test_fixture.py", "--channels-url", "memory://?partitions=2", "-k", "url")
    assert "1 passed" in given.stdout, given.stdout


def test_cli_reports_failure(tmp_path: Path) -> None:
    out = tmp_path / "lossy.json"
    status = channels_main(
        [
            "conformance",
            "toy-lossy://",
            "-k",
            "round_trip or headers",
            "--timeout-scale",
            str(FAST),
            "--json",
            str(out),
        ]
    )
    assert status == 1
    result = json.loads(out.read_text())
    assert result["url"] == "toy-lossy://"
    outcomes = {c["name"]: c for c in result["cases"]}
    assert outcomes["round_trip_1000"]["outcome"] == "failed"
    assert "lost 2" in outcomes["round_trip_1000"]["reason"]
    assert outcomes["headers_fidelity"]["outcome"] == "passed"


def test_cli_passes_memory_and_redacts(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    status = channels_main(["conformance", "memory://?partitions=4", "-k", "round_trip or replay", "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["capabilities"]["consumer_groups"] is True
    outcomes = {c["name"]: c for c in result["cases"]}
    assert outcomes["round_trip_1000"]["outcome"] == "passed"
    assert outcomes["replay_from_start"] == {
        "name": "replay_from_start",
        "outcome": "skipped",
        "reason": "driver lacks capability 'replay_from_start'",
        "seconds": outcomes["replay_from_start"]["seconds"],
    }
