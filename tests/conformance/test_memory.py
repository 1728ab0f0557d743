"""The conformance suite against the in-memory driver (gates only persistence and replay)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestMemoryConformance = conformance_suite(Harness(url=os.environ.get("CHANNELS_TEST_MEMORY_URL", "memory://")))
