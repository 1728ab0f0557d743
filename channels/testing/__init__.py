"""The conformance suite and its harness (a pytest plugin, inactive unless asked for).

A driver's thin test file::

    from channels.testing import Harness, conformance_suite

    TestMyConformance = conformance_suite(Harness(url="mydriver://127.0.0.1"))

Importing this package needs pytest (it is a test tool); the core never imports it.
"""

from __future__ import annotations

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
