from __future__ import annotations

import pytest

from channels.errors import ConfigurationError, ConnectionFailed
from channels.url import parse_url, redact


def test_parse_full_url() -> None:
    url = parse_url("kafka://alice:s3cr%40t@h1:9092,h2:9093/path?client_id=x&acks=all")
    assert url.scheme == "kafka"
    assert url.hosts == (("h1", 9092), ("h2", 9093))
    assert url.username == "alice"
    assert url.password == "s3cr@t"
    assert url.path == "/path"
    assert url.query == {"client_id": "x", "acks": "all"}
    assert url.host_list(1) == [("h1", 9092), ("h2", 9093)]


def test_redaction_everywhere() -> None:
    url = parse_url("amqp://guest:hunter2@127.0.0.1:5672/vhost")
    for text in (str(url), repr(url), url.redacted(), f"{url}"):
        assert "hunter2" not in text
        assert "guest:***@" in text
    assert "hunter2" in url.unredacted()
    assert redact("amqp://u:pw@h/") == "amqp://u:***@h/"
    assert "pw" not in redact("not a url but amqp://u:pw@h:x")


def test_secret_query_options_are_redacted() -> None:
    url = parse_url("nsq://:x@127.0.0.1:4150?auth_secret=topsecret&max_in_flight=5")
    assert "topsecret" not in str(url)
    assert "max_in_flight=5" in str(url)


def test_errors_name_the_redacted_broker() -> None:
    err = ConnectionFailed("refused", broker=parse_url("kafka://u:pw@h:1"))
    assert "kafka://u:***@h:1" in str(err)
    assert "pw" not in str(err).replace("***", "")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "no-scheme",
        "kafka://h:notaport",
        "kafka://h:70000",
        "1kafka://h",
        "kafka://h/?a=1&a=2",
        "kafka://[::1",
    ],
)
def test_bad_urls(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(bad)


def test_ipv6_and_defaults() -> None:
    url = parse_url("mqtt://[::1]:1883")
    assert url.hosts == (("::1", 1883),)
    assert parse_url("memory://").hosts == ()
    assert parse_url("nsq://h").host_list(4150) == [("h", 4150)]


def test_options_convert_and_reject_unknown() -> None:
    url = parse_url("kafka://h?linger_ms=5&idempotent=true&ratio=0.5")
    assert url.option("linger_ms", 0) == 5
    assert url.option("idempotent", False) is True
    assert url.option("ratio", 1.0) == 0.5
    assert url.option("missing", "d") == "d"
    with pytest.raises(ConfigurationError, match="linger_ms"):
        parse_url("kafka://h?linger_ms=soon").option("linger_ms", 0)
    with pytest.raises(ConfigurationError, match="unknown URL option"):
        url.check_options(["linger_ms"])


def test_malformed_url_errors_do_not_leak_the_password() -> None:
    for bad in (
        "alice:hunter2@host:9092",
        "kafka://alice:hunter2@host:notaport",
        "1x://a:hunter2@h",
    ):
        with pytest.raises(ConfigurationError) as info:
            parse_url(bad)
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("secret", ["pa?ss", "pa/ss", "pa#ss"])
def test_a_password_with_an_unencoded_delimiter_is_refused_without_showing_it(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        parse_url(f"kafka://user:{secret}@host:9092?x=1")
    assert secret not in str(info.value) and "ss@" not in str(info.value)


def test_an_at_sign_in_an_option_value_is_not_taken_for_a_password() -> None:
    for text in ("kafka://host:9092?client_id=me@team", "kafka://host?client_id=me@team"):
        url = parse_url(text)
        assert url.option("client_id", "") == "me@team" and url.password is None


def test_a_password_with_an_at_sign_and_a_slash_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as info:
        parse_url("amqp://guest:p@ss/SECRETPW@127.0.0.1:5672/")
    assert "SECRETPW" not in str(info.value) and "ss/" not in str(info.value)


def test_an_unknown_option_is_named_but_its_value_is_not_shown() -> None:
    url = parse_url("kafka://host:9092?ssl_keyfile_passwd_typo=SECRETPW")
    with pytest.raises(ConfigurationError, match="ssl_keyfile_passwd_typo") as info:
        url.check_options(["ssl_cafile"])
    assert "SECRETPW" not in str(info.value)
    assert "SECRETPW" not in str(parse_url("kafka://host?ssl_keyfile_passwd=SECRETPW"))
