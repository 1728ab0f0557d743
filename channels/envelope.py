"""The envelope: key, headers and "no value" for transports that cannot carry them.

Layout (all integers big-endian; documented with test vectors in docs/envelope.md)::

    magic    4 bytes  00 43 48 45  ("\\0CHE")
    version  1 byte   01
    flags    1 byte   bit 0: a key follows; bit 1: the value is None (a tombstone)
    [key]    u32 length + bytes                     (only if bit 0 is set)
    count    u16 number of headers
    headers  count x (u16 name length + UTF-8 name, u32 value length + value bytes)
    value    the rest of the payload

A payload that does not start with the magic is not an envelope: it is delivered as it
came (value only, no key, no headers), which is how messages from foreign producers arrive.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from channels.errors import DecodeError, EncodeError

__all__ = ["MAGIC", "VERSION", "Unwrapped", "is_envelope", "unwrap", "wrap"]

MAGIC = b"\x00CHE"
VERSION = 1
FLAG_KEY = 0x01
FLAG_NONE = 0x02
_HEAD = struct.Struct(">4sBB")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF

Unwrapped = tuple[bytes | None, bytes | None, dict[str, bytes]]


def is_envelope(payload: bytes) -> bool:
    return payload[:4] == MAGIC


def wrap(key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]) -> bytes:
    """Encode key, value and headers into one payload."""
    flags = (FLAG_KEY if key is not None else 0) | (FLAG_NONE if value is None else 0)
    parts = [_HEAD.pack(MAGIC, VERSION, flags)]
    if key is not None:
        if len(key) > _MAX_U32:
            raise EncodeError("key too long for the envelope")
        parts += [_U32.pack(len(key)), key]
    if len(headers) > _MAX_U16:
        raise EncodeError(f"at most {_MAX_U16} headers fit in the envelope")
    parts.append(_U16.pack(len(headers)))
    for name, data in headers.items():
        raw_name = name.encode("utf-8")
        if len(raw_name) > _MAX_U16:
            raise EncodeError(f"header name longer than {_MAX_U16} bytes")
        parts += [_U16.pack(len(raw_name)), raw_name, _U32.pack(len(data)), data]
    if value is not None:
        parts.append(value)
    return b"".join(parts)


def unwrap(payload: bytes) -> Unwrapped:
    """Return (key, value, headers). A payload without the magic is returned as a raw value.

    A payload with the magic that is malformed raises DecodeError.
    """
    if payload[:4] != MAGIC:
        return None, payload, {}
    view = memoryview(payload)
    try:
        _magic, version, flags = _HEAD.unpack_from(view, 0)
        if version != VERSION:
            raise DecodeError(f"unsupported envelope version {version}")
        if flags & ~(FLAG_KEY | FLAG_NONE):
            raise DecodeError(f"unknown envelope flags 0x{flags:02x}")
        pos = _HEAD.size
        key: bytes | None = None
        if flags & FLAG_KEY:
            (length,) = _U32.unpack_from(view, pos)
            pos += 4
            key = _take(view, pos, length)
            pos += length
        (count,) = _U16.unpack_from(view, pos)
        pos += 2
        headers: dict[str, bytes] = {}
        for _ in range(count):
            (name_len,) = _U16.unpack_from(view, pos)
            pos += 2
            name = _take(view, pos, name_len).decode("utf-8")
            pos += name_len
            (value_len,) = _U32.unpack_from(view, pos)
            pos += 4
            headers[name] = _take(view, pos, value_len)
            pos += value_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed envelope: {exc}") from exc
    rest = bytes(view[pos:])
    if flags & FLAG_NONE:
        if rest:
            raise DecodeError("malformed envelope: bytes after a None value")
        return key, None, headers
    return key, rest, headers


def _take(view: memoryview, pos: int, length: int) -> bytes:
    if pos + length > len(view):
        raise DecodeError("malformed envelope: truncated")
    return bytes(view[pos : pos + length])
