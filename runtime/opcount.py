"""Operation counts: static ones read from an exported graph (OpenVINO reads ONNX and IR; no
torch), and a case's effective ones from the step graph's in-graph counters.

Static: MACs per slice of every convolution, deconvolution and matmul, the parameters they
hold, and the model's bytes on disk. The in-graph counters (ReduceSum / Multiply) are not
counted: they are bookkeeping, not the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.inference import ViewResult

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


def view_operations(spec: ViewSpec, res: ViewResult) -> dict[str, Any]:
    """Per-view counts for one case: dense MACs, effective MACs (analog input), ACs (spikes),
    membrane updates (NeuroBench's count, and the dense count a clocked chip pays), all over the
    slices run (the slices of air skipped are reported beside them)."""
    dense = float(spec.dense_macs_per_slice * res.slices)
    if not spec.ops:  # a dense model whose graph has no counters (the lite 3D U-Net): effective MACs are
        # taken as the dense ones, an upper bound (its LeakyReLUs are 0 only for inputs of exactly 0, but
        # the first conv's zero background is counted too); all on analog inputs, no ACs
        return {"slices": res.slices, "air_slices_skipped": res.skipped, "dense_macs": dense, "counted": True,
                "membrane_updates": 0.0, "membrane_updates_dense": 0.0, "effective_macs": dense,
                "effective_acs": 0.0, "activation_rates": {}, "activation_sparsity": None,
                "per_layer_ops": {}, "per_layer_membrane_updates": {}}
    if not res.counted:  # a deployed engine: the static count only (--count-ops for the rest)
        return {"slices": res.slices, "air_slices_skipped": res.skipped, "dense_macs": dense, "counted": False}
    spikes_in = {layer.name: layer.spike_input for layer in spec.layers}
    eff_macs = sum(v for n, v in res.ops.items() if not spikes_in[n])
    acs = sum(v for n, v in res.ops.items() if spikes_in[n])
    numel = {n: float(np.prod(s)) * res.slices for n, s in spec.activation_shapes.items()}
    rates = {n: res.acts[n] / numel[n] for n in res.acts}
    total_act = sum(res.acts.values())
    return {"slices": res.slices, "air_slices_skipped": res.skipped, "dense_macs": dense, "counted": True,
            "membrane_updates": sum(res.mems.values()),
            "membrane_updates_dense": sum(numel[n] for n in res.mems),
            "effective_macs": float(eff_macs), "effective_acs": float(acs),
            "activation_rates": rates,
            "activation_sparsity": 1.0 - total_act / sum(numel.values()) if numel else None,
            "per_layer_ops": res.ops, "per_layer_membrane_updates": res.mems}
