"""Stored Feast values as floats: the one-record decode of a float32 run equals
decoding each value, whatever the run holds."""

from __future__ import annotations

import pytest
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from router.backends.feast_values import blob_float, blob_floats


def _f32(x: float) -> bytes:
    return bytes(ValueProto(float_val=x).SerializeToString())


@pytest.mark.parametrize(
    "blobs",
    [
        [_f32(1.5), _f32(-2.25), _f32(0.0), _f32(3e38)],
        [_f32(1.5), _f32(float("nan")), _f32(2.0)],  # a NaN reads as None
        [_f32(1.5), bytes(ValueProto(double_val=0.1).SerializeToString())],
        [_f32(1.5), bytes(ValueProto(int64_val=7).SerializeToString()), None],
        [_f32(1.5), bytes(ValueProto(string_val="x").SerializeToString())],
        [_f32(float("inf"))],
        [],
    ],
)
def test_a_run_decodes_as_each_value_does(blobs: list[bytes | None]) -> None:
    parsed = ValueProto()
    want = [None if b is None else blob_float(b, parsed) for b in blobs]
    assert blob_floats(blobs, parsed) == want  # non-finite values are None in both
    assert blob_floats([_f32(0.5)] * 3, parsed) == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("blob", [b"\xff\xff", b"\x0a\x05ab", b"\x35\x00"])
def test_a_blob_that_is_no_value_proto_reads_as_null(blob: bytes) -> None:
    assert blob_float(blob, ValueProto()) is None
    assert blob_floats([blob, ValueProto(float_val=1.5).SerializeToString()], ValueProto()) == [
        None,
        1.5,
    ]
