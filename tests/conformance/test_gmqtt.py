"""The conformance suite against Mosquitto with the gmqtt driver (every case its
capabilities allow, including the broker restart).

Test sessions expire after 10 minutes (``session_expiry=600``) instead of the driver's
default day, so what the cases leave unacked does not pile up in the shared broker."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

URL = os.environ.get("CHANNELS_TEST_GMQTT_URL", "gmqtt://127.0.0.1:1883")
if "session_expiry=" not in URL:
    URL += ("&" if "?" in URL else "?") + "session_expiry=600"

TestGmqttConformance = conformance_suite(
    Harness(url=URL, restart_command=["scripts/brokers", "restart", "mqtt"])
)
