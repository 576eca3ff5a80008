"""bench.triton_cpu: the request it replays and its argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from bench.triton_cpu import fraud_request, main


def test_replayed_request_is_one_fraud_row_of_33_floats() -> None:
    req = service_pb2.ModelInferRequest.FromString(fraud_request())
    assert (req.model_name, req.model_version) == ("fraud", "1")
    assert [(i.name, i.datatype, list(i.shape)) for i in req.inputs] == [
        ("input__0", "FP32", [1, 33])
    ]
    row = np.frombuffer(req.raw_input_contents[0], dtype=np.float32)
    assert row.shape == (33,) and np.isfinite(row).all()
    assert fraud_request() == fraud_request()  # the same bytes every run


def test_comparing_an_allocator_with_itself_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--allocator", "system", "--against-allocator", "system"])
    assert e.value.code == 2
    assert "must differ" in capsys.readouterr().err
