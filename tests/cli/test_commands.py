"""``channels send|tail|bridge|doctor`` driven as subprocesses against the real brokers.

Tail and bridge print a line on stderr once they are members of their group ("listening
on", "bridging"); the tests wait for that line before sending, never for a fixed time.
"""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import (
    GMQTT,
    KAFKA,
    MQTT,
    NSQ,
    RABBITMQ,
    ZMQ,
    Background,
    assert_one_line_error,
    cli_env,
    lines_input,
    run_cli,
    start,
    unique,
)

pytestmark = pytest.mark.brokers

#: every broker of scripts/brokers (all six drivers work across processes)
BROKERS = [
    pytest.param(KAFKA, id="kafka"),
    pytest.param(RABBITMQ, id="rabbitmq"),
    pytest.param(MQTT, id="mqtt"),
    pytest.param(GMQTT, id="gmqtt"),
    pytest.param(NSQ, id="nsq"),
    pytest.param(ZMQ, id="zmq"),
]

#: (source, destination) pairs for the bridge
BRIDGES = [
    pytest.param(KAFKA, MQTT, id="kafka-to-mqtt"),
    pytest.param(RABBITMQ, KAFKA, id="rabbitmq-to-kafka"),
    pytest.param(NSQ, GMQTT, id="nsq-to-gmqtt"),
    pytest.param(ZMQ, RABBITMQ, id="zmq-to-rabbitmq"),
]

N = 200


def _create(url: str, topic: str) -> None:
    """Create ``topic`` (internal) without sending anything."""
    result = run_cli("send", url, topic, "--create", input=b"")
    assert result.returncode == 0, result.stderr
    assert "sent 0 message(s)" in result.stderr


def _tail(started: list[Background], url: str, topic: str, count: int, *extra: str) -> Background:
    tail = start(
        started,
        "tail",
        url,
        topic,
        "--format",
        "json",
        "--count",
        str(count),
        "--timeout",
        "60",
        "--create",
        *extra,
    )
    tail.wait_for_line("listening on")
    return tail


def _records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("url", BROKERS)
def test_send_lines_then_tail_them_back(url: str, background: list[Background]) -> None:
    topic = unique()
    tail = _tail(background, url, topic, N)
    values = [f"message {i} ünïcode" for i in range(N)]
    sent = run_cli(
        "send",
        url,
        topic,
        "--key",
        "user-7",
        "-H",
        "trace=abc=1",
        "-H",
        "empty=",
        input=lines_input(values),
    )
    assert sent.returncode == 0, sent.stderr
    assert f"sent {N} message(s) to {topic}" in sent.stderr
    status, out, err = tail.finish()
    assert status == 0, err
    records = _records(out)
    assert sorted(str(r["value"]) for r in records) == sorted(values)
    for record in records:
        assert record["topic"] == topic
        assert record["key"] == "user-7"
        assert record["headers"] == {"trace": "abc=1", "empty": ""}
    assert f"received {N} message(s)" in err


@pytest.mark.parametrize("url", BROKERS)
def test_binary_values_null_and_verbose_metadata(url: str, background: list[Background]) -> None:
    topic = unique()
    tail = _tail(background, url, topic, 3)
    binary = b"\xff\xfe\x00\x80 not utf-8"
    first = run_cli("send", url, topic, "-v", input=binary + b"\n\n")  # binary line, empty line
    assert first.returncode == 0, first.stderr
    metadata = first.stdout.strip().splitlines()
    assert len(metadata) == 2 and all(line.startswith(f"{topic} partition=") for line in metadata)
    second = run_cli("send", url, topic, "--null", "--key", "gone")
    assert second.returncode == 0, second.stderr
    status, out, err = tail.finish()
    assert status == 0, err
    values = [r["value"] for r in _records(out)]
    assert {"base64": "//4AgCBub3QgdXRmLTg="} in values
    assert "" in values
    assert None in values


@pytest.mark.parametrize("url", BROKERS)
def test_json_codec_and_text_format(url: str, background: list[Background]) -> None:
    topic = unique()
    tail = start(background, "tail", url, topic, "--codec", "json", "-n", "1", "-t", "60", "--create")
    tail.wait_for_line("listening on")
    sent = run_cli("send", url, topic, '{"id": 1, "tags": ["a"]}', "--codec", "json", "-k", "k")
    assert sent.returncode == 0, sent.stderr
    status, out, err = tail.finish()
    assert status == 0, err
    assert out.strip().endswith('key=k {"id": 1, "tags": ["a"]}'), out


def test_send_bad_json_is_bad_input() -> None:
    result = run_cli("send", "memory://", "t", "{not json", "--codec", "json", "--create")
    line = assert_one_line_error(result)
    assert "not valid JSON" in line


