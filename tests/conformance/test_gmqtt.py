"""The conformance suite against Mosquitto with the gmqtt driver (every case its
capabilities allow, including the broker restart)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestGmqttConformance = conformance_suite(
    Harness(
        url=os.environ.get("CHANNELS_TEST_GMQTT_URL", "gmqtt://127.0.0.1:1883"),
        restart_command=["scripts/brokers", "restart", "mqtt"],
    )
)
