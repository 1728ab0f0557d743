"""The whole conformance suite against the example driver: the thin file a plugin author writes."""

from __future__ import annotations

from channels.registry import register
from channels.testing import Harness, conformance_suite

from .loopback import LoopbackTransport

# A published plugin registers its scheme with an entry point instead:
#   [project.entry-points."channels.transports"]
#   loopback = "anychannel_loopback:LoopbackTransport"
register("loopback", LoopbackTransport)

TestLoopbackConformance = conformance_suite(Harness(url="loopback://"))
