"""What pytest collects when the suite runs for a URL given to the plugin or the CLI.

Importing it without an active harness defines nothing, so it is never a side effect.
"""

from __future__ import annotations

from channels.testing.plugin import active_harness
from channels.testing.suite import conformance_suite

_harness = active_harness()
if _harness is not None:
    TestConformance = conformance_suite(_harness)
