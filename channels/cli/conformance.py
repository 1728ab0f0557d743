"""``channels conformance URL``: run the conformance suite against any broker URL.

The suite ships inside the package (``channels.testing``), so this works from any
directory once ``pytest`` and ``pytest-asyncio`` are installed (``pytest-timeout`` is used
when present). pytest runs in this process with a configuration of its own: the current
directory's pytest settings and conftest files are not read.

Prints pytest's progress and failures, then a matrix (case, outcome, seconds, reason).
``--json FILE`` writes ``{"url", "driver", "capabilities", "cases": [{"name", "outcome",
"reason", "seconds"}], "summary"}`` (the URL redacted). Exit status: 0 when nothing failed,
1 when a case failed (or none matched ``-k``), 2 for a bad URL, a missing driver or test tool,
or a broker that does not answer (one connection is tried before the suite starts).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels.testing.harness import Harness


__all__ = ["register", "run_suite"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_OUTCOME_STYLE = {"passed": "green", "skipped": "yellow", "failed": "bold red", "error": "bold red"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "conformance",
        help="run the conformance suite against a broker URL",
        description="Run the conformance suite against any broker URL and print the matrix.",
        epilog="Example: channels conformance memory:// --json memory.json",
    )
    parser.add_argument("url", metavar="URL", nargs="?", help="broker URL, e.g. kafka://127.0.0.1:9092")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only cases matching EXPR (pytest -k)")
    parser.add_argument(
        "--restart-command",
        metavar="CMD",
        help="command (shell words) that restarts the broker, for the persistence case",
    )
    parser.add_argument("--timeout-scale", type=float, default=1.0, metavar="X", help="multiply every wait by X")
    parser.add_argument("--list", action="store_true", help="list the cases and their gates, run nothing")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    parser.set_defaults(func=_main)


class ResultCollector:
    """A pytest plugin object that records one outcome per case."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}

    @staticmethod
    def case_name(nodeid: str) -> str:
        return nodeid.rsplit("::", 1)[-1].removeprefix("test_")

    def pytest_collection_finish(self, session: Any) -> None:
        for item in session.items:
            name = self.case_name(item.nodeid)
            self.cases[name] = {"name": name, "outcome": "not run", "reason": "", "seconds": 0.0}

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = self.case_name(report.nodeid)
        entry = self.cases.setdefault(name, {"name": name, "outcome": "not run", "reason": "", "seconds": 0.0})
        entry["seconds"] = round(entry["seconds"] + report.duration, 3)
        if report.skipped:
            entry["outcome"] = "skipped"
            longrepr = report.longrepr
            text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            entry["reason"] = text.removeprefix("Skipped: ")
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["reason"] = _failure_text(report)
        elif report.when == "call" and entry["outcome"] == "not run":
            entry["outcome"] = "passed"


