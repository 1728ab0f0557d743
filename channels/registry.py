"""Find a driver by URL scheme.

Drivers are entry points in the ``channels.transports`` group, loaded on first use of a
scheme. The built-in drivers are registered in pyproject.toml exactly as a plugin would be.
:func:`register` adds one in code (handy in tests).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from channels.errors import ConfigurationError

if TYPE_CHECKING:
    from transports.base import Transport

__all__ = ["available_schemes", "get_transport_class", "register", "unregister"]

#: scheme -> the extra that installs its client library
EXTRAS = {
    "kafka": "kafka",
    "kafka+ssl": "kafka",
    "amqp": "amqp",
    "amqps": "amqp",
    "mqtt": "mqtt",
    "mqtts": "mqtt",
    "gmqtt": "gmqtt",
    "gmqtts": "gmqtt",
    "nsq": "nsq",
    "zmq": "zmq",
    "zmq+ipc": "zmq",
}

_registered: dict[str, type[Transport]] = {}
_loaded: dict[str, type[Transport]] = {}


def register(scheme: str, cls: type[Transport]) -> None:
    """Register ``cls`` for ``scheme``; a scheme can be registered once."""
    scheme = scheme.lower()
    if scheme in _registered and _registered[scheme] is not cls:
        raise ConfigurationError(f"scheme {scheme!r} is already registered")
    _registered[scheme] = cls


def unregister(scheme: str) -> None:
    _registered.pop(scheme.lower(), None)


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group="channels.transports")}


def available_schemes() -> list[str]:
    return sorted(set(_entry_points()) | set(_registered))


def get_transport_class(scheme: str) -> type[Transport]:
    scheme = scheme.lower()
    if scheme in _registered:
        return _registered[scheme]
    if scheme in _loaded:
        return _loaded[scheme]
    eps = _entry_points()
    ep = eps.get(scheme)
    if ep is None:
        known = ", ".join(f"{s}://" for s in available_schemes())
        hint = ""
        if scheme in EXTRAS:
            hint = f"; pip install 'anychannel[{EXTRAS[scheme]}]'"
        raise ConfigurationError(f"unknown broker scheme {scheme}://{hint} (known: {known})")
    try:
        cls = ep.load()
    except ImportError as exc:
        module = ep.value.split(":", 1)[0]
        if exc.name == module:
            raise ConfigurationError(
                f"the {scheme}:// driver module {module!r} is registered but cannot be imported"
            ) from exc
        extra = EXTRAS.get(scheme, scheme.split("+")[0])
        raise ConfigurationError(
            f"the {scheme}:// driver needs a library that is not installed ({exc.name or exc}): "
            f"pip install 'anychannel[{extra}]'"
        ) from exc
    _loaded[scheme] = cls
    return cls  # type: ignore[no-any-return]
