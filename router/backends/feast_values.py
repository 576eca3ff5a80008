"""Stored feature values (Feast ``ValueProto`` bytes) as floats, for both
direct online-store reads (SQLite table, Redis hash)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.message import DecodeError

_NUMERIC_KINDS = frozenset({"float_val", "double_val", "int64_val", "int32_val", "bool_val"})
_F32 = struct.Struct("<f").unpack_from
_F64 = struct.Struct("<d").unpack_from


def blob_float(blob: bytes | None, parsed: ValueProto) -> float | None:
    """A stored ``ValueProto`` as a float. The two encodings the online store
    writes for numeric features (float_val: tag 0x35 + 4 bytes, double_val: tag
    0x29 + 8 bytes) are decoded directly, ~4x cheaper than parsing the message;
    anything else is parsed. A NULL (no value stored) is None, like a NaN, and
    so is a blob that is no ValueProto at all (written by something other than
    Feast, or damaged): the feature takes its default, the answer says so."""
    if blob is None:
        return None
    n = len(blob)
    if n == 5 and blob[0] == 0x35:
        x: float = _F32(blob, 1)[0]
    elif n == 9 and blob[0] == 0x29:
        x = _F64(blob, 1)[0]
    else:
        try:
            parsed.ParseFromString(blob)
        except DecodeError:
            return None
        return to_float(parsed)
    return x if math.isfinite(x) else None


def to_float(v: ValueProto) -> float | None:
    kind = v.WhichOneof("val")
    if kind not in _NUMERIC_KINDS:
        return None
    x = float(getattr(v, kind))
    return x if math.isfinite(x) else None


_F32_TAG = b"\x35"  # ValueProto.float_val: field 6, fixed32
_RUNS: dict[int, tuple[bytes, Callable[[bytes], tuple[float, ...]]]] = {}


def f32_run(joined: bytes, n: int) -> tuple[float, ...] | None:
    """``n`` stored values concatenated, as floats, when every one is a float32
    (5 bytes: tag + float) and finite: one ``struct`` record, one C call instead
    of ~5 Python calls per value. None otherwise (decode them one by one)."""
    run = _RUNS.get(n)
    if run is None:
        run = _RUNS[n] = (_F32_TAG * n, struct.Struct("<" + "xf" * n).unpack)
    if len(joined) != 5 * n or joined[::5] != run[0]:
        return None
    values = run[1](joined)
    return values if all(map(math.isfinite, values)) else None


def blob_floats(blobs: Sequence[bytes | None], parsed: ValueProto) -> list[float | None]:
    """``blob_float`` of each blob, as one ``f32_run`` when they allow it (the
    online store's usual encoding)."""
    n = len(blobs)
    if n and None not in blobs:
        values = f32_run(b"".join(blobs), n)  # type: ignore[arg-type]  # no None: checked
        if values is not None:
            return list(values)
    return [blob_float(b, parsed) for b in blobs]
