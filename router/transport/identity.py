"""Who is calling: the tenant id, established from the transport.

In "edge" mode the router sits behind Envoy, which authenticates callers
(client certificate or JWT) and forwards the verified identity. Those headers
are only believed when the connection itself comes from a trusted edge, proven
by the peer's mTLS certificate (URI SAN); otherwise anyone reaching the router
directly could claim any tenant by sending the header.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Mapping

import grpc

from router.errors import Unauthenticated
from router.settings import AuthSettings


def peer_uris(context: grpc.aio.ServicerContext) -> frozenset[str]:
    """URI SANs of the mTLS peer's certificate (empty without mTLS)."""
    auth = context.auth_context() or {}
    values = list(auth.get("x509_subject_alternative_name", ())) + list(
        auth.get("peer_spiffe_id", ())
    )
    return frozenset(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values)


# Parsed forwarded identities, by header value: a caller sends the same one on
# every request (bounded: at most this many distinct callers are remembered).
_PARSED = 4096


@functools.lru_cache(maxsize=_PARSED)
def _xfcc_uri(value: str) -> str | None:
    """The URI of the last element of an XFCC header (the one our edge set)."""
    last = value.split(",")[-1]
    for part in last.split(";"):
        key, _, val = part.strip().partition("=")
        if key.lower() == "uri":
            return val.strip('"')
    return None


@functools.lru_cache(maxsize=_PARSED)
def _jwt_tenant(value: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    tenant = claims.get("tenant") if isinstance(claims, dict) else None
    return tenant if isinstance(tenant, str) else None


def tenant_from_uri(uri: str, prefix: str) -> str | None:
    """``spiffe://inferline/tenant/<id>/svc/<name>`` -> ``<id>``."""
    if not uri.startswith(prefix):
        return None
    tenant, _, rest = uri[len(prefix) :].partition("/")
    return tenant if tenant and rest.startswith("svc/") else None


def caller_tenant(
    settings: AuthSettings, metadata: Mapping[str, str], peers: Callable[[], frozenset[str]]
) -> str | None:
    """The caller's tenant id, or None when the caller sent none. ``peers`` gives
    the mTLS peer's URI SANs; it is only called for forwarded identity."""
    if settings.mode == "header":
        return metadata.get(settings.tenant_header)
    xfcc = metadata.get(settings.xfcc_header)
    jwt = metadata.get(settings.jwt_payload_header)
    if xfcc is None and jwt is None:
        return None
    if peers().isdisjoint(settings.trusted_peers):
        raise Unauthenticated("forwarded identity from an untrusted peer")
    if xfcc is not None:
        uri = _xfcc_uri(xfcc)
        tenant = tenant_from_uri(uri, settings.tenant_uri_prefix) if uri else None
    else:
        assert jwt is not None
        tenant = _jwt_tenant(jwt)
    if tenant is None:
        raise Unauthenticated("forwarded identity names no tenant")
    return tenant


def caller_identity(settings: AuthSettings, metadata: Mapping[str, str]) -> str | None:
    """The caller's workload identity for the audit trail: the SPIFFE URI the edge
    verified for an mTLS caller, else None (the tenant stands in). Only meaningful
    after ``caller_tenant`` accepted the request (it checks the peer is the edge)."""
    if settings.mode != "edge":
        return None
    xfcc = metadata.get(settings.xfcc_header)
    return _xfcc_uri(xfcc) if xfcc is not None else None