def _failure_text(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(report.longrepr).strip().splitlines()[-1]
    return str(text)[:2000]


def run_suite(
    harness: Harness, *, keyword: str | None = None, exitfirst: bool = False
) -> tuple[int, list[dict[str, Any]]]:
    """Run the suite in this process; return pytest's exit code and one dict per case."""
    import pytest

    from channels.testing.plugin import SUITE_FILE, ConformancePlugin

    collector = ResultCollector()
    with tempfile.TemporaryDirectory(prefix="channels-conformance-") as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        argv = [
            str(SUITE_FILE),
            "-c", str(ini),
            "--rootdir", str(SUITE_FILE.parent),
            "--noconftest",
            "-p", "no:channels",
            "-p", "no:cacheprovider",
            "-q",
            # Python's own traceback format: pytest's source rendering can crash on deep stacks
            "--tb=native",
            # channels and transports are imported already (we are the `channels` command)
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
        ]  # fmt: skip
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            argv += ["-p", "pytest_asyncio.plugin"]
            if importlib.util.find_spec("pytest_timeout") is not None:
                argv += ["-p", "pytest_timeout"]
        if keyword:
            argv += ["-k", keyword]
        if exitfirst:
            argv.append("-x")
        code = pytest.main(argv, plugins=[ConformancePlugin(harness, collect=False), collector])
    return int(code), list(collector.cases.values())


def _main(args: argparse.Namespace) -> int:
    missing = [name for name in ("pytest", "pytest_asyncio") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"channels conformance: needs {', '.join(missing)} (pip install pytest pytest-asyncio pytest-timeout)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from rich.console import Console

    if args.list:
        return _list_cases(Console())
    if not args.url:
        print("channels conformance: a broker URL is required", file=sys.stderr)
        return EXIT_USAGE
    from channels.testing.harness import Harness

    restart = shlex.split(args.restart_command) if args.restart_command else _repo_restart_command(args.url)
    harness = Harness(
        url=args.url,
        restart_command=restart,
        timeout_scale=args.timeout_scale,
    )
    caps = harness.capabilities()  # ConfigurationError: bad URL or driver missing (exit 2)
    console = Console()
    # One connection first: an unreachable broker is exit 2 at once, not 41 slow failures.
    asyncio.run(_preflight(harness))
    if caps.persistent and not harness.can_restart:
        console.print(
            "[yellow]note:[/] the driver claims 'persistent'; without --restart-command the "
            "case broker_restart_loses_nothing fails (it cannot be proven otherwise)"
        )
    code, cases = run_suite(harness, keyword=args.keyword, exitfirst=args.exitfirst)
    if code == pytest_exit("USAGE_ERROR"):
        print(f"channels conformance: pytest refused the arguments (exit code {code})", file=sys.stderr)
        return EXIT_USAGE
    if code in (pytest_exit("INTERRUPTED"), pytest_exit("INTERNAL_ERROR")):
        # Report what ran; the rest shows as "not run".
        print(f"channels conformance: pytest stopped early (exit code {code})", file=sys.stderr)
    summary: dict[str, int] = {}
    for entry in cases:
        summary[entry["outcome"]] = summary.get(entry["outcome"], 0) + 1
    _print_matrix(console, harness, cases, summary)
    if args.json:
        result = {
            "url": harness.redacted_url(),
            "driver": harness.driver_name(),
            "capabilities": caps.as_dict(),
            "cases": cases,
            "summary": summary,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"results written to {path}")
    if not cases:
        print("channels conformance: no case ran (does -k match any?)", file=sys.stderr)
        return EXIT_FAILED
    bad = summary.get("failed", 0) + summary.get("error", 0) + summary.get("not run", 0)
    return EXIT_OK if bad == 0 and code == 0 else EXIT_FAILED


async def _preflight(harness: Harness) -> None:
    app = harness.app(connect_timeout=harness.timeout(15.0))
    try:
        await app.start()
    finally:
        await app.stop()


def pytest_exit(name: str) -> int:
    import pytest

    return int(getattr(pytest.ExitCode, name))


def _print_matrix(console: Any, harness: Harness, cases: list[dict[str, Any]], summary: dict[str, int]) -> None:
    from rich.table import Table

    table = Table(title=f"conformance of {harness.driver_name()} at {harness.redacted_url()}")
    table.add_column("case", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("seconds", justify="right")
    table.add_column("reason", overflow="fold")
    for entry in cases:
        style = _OUTCOME_STYLE.get(entry["outcome"], "")
        reason = entry["reason"].splitlines()[0] if entry["reason"] else ""
        table.add_row(
            entry["name"],
            f"[{style}]{entry['outcome']}[/]" if style else entry["outcome"],
            f"{entry['seconds']:.2f}",
            reason[:300],
        )
    console.print(table)
    console.print(", ".join(f"{n} {k}" for k, n in sorted(summary.items())) or "nothing ran")


def _list_cases(console: Any) -> int:
    from rich.table import Table

    from channels.testing.suite import describe_cases

    table = Table(title="conformance cases")
    table.add_column("case")
    table.add_column("runs when")
    table.add_column("checks", overflow="fold")
    for name, gate, doc in describe_cases():
        table.add_row(name, gate or "always", doc)
    console.print(table)
    return EXIT_OK


#: URL scheme -> the name ``scripts/brokers restart`` takes
_BROKER_NAMES = {"kafka": "kafka", "amqp": "rabbitmq", "mqtt": "mqtt", "gmqtt": "mqtt", "nsq": "nsq", "zmq": "zmq"}


def _repo_restart_command(url: str) -> list[str] | None:
    """Inside this repository, the test brokers restart with ``scripts/brokers restart NAME``."""
    script = Path("scripts") / "brokers"
    name = _BROKER_NAMES.get(url.split("://", 1)[0].split("+", 1)[0].lower())
    if name is None or not script.is_file():
        return None
    print(f"channels conformance: restarting the broker with `{script} restart {name}`", file=sys.stderr)
    return [str(script), "restart", name]
