"""Our PLIF as NeuroBench's hooks expect a spiking neuron, so NeuroBench can count on our models.

NeuroBench's neuron hooks (used by ``MembraneUpdates``, and for spike outputs) recognise
snnTorch neurons (``snntorch.SpikingNeuron``) and read the membrane from their ``.mem``
attribute before and after each call. Our PLIF keeps its state outside the module (the exported
step graph needs every membrane as an explicit input and output), so the hooks would find
nothing. :func:`hookable` swaps each PLIF for a ``SpikingNeuron`` that runs the very same PLIF
and leaves the membrane it returns in ``.mem``; the next call's "pre" membrane is then the
state the model feeds back, which is exactly what NeuroBench compares.
"""

from __future__ import annotations

import copy

import snntorch
import torch
from torch import nn

from spikeseg.snn.neurons import NeuronStep, SpikingLayer


class HookablePLIF(snntorch.SpikingNeuron):
    """A PLIF behind snnTorch's neuron interface: same arithmetic, membrane mirrored in ``.mem``."""

    def __init__(self, plif: SpikingLayer) -> None:
        super().__init__(threshold=plif.v_threshold, reset_mechanism="zero")
        self.plif = plif
        self.mem = torch.zeros(0)  # snnTorch's "not initialised yet"; NeuroBench skips the first pre

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> NeuronStep:
        step = self.plif(x, v)
        self.mem = step.membrane
        return step


def hookable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (same weights, same outputs) whose PLIF layers NeuroBench can hook."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpikingLayer):
                setattr(parent, name, HookablePLIF(child))
    return model
