from __future__ import annotations

import base64
import json

import pytest

from router.transport.identity import _jwt_tenant, _xfcc_uri, tenant_from_uri

PREFIX = "spiffe://inferline/tenant/"


@pytest.mark.parametrize(
    ("xfcc", "uri"),
    [
        (
            "By=spiffe://inferline/edge/envoy;Hash=ab12;URI=spiffe://inferline/tenant/acme/svc/web",
            "spiffe://inferline/tenant/acme/svc/web",
        ),
        # Several elements: only the last (set by our edge) counts.
        (
            "URI=spiffe://inferline/tenant/evil/svc/x,Hash=1;URI=spiffe://inferline/tenant/ok/svc/y",
            "spiffe://inferline/tenant/ok/svc/y",
        ),
        ("Hash=ab12", None),
    ],
)
def test_xfcc_uri(xfcc: str, uri: str | None) -> None:
    assert _xfcc_uri(xfcc) == uri


@pytest.mark.parametrize(
    ("uri", "tenant"),
    [
        ("spiffe://inferline/tenant/acme/svc/web", "acme"),
        ("spiffe://inferline/tenant/acme", None),
        ("spiffe://inferline/tenant//svc/web", None),
        ("spiffe://other/tenant/acme/svc/web", None),
        ("spiffe://inferline/edge/envoy", None),
    ],
)
def test_tenant_from_uri(uri: str, tenant: str | None) -> None:
    assert tenant_from_uri(uri, PREFIX) == tenant


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("payload", "tenant"),
    [
        (_b64({"tenant": "acme", "sub": "svc"}), "acme"),
        (_b64({"sub": "svc"}), None),
        (_b64({"tenant": 7}), None),
        (_b64([1, 2]), None),
        ("!!!not-base64", None),
        (base64.urlsafe_b64encode(b"\xff\xfe").decode(), None),
    ],
)
def test_jwt_tenant(payload: str, tenant: str | None) -> None:
    assert _jwt_tenant(payload) == tenant
