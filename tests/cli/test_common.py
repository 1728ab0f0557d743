"""The CLI helpers that need no broker."""

from __future__ import annotations

import base64
import json

import pytest

from channels.cli import _common as c
from channels.cli.bridge import default_group, split_endpoints
from channels.cli.doctor import capability_summary, package_version
from channels.cli.tail import format_json, format_text
from channels.errors import (
    ChannelsError,
    ConfigurationError,
    ConnectionFailed,
    DecodeError,
    TopicNotFound,
)
from channels.events import Message


def test_parse_headers_splits_at_first_equals() -> None:
    assert c.parse_headers(["a=1", "b=x=y", "empty="]) == {
        "a": b"1",
        "b": b"x=y",
        "empty": b"",
    }
    assert c.parse_headers([]) == {}
    assert c.parse_headers(None) == {}
    assert c.parse_headers(["ü=ö"]) == {"ü": "ö".encode()}


@pytest.mark.parametrize("bad", ["novalue", "=v", " =v", ""])
def test_parse_headers_rejects_malformed(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="name=value"):
        c.parse_headers([bad])


def test_parse_headers_rejects_duplicates() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        c.parse_headers(["a=1", "a=2"])


def test_render_bytes_text() -> None:
    assert c.render_bytes_text(None) == "(null)"
    assert c.render_bytes_text(b"") == ""
    assert c.render_bytes_text("héllo".encode()) == "héllo"
    assert c.render_bytes_text(b"a\nb\tc\x1b[31m\\") == "a\\nb\\tc\\x1b[31m\\\\"
    raw = b"\xff\xfe\x00"
    assert c.render_bytes_text(raw) == "base64(" + base64.b64encode(raw).decode() + ")"


def test_render_bytes_json_round_trips() -> None:
    assert c.render_bytes_json(None) is None
    assert c.render_bytes_json(b"") == ""
    assert c.render_bytes_json("ü\n".encode()) == "ü\n"
    raw = bytes(range(256))
    rendered = c.render_bytes_json(raw)
    assert isinstance(rendered, dict)
    assert base64.b64decode(rendered["base64"]) == raw


def test_json_safe() -> None:
    assert c.json_safe({"a": [b"x", b"\xff", 1, None]}) == {"a": ["x", {"base64": "/w=="}, 1, None]}
    assert json.dumps(c.json_safe(object()))  # anything becomes printable


def test_redactor_hides_passwords_everywhere() -> None:
    r = c.Redactor()
    r.add("amqp://user:Pa%24%24word@h:5672/?sasl_token=TOKEN123")
    text = r.text("failed amqp://user:Pa$$word@h:5672/ with Pa$$word and Pa%24%24word TOKEN123")
    assert "Pa$$word" not in text
    assert "Pa%24%24word" not in text
    assert "TOKEN123" not in text
    assert "amqp://user:***@h:5672/" in text
    assert r.url("amqp://user:Pa%24%24word@h:5672/") == "amqp://user:***@h:5672/"


def test_redactor_handles_unparseable_urls() -> None:
    r = c.Redactor()
    assert r.add("kafka://u:hunter22@host:notaport") is None
    assert "hunter22" not in r.text("bad URL kafka://u:hunter22@host:notaport (hunter22)")


def test_split_url_and_args() -> None:
    url, rest = c.split_url_and_args(["kafka://h:1", "t", "v"], None, minimum=1, maximum=2, usage="x")
    assert (url, rest) == ("kafka://h:1", ["t", "v"])
    url, rest = c.split_url_and_args(["t", "v"], "amqp://h", minimum=1, maximum=2, usage="x")
    assert (url, rest) == ("amqp://h", ["t", "v"])
    with pytest.raises(ConfigurationError, match="twice"):
        c.split_url_and_args(["kafka://h", "t"], "amqp://h", minimum=1, maximum=2, usage="x")
    with pytest.raises(ConfigurationError, match="expected"):
        c.split_url_and_args(["kafka://h", "t", "v", "w"], None, minimum=1, maximum=2, usage="x")


def test_broker_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHANNELS_BROKER", raising=False)
    with pytest.raises(ConfigurationError, match="no broker"):
        c.split_url_and_args(["t"], None, minimum=1, maximum=2, usage="x")
    monkeypatch.setenv("CHANNELS_BROKER", "nsq://h:4150")
    assert c.split_url_and_args(["t"], None, minimum=1, maximum=2, usage="x")[0] == "nsq://h:4150"
    # a positional URL wins over the environment, --broker too
    assert c.split_url_and_args(["zmq://h", "t"], None, minimum=1, maximum=2, usage="x")[0] == ("zmq://h")
    assert c.split_url_and_args(["t"], "mqtt://h", minimum=1, maximum=2, usage="x")[0] == ("mqtt://h")


