"""Property tests: any input gives a result or a typed ChannelsError, never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels import codecs, envelope
from channels.errors import ChannelsError, ConfigurationError, DecodeError
from channels.url import parse_url, redact

EXAMPLES = 2000
props = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

url_text = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, user, pw, host, port, q: f"{scheme}://{user}:{pw}@{host}:{port}/?{q}",
        st.sampled_from(["kafka", "amqp", "mqtt", "nsq", "zmq", "memory", "x+y", "1bad", ""]),
        st.text(max_size=10),
        st.text(max_size=10),
        st.text(max_size=15),
        st.one_of(st.integers(-5, 70000).map(str), st.text(max_size=5)),
        st.text(max_size=20),
    ),
)


@props
@given(url_text)
def test_url_parser_total(text: str) -> None:
    try:
        url = parse_url(text)
    except ConfigurationError:
        return
    assert url.scheme
    redacted = url.redacted()
    if url.password:
        assert f":{url.password}@" not in redacted
    assert parse_url(url.unredacted()) == url


@props
@given(
    st.text(max_size=10).filter(
        lambda s: s.strip() and ":" not in s and "@" not in s and "/" not in s
    )
)
def test_password_never_survives_redaction(secret: str) -> None:
    for text in (f"kafka://user:{secret}SECRET@host:1", f"user:{secret}SECRET@host"):
        assert f"{secret}SECRET" not in redact(text)


@props
@given(st.binary(max_size=300))
def test_envelope_decoder_total(payload: bytes) -> None:
    try:
        key, value, headers = envelope.unwrap(payload)
    except DecodeError:
        assert payload.startswith(envelope.MAGIC)
        return
    if not payload.startswith(envelope.MAGIC):
        assert (key, value, headers) == (None, payload, {})


@props
@given(st.binary(max_size=200).map(lambda b: envelope.MAGIC + b"\x01" + b))
def test_envelope_decoder_total_on_magic_prefixed(payload: bytes) -> None:
    try:
        envelope.unwrap(payload)
    except DecodeError:
        pass


@props
@given(
    st.one_of(st.none(), st.binary(max_size=50)),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.dictionaries(st.text(min_size=1, max_size=20), st.binary(max_size=40), max_size=8),
)
def test_envelope_round_trip(
    key: bytes | None, value: bytes | None, headers: dict[str, bytes]
) -> None:
    assert envelope.unwrap(envelope.wrap(key, value, headers)) == (key, value, headers)


@pytest.mark.parametrize("name", ["raw", "str", "json", "msgpack", "binary", "gzip", "json|gzip"])
@props
@given(data=st.binary(max_size=200))
def test_codec_decoders_total(name: str, data: bytes) -> None:
    try:
        codecs.loads(name, data)
    except DecodeError:
        pass


json_values: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize("name", ["json", "msgpack", "json|gzip", "json|binary"])
@props
@given(value=json_values)
def test_codec_round_trip(name: str, value: Any) -> None:
    assert codecs.loads(name, codecs.dumps(name, value)) == value


@props
@given(st.text(max_size=30))
def test_codec_names_total(name: str) -> None:
    try:
        codecs.get_codec(name)
    except ChannelsError:
        pass
