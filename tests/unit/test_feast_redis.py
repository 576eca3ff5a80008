"""The direct Redis read's wire pieces: RESP replies and connection strings."""

from __future__ import annotations

import pytest

from router.backends.feast_redis import RespError, encode, parse_connection_string, parse_reply


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode(b"HMGET", b"k", b"f") == b"*3\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$1\r\nf\r\n"


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (b"*3\r\n$2\r\nab\r\n$-1\r\n$0\r\n\r\n", [b"ab", None, b""]),
        (b"$3\r\na\r\n\r\n", b"a\r\n"),  # binary-safe: CRLF inside a bulk string
        (b"+OK\r\n", b"OK"),
        (b"$-1\r\n", None),
    ],
)
def test_complete_replies(raw: bytes, reply: object) -> None:
    assert parse_reply(bytearray(raw), 0) == (reply, len(raw))


@pytest.mark.parametrize("cut", range(1, 20))
def test_incomplete_reply_waits_for_more(cut: int) -> None:
    raw = b"*2\r\n$5\r\nhello\r\n$-1\r\n"
    if cut < len(raw):
        assert parse_reply(bytearray(raw[:cut]), 0) is None


def test_error_reply_raises() -> None:
    with pytest.raises(RespError, match="WRONGTYPE"):
        parse_reply(bytearray(b"-WRONGTYPE Operation against a key\r\n"), 0)


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379, None, 0)),
        ("redis:6380,db=2", ("redis", 6380, None, 2)),
        ("redis:6379,password=s3cret", ("redis", 6379, "s3cret", 0)),
        ("redis:6379,ssl=true", None),  # Feast's own client handles TLS
        ("redis", None),
    ],
)
def test_connection_strings(value: str, parts: object) -> None:
    assert parse_connection_string(value) == parts
