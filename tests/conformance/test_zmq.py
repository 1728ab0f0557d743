"""The conformance suite against ``channels zmq-broker`` (``scripts/brokers up zmq``)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestZmqConformance = conformance_suite(
    Harness(
        url=os.environ.get("CHANNELS_TEST_ZMQ_URL", "zmq://127.0.0.1:5560"),
        restart_command=["scripts/brokers", "restart", "zmq"],
    )
)
