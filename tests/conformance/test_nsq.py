"""The conformance suite against the nsqd of scripts/brokers (every case its capabilities
allow, including the broker restart)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestNsqConformance = conformance_suite(
    Harness(
        url=os.environ.get("CHANNELS_TEST_NSQ_URL", "nsq://127.0.0.1:4150"),
        restart_command=["scripts/brokers", "restart", "nsq"],
    )
)
