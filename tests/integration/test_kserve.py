"""KServe v2 (Open Inference Protocol) through the router: same policies as Predict."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from scripts.stack import Stack

DEMO = {"x-inferline-tenant": "demo"}
PAYMENTS = {"x-inferline-tenant": "payments"}


def _infer(
    client: tgrpc.InferenceServerClient,
    model: str,
    version: str,
    x: np.ndarray,
    headers: dict[str, str] | None,
) -> np.ndarray:
    inp = tgrpc.InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = client.infer(
        model,
        [inp],
        model_version=version,
        headers=headers,
        outputs=[tgrpc.InferRequestedOutput("output__0")],
        client_timeout=10,
    )
    out = res.as_numpy("output__0")
    assert out is not None
    return out


def test_model_infer_through_router_matches_direct_triton(stack: Stack) -> None:
    assert stack.router is not None and stack.triton is not None
    via = tgrpc.InferenceServerClient(stack.router.address)
    direct = tgrpc.InferenceServerClient(stack.triton.grpc_url)
    rng = np.random.default_rng(1)
    fraud = rng.normal(size=(8, 33)).astype(np.float32)
    ranker = rng.normal(size=(5, 26)).astype(np.float32)
    for model, x, version in [("fraud", fraud, "1"), ("ranker", ranker, "1")]:
        want = _infer(direct, model, version, x, None)
        for v in ("", "prod", version):  # empty and alias resolve to prod = version 1
            got = _infer(via, model, v, x, DEMO)
            np.testing.assert_array_equal(got, want)
    canary = _infer(via, "fraud", "canary", fraud, DEMO)
    np.testing.assert_array_equal(canary, _infer(direct, "fraud", "2", fraud, None))


def test_model_metadata_and_ready_are_scoped_to_tenant(stack: Stack) -> None:
    assert stack.router is not None
    via = tgrpc.InferenceServerClient(stack.router.address)
    meta = via.get_model_metadata("fraud", headers=DEMO)
    assert meta.name == "fraud" and meta.inputs[0].name == "input__0"
    assert via.is_model_ready("fraud", headers=DEMO)
    assert via.is_server_live() and via.is_server_ready()


@pytest.mark.parametrize(
    ("headers", "model", "version", "status"),
    [
        (PAYMENTS, "ranker", "", "StatusCode.PERMISSION_DENIED"),  # another tenant's model
        (None, "fraud", "", "StatusCode.UNAUTHENTICATED"),
        (DEMO, "nosuch", "", "StatusCode.NOT_FOUND"),
        (DEMO, "fraud", "7", "StatusCode.NOT_FOUND"),
        (DEMO, "fraud", "staging", "StatusCode.NOT_FOUND"),
    ],
)
def test_refusals(
    stack: Stack, headers: dict[str, str] | None, model: str, version: str, status: str
) -> None:
    assert stack.router is not None
    via = tgrpc.InferenceServerClient(stack.router.address)
    with pytest.raises(InferenceServerException) as exc:
        _infer(via, model, version, np.zeros((1, 33), np.float32), headers)
    assert exc.value.status() == status


def test_bad_tensor_shape_is_invalid_argument(stack: Stack) -> None:
    assert stack.router is not None
    via = tgrpc.InferenceServerClient(stack.router.address)
    with pytest.raises(InferenceServerException) as exc:
        _infer(via, "fraud", "", np.zeros((1, 5), np.float32), DEMO)
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
