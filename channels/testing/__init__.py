"""The conformance suite and its harness (a pytest plugin, inactive unless asked for).

A driver's thin test file::

    from channels.testing import Harness, conformance_suite

    TestMyConformance = conformance_suite(Harness(url="mydriver://127.0.0.1"))

The suite needs pytest (``pip install 'anychannel[testing]'``); the core never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from channels.testing.harness import Harness
    from channels.testing.suite import CASES, ConformanceSuite, Context, conformance_suite, run_case
    from channels.testing.tally import Tally

__all__ = [
    "CASES",
    "ConformanceSuite",
    "Context",
    "Harness",
    "Tally",
    "conformance_suite",
    "run_case",
]

_HOMES = {
    "Harness": "channels.testing.harness",
    "Tally": "channels.testing.tally",
    "CASES": "channels.testing.suite",
    "ConformanceSuite": "channels.testing.suite",
    "Context": "channels.testing.suite",
    "conformance_suite": "channels.testing.suite",
    "run_case": "channels.testing.suite",
}


def __getattr__(name: str) -> Any:
    # Loaded on first use, so the harness and the capability table import without pytest.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
