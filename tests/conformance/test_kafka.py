"""The conformance suite against the Kafka broker of scripts/brokers (every case its
capabilities allow, including the broker restart)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestKafkaConformance = conformance_suite(
    Harness(
        url=os.environ.get("CHANNELS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
        restart_command=["scripts/brokers", "restart", "kafka"],
    )
)