def test_split_endpoints() -> None:
    assert split_endpoints(["kafka://a", "s", "mqtt://b", "d"], None) == [
        ("kafka://a", "s"),
        ("mqtt://b", "d"),
    ]
    assert split_endpoints(["s", "mqtt://b", "d"], "kafka://a") == [
        ("kafka://a", "s"),
        ("mqtt://b", "d"),
    ]
    assert split_endpoints(["s", "d"], "kafka://a") == [("kafka://a", "s"), ("kafka://a", "d")]
    for bad in (["s", "d"], ["kafka://a", "mqtt://b", "s", "d"], ["kafka://a", "s", "d", "x"]):
        with pytest.raises(ConfigurationError):
            split_endpoints(bad, None)
    with pytest.raises(ConfigurationError, match="without a topic"):
        split_endpoints(["kafka://a", "s", "kafka://c", "d", "kafka://b"], None)


def test_default_group_is_stable_and_safe() -> None:
    group = default_group("sensors/+/t", "out#1")
    assert group == default_group("sensors/+/t", "out#1")
    assert group == "channels-bridge-sensors___t-to-out_1"
    long = default_group("orders-events-" + "x" * 40, "orders-events-archive-" + "x" * 40)
    assert len(long) <= 60 and long == default_group("orders-events-" + "x" * 40, "orders-events-archive-" + "x" * 40)
    assert long != default_group("orders-events-" + "x" * 40, "orders-events-archive-" + "y" * 40)


def test_exit_codes() -> None:
    assert c.exit_code_for(ConfigurationError("x")) == 2
    assert c.exit_code_for(ConnectionFailed("x")) == 2
    assert c.exit_code_for(TopicNotFound("t")) == 2
    assert c.exit_code_for(FileNotFoundError(2, "No such file", "x")) == 2
    assert c.exit_code_for(DecodeError("x")) == 1
    assert c.exit_code_for(ChannelsError("x")) == 1
    assert c.exit_code_for(RuntimeError("x")) == 1


def test_error_line_is_one_redacted_line() -> None:
    r = c.Redactor()
    r.add("amqp://u:sekrit99@h/")
    exc = ConnectionFailed("refused\nby amqp://u:sekrit99@h/", broker="amqp://u:sekrit99@h/")
    line = c.error_line("send", exc, r)
    assert "\n" not in line
    assert "sekrit99" not in line
    assert line.startswith("channels send: error: refused by amqp://u:***@h/")


def test_tail_formats() -> None:
    message = Message("orders", b"\xffvalue", b"k\n1", {"h": b"v", "bin": b"\x80"}, 3, 42, 1700000000.5)
    text = format_text(message, message.value)
    assert text == "orders[3]@42 key=k\\n1 headers={h=v,bin=base64(gA==)} base64(/3ZhbHVl)"
    obj = json.loads(format_json(message, message.value))
    assert obj == {
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "key": "k\n1",
        "value": {"base64": "/3ZhbHVl"},
        "headers": {"h": "v", "bin": {"base64": "gA=="}},
        "timestamp": 1700000000.5,
    }
    none = Message("t", None)
    assert format_text(none, None) == "t key=(null) (null)"
    assert json.loads(format_json(none, None))["value"] is None
    assert json.loads(format_json(none, {"a": 1}))["value"] == {"a": 1}


def test_capability_summary_and_versions() -> None:
    summary = capability_summary({"ack": True, "patterns": False, "max_message_size": 1 << 20})
    assert summary == "ack max=1MiB"
    assert package_version("memory") == "built-in"
    assert package_version("amqp").startswith("aio-pika ")
    assert package_version("kafka").startswith("aiokafka ")


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "memory://", "t", "--create", "hello"],
        ["send", "memory://", "--create", "t", "hello"],
        ["send", "--create", "memory://", "t", "hello"],
    ],
)
def test_positionals_may_follow_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from channels.cli.main import main

    assert main(argv) == 0
    assert "sent 1 message(s) to t" in capsys.readouterr().err


def test_an_unknown_option_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from channels.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["send", "memory://", "t", "--bogus", "hello"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("typo", ["kafka:/127.0.0.1:9092", "amqp:guest@host", "MQTT:/h"])
def test_a_url_without_its_slashes_is_called_a_url_not_a_topic(typo: str) -> None:
    with pytest.raises(ConfigurationError, match="without '://'"):
        c.split_url_and_args([typo, "t", "v"], None, minimum=1, maximum=2, usage="[URL] TOPIC [VALUE]")
    # a topic name with a colon that is no scheme stays a topic name
    _, rest = c.split_url_and_args(["memory://", "orders:eu", "v"], None, minimum=1, maximum=2, usage="x")
    assert rest == ["orders:eu", "v"]


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    from channels import __version__
    from channels.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"channels (anychannel) {__version__}"
