"""Codecs turn keys and values into bytes and back.

Built in: ``raw`` (bytes; str is encoded UTF-8), ``str``, ``json``, ``msgpack``,
``binary`` (base64) and ``gzip``. Names chain with ``|``: ``"json|gzip"`` serializes to
JSON, then compresses; decoding runs the chain backwards. Plugins add codecs through the
``channels.codecs`` entry-point group. ``pickle`` exists only after :func:`enable_pickle`
(it runs code from the payload, so it is never reachable from a URL or a header).

``value_type`` / ``key_type`` add a typed layer: pydantic models, dataclasses and plain
types are turned into JSON-able data before serialization and rebuilt after decoding.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip as _gzip
import json as _json
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from channels.errors import ConfigurationError, DecodeError, EncodeError

__all__ = [
    "Codec",
    "CodecArg",
    "TypedCodec",
    "dumps",
    "enable_pickle",
    "get_codec",
    "loads",
    "register",
    "resolve",
]


@runtime_checkable
class Codec(Protocol):
    """Anything with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


CodecArg = str | Codec | None


class _Raw:
    name = "raw"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        if isinstance(obj, str):
            return obj.encode("utf-8")
        raise EncodeError(
            f"the raw codec takes bytes or str, not {type(obj).__name__}; "
            "give the topic a serializer (e.g. 'json') or a type"
        )

    def loads(self, data: bytes) -> Any:
        return data


class _Str:
    name = "str"

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes):
            return obj
        return str(obj).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return data.decode("utf-8")


class _Json:
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        return _json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return _json.loads(data)


class _Msgpack:
    name = "msgpack"

    def _module(self) -> Any:
        try:
            import msgpack
        except ImportError as exc:
            raise ConfigurationError(
                "the msgpack codec needs msgpack: pip install 'anychannel[msgpack]'"
            ) from exc
        return msgpack

    def dumps(self, obj: Any) -> bytes:
        data: bytes = self._module().packb(obj, use_bin_type=True)
        return data

    def loads(self, data: bytes) -> Any:
        return self._module().unpackb(data, raw=False)


class _Binary:
    name = "binary"

    def dumps(self, obj: Any) -> bytes:
        return base64.b64encode(_Raw().dumps(obj))

    def loads(self, data: bytes) -> Any:
        return base64.b64decode(data, validate=True)


class _Gzip:
    name = "gzip"

    def dumps(self, obj: Any) -> bytes:
        return _gzip.compress(_Raw().dumps(obj), mtime=0)

    def loads(self, data: bytes) -> Any:
        return _gzip.decompress(data)


class _Pickle:
    name = "pickle"

    def dumps(self, obj: Any) -> bytes:
        import pickle

        return pickle.dumps(obj)

    def loads(self, data: bytes) -> Any:
        import pickle

        return pickle.loads(data)


class _Chain:
    def __init__(self, names: str, parts: list[Codec]) -> None:
        self.name = names
        self.parts = parts

    def dumps(self, obj: Any) -> bytes:
        for codec in self.parts:
            obj = codec.dumps(obj)
        return bytes(obj)

    def loads(self, data: bytes) -> Any:
        obj: Any = data
        for codec in reversed(self.parts):
            obj = codec.loads(obj)
        return obj


_REGISTRY: dict[str, Codec] = {
    "raw": _Raw(),
    "bytes": _Raw(),
    "str": _Str(),
    "json": _Json(),
    "msgpack": _Msgpack(),
    "binary": _Binary(),
    "gzip": _Gzip(),
}
_PLUGINS_LOADED = False


def register(name: str, codec: Codec) -> None:
    """Add a codec under ``name`` (plugins do this through the entry-point group)."""
    if not name or "|" in name:
        raise ConfigurationError(f"invalid codec name {name!r}")
    if name == "pickle":
        raise ConfigurationError("use channels.codecs.enable_pickle() to enable pickle")
    if not isinstance(codec, Codec):
        raise ConfigurationError(f"codec {name!r} needs dumps() and loads()")
    _REGISTRY[name] = codec


def enable_pickle() -> None:
    """Make the ``pickle`` codec available. Only for payloads from trusted producers."""
    _REGISTRY["pickle"] = _Pickle()


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="channels.codecs"):
        if ep.name in _REGISTRY or ep.name == "pickle":
            continue
        obj = ep.load()
        _REGISTRY[ep.name] = obj() if isinstance(obj, type) else obj


