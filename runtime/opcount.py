"""Static operation counts read from an exported graph (OpenVINO reads ONNX and IR; no torch).

MACs per slice of every convolution, deconvolution and matmul, the parameters they hold, and
the model's bytes on disk. The in-graph counters (ReduceSum / Multiply) are not counted: they
are bookkeeping, not the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_CONV = {"Convolution", "ConvolutionBackpropData", "MatMul", "GroupConvolution"}


def static_counts(model_path: str | Path) -> dict[str, Any]:
    """Per layer (graph order) MACs for one step of the graph, with batch 1."""
    import openvino as ov

    path = Path(model_path)
    model = ov.Core().read_model(str(path))
    if any(p.get_partial_shape().is_dynamic for p in model.inputs):
        model.reshape({p.get_any_name(): [1 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]
                       for p in model.inputs})
    layers = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _CONV:
            continue
        out = [int(d) for d in op.get_output_shape(0)]
        w = [int(d) for d in op.input(1).get_shape()]
        if kind == "Convolution":  # weights (Cout, Cin, kh, kw), out (N, Cout, H, W)
            macs = int(np.prod(out)) * int(np.prod(w[1:]))
        elif kind == "ConvolutionBackpropData":  # weights (Cin, Cout, kh, kw), input (N, Cin, h, w)
            inp = [int(d) for d in op.input(0).get_shape()]
            macs = int(np.prod(inp)) * int(np.prod(w[1:]))
        elif kind == "GroupConvolution":  # weights (G, Cout/G, Cin/G, kh, kw)
            macs = int(np.prod(out)) * int(np.prod(w[2:]))
        else:  # MatMul: (…, M, K) x (K, N)
            macs = int(np.prod(out)) * int(op.input(0).get_shape()[-1])
        layers.append({"name": op.get_friendly_name(), "type": kind, "macs": macs, "params": int(np.prod(w))})
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return {"layers": layers, "macs_per_slice": sum(l["macs"] for l in layers),
            "conv_params": sum(l["params"] for l in layers),
            "model_bytes": sum(f.stat().st_size for f in files if f.exists())}
