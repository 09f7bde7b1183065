"""Torch model -> ONNX step graph -> OpenVINO IR, with explicit state and operation counters.

The exported graph is one time step: inputs ``x`` (N, 4, H, W) and, for stateful models,
every state tensor as ``state.<name>``; outputs ``logits``, ``state_out.<name>``, and per
layer ``ops.<layer>`` (effective synaptic operations, NeuroBench's definition),
``act.<layer>`` (nonzero activations) and, for the SNN, ``mem.<layer>`` (membranes this step
changed, NeuroBench's ``MembraneUpdates``), each (N,). The runtime feeds the state back and sums
the counters, so spike rates and synaptic operations come out of ONNX Runtime and OpenVINO
runs, with no torch on the device. Exported with the TorchScript exporter (``dynamo=False``):
ORT's static quantiser rejects the dynamo exporter's shared initialisers ("shared mode is not
supported for weight").
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from spikeseg.runtime.bundle_spec import (INPUT, LOGITS, SEQUENCE_PASSES, SLIDING, LayerSpec, StateSpec, ViewSpec,
                                          WindowSpec)
from spikeseg.runtime.sliding import steps_per_case
from spikeseg.snn.graphs import StepGraph, VolumeGraph, VolumeModel
from spikeseg.snn.models import SliceSegNet

OPSET = 17


def execution_for(model: SliceSegNet, both_ways: bool) -> str:
    """How the runtime runs this model: a stateful one over its slices in sequence, front to
    back and (``both_ways``) back to front too. Why both: a membrane carries context from the
    slices before, so a one-way pass sees one side of every slice; the two passes averaged
    scored better for twice the slice steps (docs/results/fidelity-lab-record.md)."""
    if not model.stateful:
        return "slice-batches"
    return "slice-sequence-both-ways" if both_ways else "slice-sequence"


def view_spec(model: SliceSegNet, h: int, w: int, slices: int, both_ways: bool = True) -> ViewSpec:
    """The bundle contract for this model on h x w slices, ``slices`` per case: I/O names, state
    layout, counters, layers and how it runs (the model files are added once exported)."""
    activations = model.activation_names()
    execution = execution_for(model, both_ways)
    return ViewSpec(
        execution=execution, in_channels=model.cfg.in_channels, slice_shape=(h, w),
        slices_per_case=slices * SEQUENCE_PASSES.get(execution, 1),
        states=tuple(StateSpec(n, tuple(shape)) for n, shape in model.state_specs(h, w)),
        ops=tuple(name for name, _, _ in model.connection_layers()), acts=tuple(activations),
        mems=tuple(activations) if model.spiking else (),
        activation_shapes={n: tuple(shape) for n, shape in model.activation_specs(h, w)},
        layers=tuple(layer_table(model, h, w)), parameters=int(sum(p.numel() for p in model.parameters())))


def layer_table(model: SliceSegNet, h: int, w: int) -> list[LayerSpec]:
    """Per conv/deconv layer: shape, input grid, whether spikes feed it."""
    grids = model.layer_grids(h, w)
    table = []
    for name, layer, spikes in model.connection_layers():
        deconv = isinstance(layer, nn.ConvTranspose2d)
        stride = layer.stride[0] * layer.stride[1] if deconv else 1
        table.append(LayerSpec(name, model.module_path(layer), "deconv" if deconv else "conv", layer.in_channels,
                               layer.out_channels, tuple(layer.kernel_size), grids[name], spikes, stride))
    return table


def export_onnx(model: SliceSegNet, h: int, w: int, path: Path, slices: int = 1, both_ways: bool = True) -> ViewSpec:
    """Write the FP32 ONNX step graph; returns its spec (without model files)."""
    model = model.eval()
    spec = view_spec(model, h, w, slices, both_ways)
    x = torch.zeros(1, model.cfg.in_channels, h, w)
    states = tuple(model.init_state(1, h, w))
    input_names, outputs = spec.input_names(), spec.output_names()
    dynamic = None if spec.stateful else {n: {0: "n"} for n in input_names + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the wrapper in eval mode: torch.onnx.export restores the wrapper's mode afterwards, and a
        # fresh wrapper's (training) once left the caller's model with its dropout switched on
        torch.onnx.export(StepGraph(model).eval(), (x, *states), str(path), input_names=input_names,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    return spec


def volume_layer_table(model: VolumeModel, patch: tuple[int, int, int]) -> list[LayerSpec]:
    """Per conv/transposed conv: shape and the grid it reads, recorded by running one patch."""
    grids: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:  # None: the input unchanged
            grids[name] = tuple(inputs[0].shape[2:])
        return hook

    hooks = [layer.register_forward_pre_hook(record(name)) for name, layer in model.connection_layers()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.cfg.in_channels, *patch))
    finally:
        for h in hooks:
            h.remove()
    table = []
    for name, layer in model.connection_layers():
        deconv = isinstance(layer, nn.ConvTranspose3d)
        table.append(LayerSpec(name, name, "deconv" if deconv else "conv", layer.in_channels, layer.out_channels,
                               tuple(layer.kernel_size), grids[name], False,
                               int(torch.tensor(layer.stride).prod()) if deconv else 1, layer.groups))
    return table


def volume_spec(model: VolumeModel, window: WindowSpec, model_shape: tuple[int, int, int]) -> ViewSpec:
    """The bundle contract of a volume model run by sliding window over a grid of ``model_shape``."""
    return ViewSpec(execution=SLIDING, in_channels=model.cfg.in_channels, slice_shape=window.patch,
                    slices_per_case=steps_per_case(model_shape, window), states=(), ops=(), acts=(), mems=(),
                    activation_shapes={}, layers=tuple(volume_layer_table(model, window.patch)),
                    parameters=int(sum(p.numel() for p in model.parameters())), window=window)


def export_volume_onnx(model: VolumeModel, window: WindowSpec, model_shape: tuple[int, int, int],
                       path: Path) -> ViewSpec:
    """Write the FP32 ONNX patch graph (batch 1, the spec's patch); returns its spec."""
    model = model.eval()
    spec = volume_spec(model, window, model_shape)
    x = torch.zeros(1, model.cfg.in_channels, *window.patch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(VolumeGraph(model).eval(), (x,), str(path), input_names=[INPUT], output_names=[LOGITS],
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return spec


def onnx_to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """FP32 IR: weights stay fp32 on disk (``compress_to_fp16=False``)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
