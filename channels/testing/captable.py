"""The capability table of every installed driver, rendered as Markdown.

Built from the drivers' own ``Capabilities`` (transports are constructed, not connected),
so the README's table is whatever the code declares. ``scripts/capability-table`` writes
it into README.md; a unit test fails when README.md is out of date.
"""

from __future__ import annotations

from dataclasses import fields

from channels.capabilities import Capabilities
from channels.errors import ConfigurationError
from channels.registry import get_transport_class
from channels.url import parse_url

#: driver name -> the URL whose capabilities are shown
DRIVER_URLS = {
    "memory": "memory://",
    "kafka": "kafka://127.0.0.1:9092",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "mqtt": "mqtt://127.0.0.1:1883",
    "gmqtt": "gmqtt://127.0.0.1:1883",
    "nsq": "nsq://127.0.0.1:4150",
    "zmq": "zmq://127.0.0.1:5560",
}

START = "<!-- capabilities:start -->"
END = "<!-- capabilities:end -->"


def capabilities(url: str) -> Capabilities:
    broker = parse_url(url)
    return get_transport_class(broker.scheme)(broker).capabilities


def render() -> str:
    caps: dict[str, Capabilities | None] = {}
    for name, url in DRIVER_URLS.items():
        try:
            caps[name] = capabilities(url)
        except ConfigurationError:
            caps[name] = None
    names = list(caps)
    lines = ["| capability | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for field in fields(Capabilities):
        cells = []
        for name in names:
            c = caps[name]
            if c is None:
                cells.append("n/a")
                continue
            value = getattr(c, field.name)
            if isinstance(value, bool):
                cells.append("yes" if value else "—")
            else:
                cells.append(_size(value) if field.name == "max_message_size" else str(value))
        lines.append(f"| `{field.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` (README.md) with the table between the markers replaced."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{render()}\n{END}{tail}"


def _size(value: int) -> str:
    mib = 1024 * 1024
    return f"{value // mib} MiB" if value % mib == 0 else f"{value:,} B"