def get_codec(name: CodecArg) -> Codec:
    """Resolve a codec name (possibly a ``|`` chain) or codec object."""
    if name is None:
        return _REGISTRY["raw"]
    if not isinstance(name, str):
        if isinstance(name, Codec):
            return name
        raise ConfigurationError(f"not a codec: {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    _load_plugins()
    names = [part.strip() for part in name.split("|")]
    parts: list[Codec] = []
    for part in names:
        if part not in _REGISTRY:
            hint = " (call channels.codecs.enable_pickle() first)" if part == "pickle" else ""
            raise ConfigurationError(
                f"unknown codec {part!r}{hint}; known: {', '.join(sorted(_REGISTRY))}"
            )
        parts.append(_REGISTRY[part])
    return parts[0] if len(parts) == 1 else _Chain(name, parts)


def dumps(codec: CodecArg, obj: Any) -> bytes:
    return _dumps(get_codec(codec), obj, codec)


def loads(codec: CodecArg, data: bytes) -> Any:
    return _loads(get_codec(codec), data, codec)


def _dumps(codec: Codec, obj: Any, label: CodecArg) -> bytes:
    try:
        return codec.dumps(obj)
    except (EncodeError, ConfigurationError):
        raise
    except Exception as exc:
        raise EncodeError(
            f"cannot serialize {type(obj).__name__} with {_name(label)}: {exc}"
        ) from exc


def _loads(codec: Codec, data: bytes, label: CodecArg) -> Any:
    try:
        return codec.loads(data)
    except (DecodeError, ConfigurationError):
        raise
    except Exception as exc:
        raise DecodeError(f"cannot decode with {_name(label)}: {exc}") from exc


def _name(codec: CodecArg) -> str:
    return codec if isinstance(codec, str) else getattr(codec, "name", type(codec).__name__)


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate") and hasattr(tp, "model_dump")


def default_serializer(tp: Any) -> str:
    """The serializer used when a topic gives a type but no serializer."""
    if tp is None or tp is bytes:
        return "raw"
    if tp is str:
        return "str"
    return "json"


class TypedCodec:
    """A codec plus a type: objects are converted to and from ``tp`` around the codec.

    ``tp`` may be None (no conversion), bytes, str, int, float, bool, dict, list, a
    dataclass or a pydantic model. ``None`` passes through untouched in both directions.
    """

    def __init__(self, tp: Any, serializer: CodecArg, role: str = "value") -> None:
        self.tp = tp
        self.role = role
        self.serializer: CodecArg = serializer if serializer is not None else default_serializer(tp)
        self.codec = get_codec(self.serializer)
        self._to_data: Callable[[Any], Any] = _identity
        self._from_data: Callable[[Any], Any] = _identity
        if _is_model(tp):
            self._to_data = _model_dumper(tp)
            self._from_data = tp.model_validate
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
            self._to_data = _dataclass_dumper(tp)
            self._from_data = lambda data: tp(**data)
        elif tp in _PLAIN:
            self._to_data = _type_checker(tp)
            if tp in (int, float, bool):
                self._from_data = tp

    def dumps(self, obj: Any) -> bytes | None:
        """Check ``obj`` against the type, convert and serialize it (EncodeError if it does
        not fit: a producer never writes what its own consumers could not read)."""
        if obj is None:
            return None
        try:
            data = self._to_data(obj)
            return _dumps(self.codec, data, self.serializer)
        except EncodeError as exc:
            raise EncodeError(f"{self.role}: {exc.message}") from exc
        except Exception as exc:
            raise EncodeError(f"{self.role}: cannot convert {type(obj).__name__} for serialization: {exc}") from exc

    def loads(self, data: bytes | None) -> Any:
        if data is None:
            return None
        obj = _loads(self.codec, data, self.serializer)
        try:
            return self._from_data(obj)
        except Exception as exc:
            raise DecodeError(
                f"cannot build {getattr(self.tp, '__name__', self.tp)}: {exc}"
            ) from exc


def _identity(obj: Any) -> Any:
    return obj


_PLAIN = (bytes, str, int, float, bool, dict, list)


def _type_checker(tp: type) -> Callable[[Any], Any]:
    accepted: tuple[type, ...] = (int, float) if tp is float else (tp,)

    def check(obj: Any) -> Any:
        if not isinstance(obj, accepted) or (isinstance(obj, bool) and tp is not bool):
            raise EncodeError(f"expected {tp.__name__}, got {type(obj).__name__}")
        return obj

    return check


def _model_dumper(tp: Any) -> Callable[[Any], Any]:
    def dump(obj: Any) -> Any:
        model = obj if isinstance(obj, tp) else tp.model_validate(obj)
        return model.model_dump(mode="json")

    return dump


def _dataclass_dumper(tp: Any) -> Callable[[Any], Any]:
    def dump(obj: Any) -> Any:
        if isinstance(obj, tp):
            return dataclasses.asdict(obj)
        if isinstance(obj, dict):
            return dataclasses.asdict(tp(**obj))
        raise EncodeError(f"expected {tp.__name__}, got {type(obj).__name__}")

    return dump


def resolve(tp: Any, serializer: CodecArg, role: str = "value") -> TypedCodec:
    return TypedCodec(tp, serializer, role)
