"""The Redis online store read directly: one pipelined HMGET per entity.

Why: Feast's ``online_read_async`` builds a redis-py pipeline object per call
and a ``ValueProto`` per feature, ~0.25 ms of router CPU per one-entity read
on the dev VM (docs/benchmarks.md); the whole router budget is 0.5 ms. This
reads the same hash Feast writes (key: serialized entity key + project; fields:
``mmh3("<view>:<feature>")`` per feature plus ``_ts:<view>``, computed with
Feast's own helpers) over a small RESP client on an asyncio protocol, and
decodes values straight to floats. Parity with Feast's read is tested
(tests/integration/test_feature_read.py).

Plain ``host:port`` connection strings (optionally ``password=``, ``db=``) are
read directly; anything else (TLS, Sentinel, Cluster) keeps Feast's read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from router.backends.feast_values import blob_floats
from router.backends.wire import FutureConnection, Pool, WireError
from router.pipeline.features import FeatureStoreUnavailable, Row

_MAX_IDLE = 32
_KEY_CACHE = 65536
Reply = list[bytes | None] | bytes | None
EntityKeyT = tuple[int | str, ...]
KeyProto = Callable[[EntityKeyT], EntityKeyProto]
ViewKeys = tuple[str, Sequence[EntityKeyT], KeyProto, tuple[str, ...]]
"""(view, entity keys, key -> Feast EntityKey, requested features)"""


class RespError(WireError):
    """Redis answered an error, or the reply could not be parsed."""


def encode(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def parse_reply(buf: bytearray, at: int) -> tuple[Reply, int] | None:
    """One reply (a bulk string, nil, an array of them, or a simple string)
    starting at ``at``; None when incomplete. Errors raise RespError."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = bytes(buf[at : at + 1]), bytes(buf[at + 1 : end])
    pos = end + 2
    if kind == b"-":
        raise RespError(line.decode(errors="replace"))
    if kind in (b"+", b":"):
        return line, pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            return None
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == b"*":
        items: list[bytes | None] = []
        for _ in range(int(line)):
            got = parse_reply(buf, pos)
            if got is None:
                return None
            item, pos = got
            if isinstance(item, list):
                raise RespError("nested arrays are not expected here")
            items.append(item)
        return items, pos
    raise RespError(f"unexpected reply type {kind!r}")


class _Conn(FutureConnection[list[Reply]]):
    """One connection to Redis; one pipelined batch of commands in flight."""

    peer = "Redis"

    def __init__(self) -> None:
        super().__init__()
        self.expect = 0
        self._replies: list[Reply] = []

    def parse(self) -> None:
        at = 0
        try:
            while len(self._replies) < self.expect:
                got = parse_reply(self.buf, at)
                if got is None:
                    break
                reply, at = got
                self._replies.append(reply)
        finally:
            del self.buf[:at]
        if len(self._replies) == self.expect:
            replies, self._replies = self._replies, []
            self.resolve(replies)

    def fail(self, exc: Exception) -> None:
        self._replies = []
        super().fail(exc)


class RespClient:
    """Kept-alive connections to one Redis; ``call`` pipelines a batch of commands."""

    def __init__(self, host: str, port: int, *, password: str | None, db: int) -> None:
        self._host, self._port = host, port
        self._hello: list[bytes] = []
        if password:
            self._hello.append(encode(b"AUTH", password.encode()))
        if db:
            self._hello.append(encode(b"SELECT", str(db).encode()))
        self.pool: Pool[_Conn] = Pool(_MAX_IDLE)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self._host, self._port)
        try:
            for cmd in self._hello:
                await self._exchange(conn, cmd, 1)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _exchange(self, conn: _Conn, payload: bytes, n: int) -> list[Reply]:
        conn.expect = n
        return await conn.send(payload)

    async def call(self, commands: Sequence[bytes]) -> list[Reply]:
        conn = self.pool.take()
        try:
            if conn is None:
                conn = await self._connect()
            replies = await self._exchange(conn, b"".join(commands), len(commands))
        except asyncio.CancelledError:
            # The caller's budget ran out: the connection reads the rest of its
            # answer and goes back to the pool rather than being closed.
            if conn is not None:
                self.pool.abandon(conn)
            raise
        except BaseException:  # an error: the exchange state is unknown
            if conn is not None:
                conn.close()
            raise
        self.pool.park(conn)
        return replies

    def close(self) -> None:
        self.pool.close()


