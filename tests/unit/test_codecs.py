from __future__ import annotations

import dataclasses

import pydantic
import pytest

from channels import codecs
from channels.errors import ConfigurationError, DecodeError, EncodeError


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("raw", b"\x00\xffbytes"),
        ("str", "héllo"),
        ("json", {"a": [1, 2, None], "b": "ü"}),
        ("msgpack", {"a": [1, 2], "b": b"\x00"}),
        ("binary", b"\x00\x01"),
        ("gzip", b"x" * 1000),
        ("json|gzip", {"nested": {"x": 1}}),
        ("json|binary", [1, 2, 3]),
    ],
)
def test_round_trip(name: str, value: object) -> None:
    data = codecs.dumps(name, value)
    assert isinstance(data, bytes)
    assert codecs.loads(name, data) == value


def test_chain_applies_in_order() -> None:
    data = codecs.dumps("json|binary", {"a": 1})
    assert data == b"eyJhIjoxfQ=="


def test_raw_refuses_objects() -> None:
    with pytest.raises(EncodeError, match="raw codec"):
        codecs.dumps("raw", {"a": 1})


def test_decode_error_is_typed() -> None:
    with pytest.raises(DecodeError):
        codecs.loads("json", b"{not json")
    with pytest.raises(DecodeError):
        codecs.loads("str", b"\xff\xfe")


def test_unknown_codec() -> None:
    with pytest.raises(ConfigurationError, match="unknown codec 'nope'"):
        codecs.get_codec("json|nope")


def test_pickle_needs_explicit_enable() -> None:
    with pytest.raises(ConfigurationError, match="enable_pickle"):
        codecs.get_codec("pickle")
    with pytest.raises(ConfigurationError):
        codecs.register("pickle", codecs.get_codec("json"))


def test_register_plugin_codec() -> None:
    class Upper:
        def dumps(self, obj: object) -> bytes:
            return str(obj).upper().encode()

        def loads(self, data: bytes) -> object:
            return data.decode().lower()

    codecs.register("upper-test", Upper())
    assert codecs.dumps("upper-test", "abc") == b"ABC"
    assert codecs.loads("upper-test|gzip", codecs.dumps("upper-test|gzip", "abc")) == "abc"


class Order(pydantic.BaseModel):
    id: int
    item: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_typed_pydantic_model() -> None:
    codec = codecs.TypedCodec(Order, None)
    assert codec.serializer == "json"
    data = codec.dumps(Order(id=1, item="tea"))
    assert data == b'{"id":1,"item":"tea"}'
    assert codec.loads(data) == Order(id=1, item="tea")


def test_typed_dataclass_and_plain_types() -> None:
    assert codecs.TypedCodec(Point, None).loads(
        codecs.TypedCodec(Point, None).dumps(Point(1, 2))
    ) == Point(1, 2)
    assert codecs.TypedCodec(str, None).loads(b"abc") == "abc"
    assert codecs.TypedCodec(int, "json").loads(b"5") == 5
    assert codecs.TypedCodec(None, None).loads(b"abc") == b"abc"


def test_typed_none_passes_through() -> None:
    codec = codecs.TypedCodec(Order, None)
    assert codec.dumps(None) is None
    assert codec.loads(None) is None


def test_typed_decode_error_for_bad_model() -> None:
    with pytest.raises(DecodeError, match="Order"):
        codecs.TypedCodec(Order, None).loads(b'{"id": "x"}')


def test_sends_are_checked_against_the_declared_types() -> None:
    order = codecs.TypedCodec(Order, None)
    assert order.dumps({"id": 1, "item": "tea"}) == b'{"id":1,"item":"tea"}'
    with pytest.raises(EncodeError, match="value"):
        order.dumps({"id": "notint"})
    key = codecs.TypedCodec(int, "json", "key")
    with pytest.raises(EncodeError, match="key: expected int, got str"):
        key.dumps("abc")
    with pytest.raises(EncodeError, match="expected int, got bool"):
        key.dumps(True)
    assert codecs.TypedCodec(float, "json").dumps(1) == b"1"
    with pytest.raises(EncodeError, match="expected Point"):
        codecs.TypedCodec(Point, None).dumps([1, 2])
    assert codecs.TypedCodec(Point, None).dumps({"x": 1, "y": 2}) == b'{"x":1,"y":2}'
    with pytest.raises(EncodeError, match="expected bytes, got str"):
        codecs.TypedCodec(bytes, None).dumps("text")


def test_json_refuses_nan() -> None:
    with pytest.raises(EncodeError):
        codecs.TypedCodec(None, "json").dumps(float("nan"))
