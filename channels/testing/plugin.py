"""The pytest plugin (entry point ``pytest11: channels``): inactive unless asked for.

``pytest --channels-url URL`` (or ``CHANNELS_CONFORMANCE_URL=URL pytest``) adds the
conformance suite for URL to whatever else pytest collects. Without either, the plugin only
adds its command-line options and changes nothing.

Fixtures for a driver author's own tests: ``channels_url`` (the URL given by option or
environment) and ``channels_harness`` (a :class:`Harness` for it); both skip the test when
no URL was given.

Options: ``--channels-url URL``, ``--channels-restart-command CMD`` (shell words; also
``CHANNELS_CONFORMANCE_RESTART``), ``--channels-timeout-scale X`` (also
``CHANNELS_CONFORMANCE_TIMEOUT_SCALE``).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from channels.testing.harness import Harness

__all__ = ["SUITE_MODULE", "ConformancePlugin", "active_harness"]

ENV_URL = "CHANNELS_CONFORMANCE_URL"
ENV_RESTART = "CHANNELS_CONFORMANCE_RESTART"
ENV_SCALE = "CHANNELS_CONFORMANCE_TIMEOUT_SCALE"

#: the module pytest collects to run the suite for the active harness
SUITE_MODULE = "channels.testing.selected"
SUITE_FILE = Path(__file__).with_name("selected.py")

_active: Harness | None = None


def active_harness() -> Harness | None:
    """The harness the plugin (or ``channels conformance``) is running the suite for."""
    return _active


class ConformancePlugin:
    """Runs the suite for one harness. ``collect=True`` adds the suite module to pytest's
    arguments; ``channels conformance`` passes the module path itself."""

    def __init__(self, harness: Harness, *, collect: bool = True) -> None:
        self.harness = harness
        self.collect = collect

    def pytest_configure(self, config: pytest.Config) -> None:
        global _active
        _active = self.harness
        # a previous in-process run may have imported it for another harness
        sys.modules.pop(SUITE_MODULE, None)
        if self.collect and str(SUITE_FILE) not in config.args:
            config.args.append(str(SUITE_FILE))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        global _active
        _active = None
        sys.modules.pop(SUITE_MODULE, None)

    def pytest_report_header(self, config: pytest.Config) -> str:
        caps = self.harness.capabilities()
        flags = ", ".join(k for k, v in caps.as_dict().items() if v is True)
        return (
            f"channels conformance: {self.harness.redacted_url()} ({self.harness.driver_name()}: {flags or 'no flags'})"
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("channels", "anychannel conformance suite")
    group.addoption(
        "--channels-url",
        default=None,
        metavar="URL",
        help=f"run the anychannel conformance suite against URL (or set ${ENV_URL})",
    )
    group.addoption(
        "--channels-restart-command",
        default=None,
        metavar="CMD",
        help="command (shell words) that restarts the broker, for the persistence case",
    )
    group.addoption(
        "--channels-timeout-scale",
        default=None,
        type=float,
        metavar="X",
        help="multiply every wait of the suite by X (slow brokers)",
    )


def _harness_from(config: pytest.Config) -> Harness | None:
    url = config.getoption("channels_url", None) or os.environ.get(ENV_URL)
    if not url:
        return None
    restart = config.getoption("channels_restart_command", None) or os.environ.get(ENV_RESTART)
    scale = config.getoption("channels_timeout_scale", None)
    if scale is None:
        scale = float(os.environ.get(ENV_SCALE) or 1.0)
    return Harness(
        url=url,
        restart_command=shlex.split(restart) if restart else None,
        timeout_scale=scale,
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): time limit (pytest-timeout)")
    harness = _harness_from(config)
    if harness is not None:
        config.pluginmanager.register(ConformancePlugin(harness), "channels-conformance")


@pytest.fixture
def channels_harness(request: pytest.FixtureRequest) -> Harness:
    """A Harness for the URL of ``--channels-url`` / ``$CHANNELS_CONFORMANCE_URL``."""
    harness = _active or _harness_from(request.config)
    if harness is None:
        pytest.skip(f"no broker URL: give --channels-url or ${ENV_URL}")
    return harness


@pytest.fixture
def channels_url(channels_harness: Harness) -> str:
    """The broker URL of ``--channels-url`` / ``$CHANNELS_CONFORMANCE_URL``."""
    return channels_harness.url
