"""The secured listeners of scripts/brokers, as URLs for the security tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TLS_DIR = Path(os.environ.get("CHANNELS_TEST_TLS_DIR", ROOT / ".brokers" / "tls"))
CA = TLS_DIR / "ca.crt"
CLIENT_CERT = TLS_DIR / "client.crt"
CLIENT_KEY = TLS_DIR / "client.key"


def _secrets() -> dict[str, str]:
    path = TLS_DIR / "secrets.env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


SECRETS = _secrets()
USER = SECRETS.get("CHANNELS_TEST_USER", "channels-test")
PASSWORD = SECRETS.get("CHANNELS_TEST_PASSWORD", "")
#: a wrong password that is just as secret: it must not show up anywhere either
WRONG = "wrong-" + (PASSWORD[::-1] if PASSWORD else "x") + "-pw"

needs_secured_brokers = pytest.mark.skipif(
    not PASSWORD or not CA.is_file(),
    reason=f"no test CA and password in {TLS_DIR}: run scripts/brokers up (native mode)",
)


@dataclass(frozen=True)
class Secured:
    """One secured way into a broker."""

    id: str
    template: str  # {user}, {password}, {ca}, {cert}, {key} are filled in
    env: str = ""  # CHANNELS_TEST_<env>_URL overrides the URL made from the template
    auth: bool = False  # the URL carries user:password (so a wrong one must fail)

    def url(self, password: str | None = None, **extra: str) -> str:
        given = os.environ.get(f"CHANNELS_TEST_{self.env}_URL", "") if self.env else ""
        # `scripts/brokers env` without --secrets exports URLs with *** for the password
        if given and password is None and not extra and ":***@" not in given:
            return given
        return self.template.format(
            user=USER,
            password=PASSWORD if password is None else password,
            ca=CA,
            cert=CLIENT_CERT,
            key=CLIENT_KEY,
            **extra,
        )


C = "ssl_cafile={ca}"
CASES = [
    Secured("kafka-ssl", "kafka+ssl://127.0.0.1:9094?" + C, "KAFKA_SSL"),
    Secured("kafka-ssl-client-cert", "kafka+ssl://127.0.0.1:9094?" + C + "&ssl_certfile={cert}&ssl_keyfile={key}"),
    Secured(
        "kafka-scram-sha-256",
        "kafka://{user}:{password}@127.0.0.1:9095?sasl_mechanism=SCRAM-SHA-256",
        "KAFKA_SCRAM256",
        auth=True,
    ),
    Secured(
        "kafka-scram-sha-512",
        "kafka://{user}:{password}@127.0.0.1:9095?sasl_mechanism=SCRAM-SHA-512",
        "KAFKA_SCRAM512",
        auth=True,
    ),
    Secured("amqps", "amqps://{user}:{password}@127.0.0.1:5671/?" + C, "AMQPS", auth=True),
    Secured(
        "amqps-client-cert",
        "amqps://{user}:{password}@127.0.0.1:5671/?" + C + "&ssl_certfile={cert}&ssl_keyfile={key}",
        auth=True,
    ),
    Secured("amqp-password", "amqp://{user}:{password}@127.0.0.1:5672/", "AMQP_AUTH", auth=True),
    Secured("mqtts", "mqtts://127.0.0.1:8883?" + C, "MQTTS"),
    Secured("mqtts-client-cert", "mqtts://127.0.0.1:8883?" + C + "&ssl_certfile={cert}&ssl_keyfile={key}"),
    Secured("mqtt-password", "mqtt://{user}:{password}@127.0.0.1:1884", "MQTT_AUTH", auth=True),
    Secured("gmqtts", "gmqtts://127.0.0.1:8883?" + C),
    Secured("gmqtt-password", "gmqtt://{user}:{password}@127.0.0.1:1884", auth=True),
    Secured("nsq-tls", "nsq://127.0.0.1:4150?tls=true&tls_ca_file={ca}", "NSQ_TLS"),
    Secured(
        "nsq-tls-client-cert", "nsq://127.0.0.1:4150?tls=true&tls_ca_file={ca}&tls_cert_file={cert}&tls_key_file={key}"
    ),
]
BY_ID = {c.id: c for c in CASES}
AUTH_CASES = [c for c in CASES if c.auth]

#: TLS URLs without the test CA: the server's certificate cannot be verified
NO_CA = {
    "kafka-ssl": "kafka+ssl://127.0.0.1:9094",
    "amqps": "amqps://{user}:{password}@127.0.0.1:5671/",
    "mqtts": "mqtts://127.0.0.1:8883",
    "gmqtts": "gmqtts://127.0.0.1:8883",
    "nsq-tls": "nsq://127.0.0.1:4150?tls=true",
}
