"""The models as their exported graphs see them, in torch: one slice step with its states and
counters (:class:`StepGraph`), one patch of a volume model (:class:`VolumeGraph`), and
:class:`TorchEngine`, a torch model behind the runtime's engine interface. Here, beside the
models, so that training (validating a volume model by sliding window) and export (tracing the
graphs) both build on it without importing each other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikeseg.runtime.bundle_spec import INPUT, LOGITS, ViewSpec, is_counter
from spikeseg.snn.cascade import CascadeUnet
from spikeseg.snn.models import SliceSegNet
from spikeseg.snn.unet3d import LiteUnet3d

#: the models that run by sliding window: one patch in, class logits out
VolumeModel = LiteUnet3d | CascadeUnet


class StepGraph(nn.Module):
    """The model's :meth:`SliceSegNet.step_counted` with a flat signature for export; with
    ``counting=False`` only the logits and states (what a deployed engine fetches)."""

    def __init__(self, model: SliceSegNet, counting: bool = True) -> None:
        super().__init__()
        self.model, self.counting = model, counting

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        if not self.counting:
            logits, new_state = self.model.step(x, list(state))
            return (logits, *new_state)
        logits, new_state, ops, acts, mems = self.model.step_counted(x, list(state))
        return (logits, *new_state, *ops, *acts, *mems)


class VolumeGraph(nn.Module):
    """A volume model as exported: one patch in, class logits out. The model sits at ``model``
    so its weights are named ``model.<path>.weight``, as in the slice models' step graphs."""

    def __init__(self, model: VolumeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class TorchEngine:
    """A torch model behind the exported graph's interface (feeds in, outputs out by name), so
    torch, ONNX Runtime and OpenVINO run through the same runtime loops and can be compared
    output for output. ``threads``: torch's intra-op threads (None leaves them as they are)."""

    backend = "torch"
    compute_precision = "fp32"
    precision = "fp32"

    def __init__(self, model: SliceSegNet | VolumeModel, spec: ViewSpec | None = None, threads: int | None = None,
                 counting: bool = False, device: torch.device | str = "cpu") -> None:
        """``spec``: a slice model's (it names the states and counters); a volume model has none."""
        if threads:
            torch.set_num_threads(threads)
        self.counting, self.device = counting, torch.device(device)
        if not isinstance(model, SliceSegNet):
            self.graph: nn.Module = VolumeGraph(model.eval())
            self.inputs, self.names = [INPUT], [LOGITS]
        else:
            assert spec is not None, "a slice model's engine needs its spec"
            self.graph = StepGraph(model.eval(), counting)
            self.inputs = spec.input_names()
            self.names = [n for n in spec.output_names() if counting or not is_counter(n)]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = self.graph(*[torch.from_numpy(feeds[name]).to(self.device) for name in self.inputs])
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.names, outs)}
