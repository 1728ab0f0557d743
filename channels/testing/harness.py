"""The harness: how the conformance suite reaches a driver.

A driver author describes the broker in a few lines; the suite does the rest::

    from channels.testing import Harness, conformance_suite

    TestKafkaConformance = conformance_suite(
        Harness(
            url="kafka://127.0.0.1:9092",
            restart_command=["scripts/brokers", "restart", "kafka"],
        )
    )

Subclass :class:`Harness` to change how the broker is restarted or how apps are made.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

from channels.app import App
from channels.capabilities import Capabilities
from channels.registry import get_transport_class
from channels.url import parse_url

__all__ = ["MAX_NAME_LENGTH", "Harness"]

#: the longest topic or group name the harness hands out (NSQ allows 64, MQTT shares
#: its topic with ``$share/<group>/``; 48 fits every broker we know)
MAX_NAME_LENGTH = 48

_UNSAFE = re.compile(r"[^a-z0-9]+")


@dataclass
class Harness:
    """Everything the suite needs to know about one broker.

    ``url`` is the broker URL; ``restart_command`` (run from the current directory) restarts
    the broker for the persistence case; ``timeout_scale`` multiplies every wait of the
    suite, for slow brokers; ``name_prefix`` starts every topic and group name.
    """

    url: str
    restart_command: list[str] | None = None
    timeout_scale: float = 1.0
    name_prefix: str = "conf"
    #: seconds ``restart_broker`` waits for ``restart_command`` (scaled too)
    restart_timeout: float = 180.0

    # -- names -------------------------------------------------------------------------

    def _name(self, case: str) -> str:
        prefix = _UNSAFE.sub("-", self.name_prefix.lower()).strip("-")[:12] or "conf"
        short = _UNSAFE.sub("-", case.lower()).strip("-")
        room = MAX_NAME_LENGTH - len(prefix) - 10 - 2
        short = short[:room].strip("-") or "case"
        return f"{prefix}-{short}-{uuid.uuid4().hex[:10]}"

    def topic_name(self, case: str) -> str:
        """A new topic name for ``case``: only ``[a-z0-9-]``, at most 48 characters."""
        return self._name(case)

    def group_name(self, case: str) -> str:
        """A new group name for ``case``: only ``[a-z0-9-]``, at most 48 characters."""
        return self._name(case)

    # -- broker ------------------------------------------------------------------------

    def timeout(self, seconds: float) -> float:
        """``seconds`` scaled by ``timeout_scale``."""
        return seconds * self.timeout_scale

    def capabilities(self) -> Capabilities:
        """The driver's capabilities for ``url`` (the transport is built, not connected)."""
        broker = parse_url(self.url)
        cls = get_transport_class(broker.scheme)
        return cls(broker).capabilities

    def driver_name(self) -> str:
        broker = parse_url(self.url)
        return get_transport_class(broker.scheme).__name__

    def redacted_url(self) -> str:
        return parse_url(self.url).redacted()

    def app(self, id: str | None = None, **options: Any) -> App:
        """A new (not yet started) App on ``url``."""
        options.setdefault("connect_timeout", self.timeout(30.0))
        options.setdefault("close_timeout", self.timeout(30.0))
        return App(id or self._name("app"), broker=self.url, **options)

    @property
    def can_restart(self) -> bool:
        """True when :meth:`restart_broker` can do something (a command, or an override)."""
        return self.restart_command is not None or type(self).restart_broker is not Harness.restart_broker

    async def restart_broker(self) -> None:
        """Run ``restart_command`` and wait for it (bounded); raise if it fails.

        Override it to restart the broker some other way.
        """
        if not self.restart_command:
            raise RuntimeError("this harness has no restart_command")
        proc = await asyncio.create_subprocess_exec(
            *self.restart_command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        limit = self.timeout(self.restart_timeout)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{self.restart_command!r} did not finish within {limit:.0f}s") from None
        if proc.returncode != 0:
            tail = out.decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"{self.restart_command!r} exited with status {proc.returncode}:\n{tail}")
