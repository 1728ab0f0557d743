"""Secrets in broker URLs are redacted wherever a URL is shown: str, repr, errors.

A URL carries secrets in two places: the password of its user info
(``amqp://user:secret@host/``) and options whose name says so (``auth_secret``,
``ssl_keyfile_password``, anything with password, secret, token or passphrase in its name).
"""

from __future__ import annotations

import asyncio

import pytest

import channels
from channels.errors import ChannelsError, ConnectionFailed
from channels.url import parse_url, redact
from tests.support import free_port

SECRET = "s3cr3t-Value_42"

USERINFO_URLS = [
    f"amqp://user:{SECRET}@127.0.0.1:5672/",
    f"amqps://user:{SECRET}@127.0.0.1:5671/vhost?ssl_cafile=/tmp/ca.crt",
    f"kafka://user:{SECRET}@127.0.0.1:9095?sasl_mechanism=SCRAM-SHA-512",
    f"mqtt://user:{SECRET}@127.0.0.1:1884",
    f"kafka://user:{SECRET}@h1:9092,h2:9092?auth_secret={SECRET}",
]
#: secret options on a URL without a password in its user info
OPTION_URLS = [
    f"nsq://127.0.0.1:4150?tls=true&auth_secret={SECRET}",
    f"kafka+ssl://127.0.0.1:9094?ssl_keyfile=/k.pem&ssl_keyfile_password={SECRET}",
    f"mqtt://user@127.0.0.1:1883?token={SECRET}",
]


def _shown(url: str) -> str:
    parsed = parse_url(url)
    error = ConnectionFailed("cannot connect", broker=parsed)
    return "\n".join([str(parsed), repr(parsed), parsed.redacted(), redact(url), str(error), repr(error)])


@pytest.mark.parametrize("url", USERINFO_URLS)
def test_userinfo_passwords_are_redacted(url: str) -> None:
    shown = _shown(url)
    assert SECRET not in shown, shown
    assert "***" in shown
    assert SECRET in parse_url(url).unredacted(), "the driver still gets the secret"


@pytest.mark.parametrize("url", OPTION_URLS)
def test_secret_options_are_redacted_without_a_userinfo_password(url: str) -> None:
    shown = _shown(url)
    assert SECRET not in shown, shown


async def test_nsq_auth_secret_is_not_in_a_connection_error() -> None:
    app = channels.App("sec-redact", broker=f"nsq://127.0.0.1:{free_port()}?auth_secret={SECRET}", connect_timeout=3)
    with pytest.raises(ChannelsError) as info:
        await asyncio.wait_for(app.start(), 30)
    await asyncio.wait_for(app.stop(), 30)
    assert SECRET not in f"{info.value} {info.value!r} {info.value.broker}"
