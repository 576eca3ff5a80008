"""The fast lane's TLS over memory BIOs, against a real TLS client (OpenSSL via
``ssl``, its own BIOs): handshake with client certificates, records split at any
byte, close_notify both ways, and a refused client certificate."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from inferline_edge.certs import ROUTER_DNS, DevPKI
from router.transport.tls_bio import ServerTls


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"), tenants=[("demo", "cli")], days=1)


def _server_ctx(pki: DevPKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.router.cert, pki.router.key)
    ctx.load_verify_locations(pki.ca.cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Client:
    def __init__(self, pki: DevPKI, cert: tuple[Path, Path] | None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca.cert)
        if cert is not None:
            ctx.load_cert_chain(*cert)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=ROUTER_DNS)

    def step(self, data: bytes) -> bytes:
        """Feed the server's bytes; return what the client sends next."""
        self.inc.write(data)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.out.read()

    def read_all(self, data: bytes) -> bytes:
        self.inc.write(data)
        chunks = []
        while True:
            try:
                chunks.append(self.obj.read(65536))
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return b"".join(chunks)


def _handshake(server: ServerTls, client: _Client, chunk: int = 1 << 20) -> None:
    to_server = client.step(b"")
    to_client = b""
    for _ in range(10):
        for i in range(0, len(to_server), chunk):  # the wire may split anywhere
            plain, reply = server.receive(to_server[i : i + chunk])
            assert plain == b""
            to_client += reply
        to_server = client.step(to_client)
        to_client = b""
        if server.ready and not to_server:
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_requests_and_answers_cross_whatever_the_segmenting(pki: DevPKI, chunk: int) -> None:
    server = ServerTls(_server_ctx(pki))
    client = _Client(pki, (pki.edge_client.cert, pki.edge_client.key))
    _handshake(server, client, chunk)
    assert server.ssl_object.getpeercert() is not None  # the client's certificate
    for body in (b"POST / HTTP/1.1\r\n\r\n", b"x" * 100_000):  # one record, several
        client.obj.write(body)
        wire, got = client.out.read(), b""
        for i in range(0, len(wire), chunk):
            plain, reply = server.receive(wire[i : i + chunk])
            got += plain
            assert reply == b"" or chunk > 1  # tickets may ride along once
        assert got == body
        assert client.read_all(server.send(b"answer:" + body[:10])) == b"answer:" + body[:10]
    client.obj.write(b"tail")
    plain, _ = server.receive(client.out.read())
    assert plain == b"tail" and not server.closed
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()  # the client's close_notify
    plain, _ = server.receive(client.out.read())
    assert plain == b"" and server.closed


def test_server_close_sends_close_notify(pki: DevPKI) -> None:
    server = ServerTls(_server_ctx(pki))
    client = _Client(pki, (pki.edge_client.cert, pki.edge_client.key))
    _handshake(server, client)
    notify = server.close()
    assert notify
    client.inc.write(notify)
    assert client.obj.read(10) == b""  # end of stream: close_notify received
    client.obj.unwrap()  # completes at once: the server's close_notify is in


def test_a_client_without_a_trusted_certificate_is_refused(pki: DevPKI) -> None:
    other = pki.issue_client("demo", "cli", other_ca=True)
    for cert in (None, (other.cert, other.key)):
        server = ServerTls(_server_ctx(pki))
        client = _Client(pki, cert)
        to_server = client.step(b"")
        with pytest.raises(ssl.SSLError):
            for _ in range(10):
                _, reply = server.receive(to_server)
                to_server = client.step(reply)
                if not to_server:  # TLS 1.3: the client's certificate comes last
                    to_server = client.out.read()
        assert not server.ready