def parse_connection_string(value: str) -> tuple[str, int, str | None, int] | None:
    """``host:port[,password=..][,db=..]`` -> parts; None for anything else."""
    first, *params = [p.strip() for p in value.split(",") if p.strip()]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        return None
    password, db = None, 0
    for p in params:
        key, _, val = p.partition("=")
        if key == "password":
            password = val
        elif key == "db" and val.isdigit():
            db = int(val)
        else:
            return None  # ssl, sentinel, ...: Feast's client handles those
    return host, int(port), password, db


class RedisRows:
    """Rows for ``(view, keys, features)`` from Feast's Redis layout."""

    def __init__(self, config: Any, online: Any, view_names: dict[str, str]) -> None:
        from feast.infra.online_stores.helpers import _mmh3

        parts = parse_connection_string(config.online_store.connection_string)
        if parts is None:
            raise ValueError("connection string needs Feast's own Redis client")
        host, port, password, db = parts
        self._client = RespClient(host, port, password=password, db=db)
        self._config, self._online, self._mmh3 = config, online, _mmh3
        self._names = view_names  # view -> name used in the hash (versioned or not)
        self._fields: dict[tuple[str, tuple[str, ...]], bytes] = {}
        self._keys: dict[tuple[str, EntityKeyT], bytes] = {}

    def _fields_of(self, view: str, features: tuple[str, ...]) -> bytes:
        got = self._fields.get((view, features))
        if got is None:
            name = self._names[view]
            fields = [self._mmh3(f"{name}:{f}") for f in features]
            fields.append(f"_ts:{name}".encode())
            got = self._fields[(view, features)] = b"".join(
                b"$%d\r\n%s\r\n" % (len(f), f) for f in fields
            )
        return got

    def _key(self, view: str, key: EntityKeyT, proto: KeyProto) -> bytes:
        got = self._keys.get((view, key))
        if got is None:
            got = self._online._generate_redis_keys_for_entities(self._config, [proto(key)])[0]
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            self._keys[(view, key)] = got
        return got

    async def read(
        self, reads: Sequence[tuple[str, Sequence[EntityKeyT], KeyProto, tuple[str, ...]]]
    ) -> list[list[Row]]:
        """Every view's rows in one round trip: one HMGET per (view, entity), pipelined."""
        commands: list[bytes] = []
        for view, keys, proto, features in reads:
            fields = self._fields_of(view, features)
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(features) + 3)  # HMGET, key, fields, _ts
            for k in keys:
                rk = self._key(view, k, proto)
                commands.append(b"%s$%d\r\n%s\r\n%s" % (head, len(rk), rk, fields))
        try:
            replies = await self._client.call(commands)
        except (OSError, RespError, ValueError) as e:
            raise FeatureStoreUnavailable("redis read failed") from e
        parsed, ts = ValueProto(), Timestamp()
        out: list[list[Row]] = []
        at = 0
        for _, keys, _, features in reads:
            rows: list[Row] = []
            for reply in replies[at : at + len(keys)]:
                if not isinstance(reply, list) or len(reply) != len(features) + 1:
                    raise FeatureStoreUnavailable("unexpected redis reply")
                values = blob_floats(reply[:-1], parsed)
                if all(v is None for v in values):
                    rows.append((None, None))  # a missing key: nils everywhere
                    continue
                ts.Clear()
                if reply[-1]:
                    try:
                        ts.ParseFromString(reply[-1])
                    except DecodeError:  # no event time to judge freshness by
                        rows.append((None, None))
                        continue
                # As Feast reads it: via a datetime (microsecond resolution).
                at_s = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC).timestamp()
                rows.append((at_s, values))
            out.append(rows)
            at += len(keys)
        return out

    def close(self) -> None:
        self._client.close()
