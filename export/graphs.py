"""Torch model -> ONNX step graph -> OpenVINO IR, with explicit state and operation counters.

The exported graph is one time step: inputs ``x`` (N, 4, H, W) and, for stateful models,
every state tensor as ``state.<name>``; outputs ``logits``, ``state_out.<name>``, and per
layer ``ops.<layer>`` (effective synaptic operations, NeuroBench's definition),
``act.<layer>`` (nonzero activations) and, for the SNN, ``mem.<layer>`` (membranes this step
changed, NeuroBench's ``MembraneUpdates``), each (N,). The runtime feeds the state back and sums
the counters, so spike rates and synaptic operations come out of ONNX Runtime and OpenVINO
runs, with no torch on the device. Exported with the TorchScript exporter (``dynamo=False``):
ORT's static quantiser rejects the dynamo exporter's shared initialisers (REFERENCE.md 4).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from snn.models import SliceSegNet

OPSET = 17


class StepGraph(nn.Module):
    """The model's :meth:`SliceSegNet.step` with a flat signature for export."""

    def __init__(self, model: SliceSegNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        logits, new_state, ops, acts, mems = self.model.step(x, list(state))
        return (logits, *new_state, *ops, *acts, *mems)


def io_spec(model: SliceSegNet, h: int, w: int) -> dict[str, Any]:
    """Names and shapes of the step graph's inputs and outputs (written to the manifest)."""
    states = [{"name": n, "input": f"state.{n}", "output": f"state_out.{n}", "shape": list(shape)}
              for n, shape in model.state_specs(h, w)]
    layers = [name for name, _, _ in model.connection_layers()]
    return {"input": {"name": "x", "shape": [None, model.cfg.in_channels, h, w]},
            "states": states,
            "outputs": {"logits": "logits", "ops": layers, "acts": model.activation_names(),
                        "mems": model.activation_names() if model.spiking else []},
            "activation_shapes": {n: list(shape) for n, shape in model.activation_specs(h, w)}}


def output_names(spec: dict[str, Any]) -> list[str]:
    """The step graph's outputs in :class:`StepGraph` order, from an io spec (or manifest view)."""
    out = spec["outputs"]
    return (["logits"] + [s["output"] for s in spec["states"]] + [f"ops.{n}" for n in out["ops"]]
            + [f"act.{n}" for n in out["acts"]] + [f"mem.{n}" for n in out["mems"]])


def layer_table(model: SliceSegNet, h: int, w: int) -> list[dict[str, Any]]:
    """Per conv/deconv layer: shape, whether spikes feed it, dense MACs per slice."""
    ph, pw = model.padded(h, w)
    sizes: dict[str, tuple[int, int]] = {}
    for i in range(len(model.cfg.widths)):
        sizes[f"down{i}.conv"] = (ph // 2**i, pw // 2**i)
    depth = len(model.cfg.widths)
    sizes["clstm.gates"] = (ph // 2 ** (depth - 1), pw // 2 ** (depth - 1))
    for j, i in enumerate(reversed(range(depth - 1))):
        sizes[f"up{j}.deconv"] = (ph // 2 ** (i + 1), pw // 2 ** (i + 1))  # input grid
        sizes[f"up{j}.conv"] = (ph // 2**i, pw // 2**i)
    sizes["readout"] = (ph, pw)
    table = []
    for name, layer, spikes in model.connection_layers():
        kh, kw = layer.kernel_size
        hh, ww = sizes[name]
        macs = layer.in_channels * layer.out_channels * kh * kw * hh * ww
        table.append({"name": name, "module": model.module_path(layer), "type": type(layer).__name__,
                      "in_channels": layer.in_channels,
                      "out_channels": layer.out_channels, "kernel": [kh, kw], "grid": [hh, ww],
                      "spike_input": spikes, "dense_macs_per_slice": int(macs)})
    return table


def export_onnx(model: SliceSegNet, h: int, w: int, path: Path) -> dict[str, Any]:
    """Write the FP32 ONNX step graph; returns its io spec."""
    model = model.eval()
    model.count_ops = True
    spec = io_spec(model, h, w)
    x = torch.zeros(1, model.cfg.in_channels, h, w)
    states = tuple(model.init_state(1, h, w))
    input_names = ["x"] + [s["input"] for s in spec["states"]]
    outputs = output_names(spec)
    dynamic = None if model.stateful else {n: {0: "n"} for n in input_names + outputs}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(StepGraph(model), (x, *states), str(path), input_names=input_names,
                              output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
    finally:
        model.count_ops = False
    return spec


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """FP32 IR: weights stay fp32 on disk (``compress_to_fp16=False``)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
