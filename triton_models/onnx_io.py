"""ONNX artifacts as Triton's onnxruntime backend loads them.

Two things decide whether an ONNX file that scores fine in this venv loads on
a cluster's Triton:

- **Tensor names.** The onnxruntime backend binds ``config.pbtxt``'s inputs and
  outputs to the graph's own names, so every graph the builder writes uses
  ``input__0``/``output__0``, the names of every model config here (and of the
  router's requests).
- **The onnxruntime inside that Triton.** It refuses IR versions and opsets
  newer than its release knows, although this venv's newer onnxruntime reads
  them (``onnx.helper.make_model`` stamps the installed onnx's IR version,
  14 with onnx 1.23, on every model it makes).

``ort_refusal`` says what would stop a model loading; the builder then keeps
that model on the Python backend, which runs this venv's onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

INPUT, OUTPUT = "input__0", "output__0"


@dataclass(frozen=True)
class OrtLimits:
    """What one Triton release's onnxruntime backend reads."""

    release: str
    ir_version: int
    opsets: Mapping[str, int] = field(default_factory=dict)


# Triton 2.51 (container 24.10) bundles onnxruntime 1.19.2 (Triton's
# compatibility matrix), which reads ONNX 1.16 models: IR 10, opset 21,
# ai.onnx.ml 4, and its own contrib ops (the QDQ quantizer's com.microsoft ops).
TRITON_2_51 = OrtLimits(
    release="Triton 2.51 (onnxruntime 1.19.2)",
    ir_version=10,
    opsets={"": 21, "ai.onnx": 21, "ai.onnx.ml": 4, "com.microsoft": 1},
)


def with_triton_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its single input and output renamed to
    ``input__0``/``output__0`` (every node that reads or writes them too)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError(f"expected one input and one output, got {len(g.input)}/{len(g.output)}")
    rename = {g.input[0].name: INPUT, g.output[0].name: OUTPUT}
    for node in g.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    g.input[0].name, g.output[0].name = INPUT, OUTPUT
    onnx.checker.check_model(out)
    return out


def ort_refusal(model: onnx.ModelProto, limits: OrtLimits = TRITON_2_51) -> str | None:
    """Why ``limits``' onnxruntime backend would not serve ``model`` under the
    repository's config (names, IR version, opsets), or None when it would."""
    g = model.graph
    names = ([i.name for i in g.input], [o.name for o in g.output])
    if names != ([INPUT], [OUTPUT]):
        return f"tensors {names[0]} -> {names[1]}, not [{INPUT!r}] -> [{OUTPUT!r}]"
    if model.ir_version > limits.ir_version:
        return f"IR version {model.ir_version} > {limits.ir_version} ({limits.release})"
    for op in model.opset_import:
        domain = op.domain or ""
        known = limits.opsets.get(domain)
        if known is None:
            return f"opset domain {domain!r} unknown to {limits.release}"
        if op.version > known:
            return f"opset {domain or 'ai.onnx'} {op.version} > {known} ({limits.release})"
    return None