def test_tail_stops_after_silence(background: list[Background]) -> None:
    topic = unique()
    _create(RABBITMQ, topic)
    quiet = run_cli("tail", RABBITMQ, topic, "--timeout", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert "received 0 message(s)" in quiet.stderr
    short = run_cli("tail", RABBITMQ, topic, "--timeout", "1", "--count", "5")
    assert short.returncode == 1, short.stderr
    assert "received 0 of 5" in short.stderr


def test_tail_from_beginning_on_kafka() -> None:
    topic = unique()
    sent = run_cli("send", KAFKA, topic, "--create", "--partitions", "1", input=lines_input(["old-1", "old-2"]))
    assert sent.returncode == 0, sent.stderr
    tail = run_cli("tail", KAFKA, topic, "--from-beginning", "-n", "2", "-t", "60", "--format", "raw")
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == ["old-1", "old-2"]


def test_tail_from_beginning_needs_the_capability() -> None:
    topic = unique()
    _create(RABBITMQ, topic)
    result = run_cli("tail", RABBITMQ, topic, "--from-beginning", "-n", "1")
    line = assert_one_line_error(result)
    assert "from_beginning" in line


def test_ctrl_c_stops_tail_cleanly(background: list[Background]) -> None:
    topic = unique()
    _create(RABBITMQ, topic)
    tail = start(background, "tail", RABBITMQ, topic)
    tail.wait_for_line("listening on")
    tail.interrupt()
    status, _, err = tail.finish(timeout=30)
    assert status == 130, err
    assert "Traceback" not in err
    assert "received 0 message(s)" in err


@pytest.mark.parametrize(("src", "dst"), BRIDGES)
def test_bridge_moves_every_message(src: str, dst: str, background: list[Background]) -> None:
    src_topic, dst_topic = unique("src"), unique("dst")
    tail = _tail(background, dst, dst_topic, N)
    bridge = start(background, "bridge", src, src_topic, dst, dst_topic, "--count", str(N), "--create")
    bridge.wait_for_line("bridging")
    values = [f"v{i}" for i in range(N)]
    sent = run_cli("send", src, src_topic, "-k", "key-1", "-H", "origin=test", input=lines_input(values))
    assert sent.returncode == 0, sent.stderr
    status, _, err = bridge.finish()
    assert status == 0, err
    assert f"forwarded {N} message(s)" in err
    status, out, err = tail.finish()
    assert status == 0, err
    records = _records(out)
    assert sorted(str(r["value"]) for r in records) == sorted(values)  # 0 lost, 0 extra
    assert all(r["key"] == "key-1" and r["headers"] == {"origin": "test"} for r in records)


def test_bridge_resumes_without_loss_after_ctrl_c(background: list[Background]) -> None:
    """Messages sent while no bridge runs are forwarded by the next run (same group)."""
    src_topic, dst_topic = unique("src"), unique("dst")
    # no --count: a message forwarded twice (at-least-once) must not end the tail early
    tail = start(background, "tail", KAFKA, dst_topic, "--format", "json", "--timeout", "8", "--create")
    tail.wait_for_line("listening on")
    group = unique("bridge-group")
    first = start(background, "bridge", RABBITMQ, src_topic, KAFKA, dst_topic, "-g", group, "--create")
    first.wait_for_line("bridging")
    assert run_cli("send", RABBITMQ, src_topic, input=lines_input([f"a{i}" for i in range(N)])).returncode == 0
    first.interrupt()
    status, _, err = first.finish()
    assert status == 130, err
    assert "Traceback" not in err
    # sent while no bridge is running: the group's queue keeps them
    assert run_cli("send", RABBITMQ, src_topic, input=lines_input([f"b{i}" for i in range(N)])).returncode == 0
    second = start(background, "bridge", RABBITMQ, src_topic, KAFKA, dst_topic, "-g", group, "-t", "5")
    status, _, err = second.finish()
    assert status == 0, err
    status, out, err = tail.finish()
    assert status == 0, err
    values = {str(r["value"]) for r in _records(out)}
    expected = {f"a{i}" for i in range(N)} | {f"b{i}" for i in range(N)}
    assert values == expected


def test_bridge_loses_nothing_when_killed(background: list[Background]) -> None:
    """kill -9 in the middle of a run, then a second run: every message arrives."""
    src_topic, dst_topic, group = unique("src"), unique("dst"), unique("bridge-group")
    total = 2000
    tail = start(background, "tail", KAFKA, dst_topic, "--format", "json", "--timeout", "10", "--create")
    tail.wait_for_line("listening on")
    # declare both topics and the bridge's group, so the messages wait for it
    setup = run_cli("bridge", RABBITMQ, src_topic, KAFKA, dst_topic, "-g", group, "--create", "-t", "1")
    assert setup.returncode == 0, setup.stderr
    sent = run_cli("send", RABBITMQ, src_topic, input=lines_input([f"m{i}" for i in range(total)]))
    assert sent.returncode == 0, sent.stderr
    crash = start(background, "bridge", RABBITMQ, src_topic, KAFKA, dst_topic, "-g", group, "--window", "20")
    crash.wait_for_line("bridging")
    tail.wait_for_output(1)
    crash.kill()  # SIGKILL: no chance to clean up
    second = run_cli("bridge", RABBITMQ, src_topic, KAFKA, dst_topic, "-g", group, "-t", "5")
    assert second.returncode == 0, second.stderr
    status, out, err = tail.finish()
    assert status == 0, err
    values = [str(r["value"]) for r in _records(out)]
    assert set(values) == {f"m{i}" for i in range(total)}  # duplicates allowed, no loss
    assert "forwarded 0 message(s)" not in second.stderr  # the kill did leave work behind


def test_doctor_reports_every_test_broker() -> None:
    result = run_cli("doctor", "--test-brokers", "--json", timeout=120)
    assert "Traceback" not in result.stderr
    rows = json.loads(result.stdout)
    assert sorted(row["url"].split("://")[0] for row in rows) == [
        "amqp",
        "gmqtt",
        "kafka",
        "memory",
        "mqtt",
        "nsq",
        "zmq",
    ]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["ok"] and row["reachable"]
        assert row["latency_ms"] >= 0 and row["connect_ms"] >= 0
        assert row["driver"].startswith("transports.")
        assert row["client_version"]
        assert isinstance(row["capabilities"]["ack"], bool)
        assert row["capabilities"]["max_message_size"] > 0
    assert result.returncode == 0, result.stdout


def test_doctor_table() -> None:
    result = run_cli("doctor", KAFKA, RABBITMQ, "memory://")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 of 3 broker(s) passed" in result.stdout
    for text in ("KafkaTransport", "AmqpTransport", "MemoryTransport", "aiokafka", "aio-pika"):
        assert text in result.stdout


# -- failures: one line, status 2, no traceback, no secret --------------------------------

SECRET = "Sup3rS3cretPw"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["send", f"amqp://guest:{SECRET}@127.0.0.1:1/", "t", "v"], id="send-amqp"),
        pytest.param(["send", f"kafka://u:{SECRET}@127.0.0.1:1", "t", "v"], id="send-kafka"),
        pytest.param(["tail", f"amqp://guest:{SECRET}@127.0.0.1:1/", "t"], id="tail-amqp"),
        pytest.param(["bridge", f"amqp://u:{SECRET}@127.0.0.1:1/", "s", "memory://", "d"], id="bridge"),
    ],
)
def test_unreachable_broker_is_one_line_exit_2(args: list[str]) -> None:
    result = run_cli(*args, "--connect-timeout", "5")
    line = assert_one_line_error(result)
    assert SECRET not in result.stdout + result.stderr
    assert "***" in line


