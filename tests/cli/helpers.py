"""Helpers to drive the ``channels`` command as a subprocess."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KAFKA = os.environ.get("CHANNELS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
RABBITMQ = os.environ.get("CHANNELS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
MQTT = os.environ.get("CHANNELS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
GMQTT = os.environ.get("CHANNELS_TEST_GMQTT_URL", "g" + MQTT if MQTT.startswith("mqtt") else MQTT)
NSQ = os.environ.get("CHANNELS_TEST_NSQ_URL", "nsq://127.0.0.1:4150")
ZMQ = os.environ.get("CHANNELS_TEST_ZMQ_URL", "zmq://127.0.0.1:5560")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELS_BROKER")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_cli(
    *args: str,
    input: bytes | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m channels ARGS`` to completion; stdout/stderr as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "channels", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=ROOT,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


class Background:
    """A ``channels`` command running in the background; its stderr read line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "channels", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or cli_env(),
            cwd=ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._stdout: list[bytes] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._out_reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            self._stdout.append(chunk)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def wait_for_line(self, needle: str, timeout: float = 60.0) -> str:
        """Block until a stderr line contains ``needle`` (fails on exit or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"no stderr line with {needle!r} within {timeout}s: {self.stderr}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=10)
                pytest.fail(f"exited ({self.proc.returncode}) before printing {needle!r}: {self.stderr}")
            self.stderr_lines.append(line)
            if needle in line:
                return line

    def wait_for_output(self, lines: int, timeout: float = 60.0) -> None:
        """Block until stdout holds at least ``lines`` lines."""
        deadline = time.monotonic() + timeout
        while b"".join(self._stdout).count(b"\n") < lines:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fewer than {lines} line(s) of output: {self.stderr}")
            time.sleep(0.01)  # polling a buffer filled by the reader thread

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for exit; (status, stdout, all of stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not finish within {timeout}s: {self.stderr}")
        self._reader.join(timeout=10)
        self._out_reader.join(timeout=10)
        out = b"".join(self._stdout)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.stderr_lines.append(line)
        return self.proc.returncode, out.decode("utf-8", "replace"), self.stderr

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def background() -> Iterator[list[Background]]:
    """Start background commands with ``background.append(Background(...))``; killed after."""
    started: list[Background] = []
    yield started
    for bg in started:
        bg.kill()


def start(started: list[Background], *args: str, env: dict[str, str] | None = None) -> Background:
    bg = Background(*args, env=env)
    started.append(bg)
    return bg


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error:" in lines[0]
    return lines[0]


def lines_input(values: Sequence[str]) -> bytes:
    return "".join(v + "\n" for v in values).encode()
