"""Graceful shutdown: SIGTERM stops fetching, lets the handler finish, flushes sends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import channels

    HANDLER_SECONDS = float(sys.argv[1])
    app = channels.App("shutdown-test")
    jobs = app.topic("jobs", internal=True)
    results = app.topic("results", internal=True, group="audit")
    futures = []

    async def main():
        for i in range(5):
            await jobs.send(value=str(i).encode())
        async for event in jobs:
            print("start", event.value.decode(), flush=True)
            if event.value == b"0":
                os.kill(os.getpid(), signal.SIGTERM)
            try:
                await asyncio.sleep(HANDLER_SECONDS)  # the handler's own work
            except asyncio.CancelledError:
                print("cancelled", event.value.decode(), flush=True)
                raise
            futures.append(results.send_soon(value=event.value))
            print("done", event.value.decode(), flush=True)
        print("stream ended", flush=True)

    try:
        app.run(main, grace=float(sys.argv[2]))
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
    print("flushed", all(f.done() and f.future.exception() is None for f in futures), flush=True)
    print("undelivered", app.undelivered, flush=True)
    """
)


def _run(handler_seconds: float, grace: float) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(handler_seconds), str(grace)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_sigterm_lets_the_handler_finish_and_flushes() -> None:
    lines = _run(handler_seconds=0.2, grace=10)
    assert lines == ["start 0", "done 0", "stream ended", "flushed True", "undelivered 0"]


def test_grace_period_cancels_a_stuck_handler() -> None:
    lines = _run(handler_seconds=30, grace=0.3)
    assert lines[:2] == ["start 0", "cancelled 0"]
    assert "main cancelled" in lines
    assert lines[-1] == "undelivered 0"