def test_wrong_password_is_not_printed() -> None:
    result = run_cli("send", f"amqp://guest:{SECRET}@127.0.0.1:5672/", "t", "v")
    assert_one_line_error(result)
    assert SECRET not in result.stdout + result.stderr


def test_doctor_unreachable_exit_2_without_secret() -> None:
    result = run_cli("-v", "doctor", f"amqp://guest:{SECRET}@127.0.0.1:1/", "--timeout", "5")
    assert result.returncode == 2
    assert "unreachable" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_never_printed_on_success() -> None:
    url = f"memory://user:{SECRET}@scratch?partitions=2"
    for args in (
        ["send", url, "t", "v", "--create", "-v"],
        ["-v", "doctor", url, "--json"],
        ["doctor", url],
    ):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert "user:***@scratch" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["send", "topic-only"], "no broker"),
        (["send", "nope://127.0.0.1", "t", "v"], "unknown broker scheme"),
        (["send", "kafka://127.0.0.1:99999", "t", "v"], "invalid port"),
        (["send", "kafka://127.0.0.1:9092?bogus=1", "t", "v"], "unknown URL option"),
        (["send", "memory://", "t", "v", "-H", "novalue", "--create"], "name=value"),
        (["send", "memory://", "t", "--file", "/nonexistent/file", "--create"], "No such file"),
        (["tail", "--broker", "memory://", "memory://", "t"], "given twice"),
        (["bridge", "memory://", "s", "memory://", "d", "memory://"], "without a topic"),
        (["send", "memory://", "missing-topic", "v"], "does not exist"),
        (["send", "memory://", "t", "v", "--codec", "nosuch", "--create"], "unknown codec"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    line = assert_one_line_error(run_cli(*args))
    assert needle in line


def test_missing_source_topic_on_a_real_broker() -> None:
    line = assert_one_line_error(run_cli("send", RABBITMQ, unique("missing"), "v"))
    assert "does not exist" in line
    line = assert_one_line_error(run_cli("tail", KAFKA, unique("missing"), "-t", "5"))
    assert "does not exist" in line


def test_broker_from_environment_and_option() -> None:
    env = cli_env(CHANNELS_BROKER=RABBITMQ)
    topic = unique()
    created = run_cli("send", topic, "--create", input=b"", env=env)
    assert created.returncode == 0, created.stderr
    assert "amqp://guest:***@127.0.0.1:5672/" in created.stderr
    by_option = run_cli("send", "--broker", "memory://", "t", "v", "--create")
    assert by_option.returncode == 0, by_option.stderr


@pytest.mark.parametrize("command", ["send", "tail", "bridge", "doctor"])
def test_help_has_an_example(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert f"channels {command}" in result.stdout.split("examples:")[1]
