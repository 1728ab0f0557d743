from __future__ import annotations

import json
import subprocess
import sys

import pytest

from channels.cli.main import main

BROKER_LIBS = [
    "aiokafka",
    "aio_pika",
    "aiormq",
    "aiomqtt",
    "paho",
    "gmqtt",
    "ansq",
    "zmq",
    "msgpack",
    "pydantic",
]


def test_import_channels_needs_no_broker_library() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {BROKER_LIBS!r}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import asyncio, channels\n"
        "async def main():\n"
        "    async with channels.App('x') as app:\n"
        "        t = app.topic('t', internal=True)\n"
        "        async with t.events() as s:\n"
        "            await t.send(value=b'ok')\n"
        "            print((await s.get(timeout=1)).value.decode())\n"
        "asyncio.run(main())\n"
        "try:\n"
        "    channels.App('x', broker='kafka://127.0.0.1:9092')\n"
        "except channels.ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "ok"
    assert "pip install 'anychannel[kafka]'" in lines[1]
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import channels, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {BROKER_LIBS!r}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "[]"


def test_demo_json_on_memory(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--json", "--messages", "3000", "--workers", "3", "--groups", "2"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["broker"] == "memory://"
    assert report["sent"] == 3000
    assert len(report["groups"]) == 2
    for group in report["groups"].values():
        assert group["unique"] == 3000
        assert group["lost"] == 0
        assert group["duplicates"] == 0
        assert group["order_violations"] == 0
        assert len(group["per_worker"]) == 3 and all(n > 0 for n in group["per_worker"])
    assert report["throughput_msgs_per_s"] > 0
    assert set(report["latency_ms"]) == {"p50", "p99"}


def test_cli_bad_url_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--broker", "nosuch://u:hunter2@h", "--messages", "1"])
    err = capsys.readouterr().err
    assert status == 2
    assert "hunter2" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_and_demo_work_without_pytest_or_broker_libraries() -> None:
    blocked = [*BROKER_LIBS, "pytest", "_pytest", "pytest_asyncio"]
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({blocked!r}))  # None: as if not installed\n"
        "from channels.cli.main import main\n"
        "status = main(['demo', '--json', '--messages', '200'])\n"
        "print('demo', status)\n"
        "print('conformance', main(['conformance', 'memory://']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '"lost": 0' in out.stdout
    assert "demo 0" in out.stdout
    assert "conformance 2" in out.stdout
    assert "pytest" in out.stderr
