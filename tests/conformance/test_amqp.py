"""The conformance suite against the RabbitMQ broker of scripts/brokers (every case its
capabilities allow, including the broker restart)."""

from __future__ import annotations

import os

from channels.testing import Harness, conformance_suite

TestAmqpConformance = conformance_suite(
    Harness(
        url=os.environ.get("CHANNELS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        restart_command=["scripts/brokers", "restart", "rabbitmq"],
    )
)
