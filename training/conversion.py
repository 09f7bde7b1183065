"""Converting a trained ReLU twin into a Spiking U-Seg-Net before fine-tuning it with FPTT.

Copying the twin's weights one to one (``trainer.warm_start``) leaves every PLIF at threshold 1:
a GroupNorm output ``y`` then fires only when its charge ``y / tau`` reaches 1, so a few percent
of the neurons fire where half the twin's ReLUs pass, and each spike carries 1 where the
twin's next layer expects ``ReLU(y)`` of a few tenths to a few units. Measured on the demo's
axial twin (hard phantoms, 2 mm): the copied SNN scores validation WT Dice 0.00 before any
fine-tuning.

Conversion here is threshold balancing (Diehl et al., IJCNN 2015; Rueckauer et al., Front.
Neurosci. 2017) for one time step per slice: each spiking layer is a 1-bit quantiser of the
twin's ``ReLU(y)``, ``s * [y >= t]``, with ``(t, s)`` the least-squares fit on the twin's own
activations over training slices (:func:`binary_quantiser`); ``s`` is folded into the weights
that read the layer (:func:`fold_input_scales`), so spikes stay 0/1 and the graph is
unchanged; the threshold is ``c * t``, with one factor ``c`` for the network chosen by the
calibration cases' NLL (factors up to 1: the membrane carries charge from slice to slice).
Same slices, no fine-tuning: validation WT Dice 0.00 -> 0.67 (twin 0.83). The trainer starts
the converted PLIFs at a short time constant (``training.config.RECIPE_CONVERTED_INIT_TAU``):
the twin has no memory, and the fine-tuning is too short for tau to move far on its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from spikeseg.runtime.metrics import nll
from spikeseg.snn.models import SliceSegNet
from spikeseg.snn.neurons import SpikingLayer
from spikeseg.training.predict import predict_views

#: threshold factors tried (times each layer's quantiser threshold t)
FACTORS = (0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
#: every SAMPLE_STRIDE-th activation value is kept for the quantiser fit
SAMPLE_STRIDE = 7


def binary_quantiser(y: np.ndarray, candidates: int = 97) -> tuple[float, float]:
    """(t, s) minimising mean((ReLU(y) - s [y >= t])^2) over thresholds ``t`` at quantiles of the
    positive values; for a given ``t`` the best ``s`` is the mean of ``y`` over ``y >= t``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    pos = y[y > 0]
    if pos.size == 0:
        raise ValueError("no positive activations to fit a spiking threshold to")
    r = np.maximum(y, 0.0)
    total = float((r ** 2).sum())
    best: tuple[float, float, float] | None = None
    for t in np.unique(np.quantile(pos, np.linspace(0.0, 1.0, candidates))):
        above = r[y >= t]
        s = float(above.mean())
        err = total - above.size * s * s  # sum (r - s m)^2 with s the mean over m
        if best is None or err < best[0]:
            best = (err, float(t), s)
    assert best is not None
    return best[1], best[2]


def spiking_layers(model: SliceSegNet) -> dict[str, SpikingLayer]:
    """The model's neurons by the path of the block that holds them (``down0``, ``up0.act`` ...)."""
    return {name.removesuffix(".act"): m for name, m in model.named_modules() if isinstance(m, SpikingLayer)}


def _relu_inputs(twin: SliceSegNet, sequences: list[np.ndarray], view: str) -> dict[str, np.ndarray]:
    """A strided sample of what each of the twin's ReLUs received over ``sequences``."""
    seen: dict[str, list[torch.Tensor]] = {}

    def record(key: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(key, []).append(inputs[0].detach().flatten()[::SAMPLE_STRIDE])
        return hook

    hooks = [m.register_forward_hook(record(name.removesuffix(".act")))
             for name, m in twin.named_modules() if isinstance(m, nn.ReLU)]
    try:
        predict_views(twin, sequences, view, next(twin.parameters()).device)
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v).float().cpu().numpy() for k, v in seen.items()}


def _consumers(model: SliceSegNet) -> dict[str, list[tuple[nn.Module, slice]]]:
    """For each spiking layer, the convs that read it and which of their input channels it fills
    (a decoder conv reads [its deconv's spikes, the skip]; max pooling passes a scale through)."""
    out: dict[str, list[tuple[nn.Module, slice]]] = {}
    depth = len(model.down)
    for i in range(depth - 1):
        out[f"down.{i}"] = [(model.down[i + 1].conv, slice(None))]
    out[f"down.{depth - 1}"] = [(model.up[0].up, slice(None))] if len(model.up) else []
    for j, blk in enumerate(model.up):
        c = blk.up.out_channels
        out[f"up.{j}"] = [(blk.block.conv, slice(0, c))]
        out[f"down.{depth - 2 - j}"].append((blk.block.conv, slice(c, 2 * c)))
        nxt = model.up[j + 1].up if j + 1 < len(model.up) else model.readout
        out[f"up.{j}.block"] = [(nxt, slice(None))]
    if model.cfg.readout_input != "spikes":  # the readout reads the membrane, not the spikes
        last = f"up.{len(model.up) - 1}.block" if len(model.up) else f"down.{depth - 1}"
        out[last] = [(m, sl) for m, sl in out[last] if m is not model.readout]
    return out


@torch.no_grad()
def fold_input_scales(model: SliceSegNet, scales: dict[str, float]) -> None:
    """Multiply the weights reading each spiking layer by its scale: a consumer then computes
    from 0/1 spikes what it computed from ``s``-valued ones."""
    consumers = _consumers(model)
    for name, s in scales.items():
        for conv, channels in consumers[name]:
            if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out, kh, kw)
                conv.weight[channels] *= s
            else:  # weight (out, in, kh, kw)
                conv.weight[:, channels] *= s


@torch.no_grad()
def balance(model: SliceSegNet, twin: SliceSegNet, calibration: list[tuple[np.ndarray, np.ndarray]],
            view: str, factors: Iterable[float] = FACTORS,
            reset_every_step: bool = False) -> dict[str, float | dict[str, float]]:
    """Set ``model``'s thresholds and fold the spike scales, from ``twin`` (whose weights
    ``model`` already holds) on ``calibration`` (model-space image, region masks) pairs.
    ``reset_every_step``: score the factors with the membrane zeroed every slice, as a
    ``--state-reset`` model is trained and run. Returns what was chosen, for the run's config."""
    if not model.spiking or twin.spiking:
        raise ValueError("balance converts a ReLU twin's weights in a spiking model")
    twin.eval()
    images = [np.asarray(im) for im, _ in calibration]
    fits = {k: binary_quantiser(y) for k, y in _relu_inputs(twin, images, view).items()}
    neurons = spiking_layers(model)
    if set(fits) != set(neurons):
        raise ValueError(f"twin and model layers differ: {sorted(fits)} vs {sorted(neurons)}")
    fold_input_scales(model, {k: s for k, (_, s) in fits.items()})
    scored = []
    for c in factors:
        for k, n in neurons.items():
            n.theta.fill_(c * fits[k][0])
        probs = predict_views(model, images, view, next(model.parameters()).device, reset_every_step=reset_every_step)
        losses = [nll(p, np.asarray(regions).astype(bool)) for p, (_, regions) in zip(probs, calibration)]
        scored.append((float(np.mean(losses)), c))
    best_nll, best_c = min(scored)
    for k, n in neurons.items():
        n.theta.fill_(best_c * fits[k][0])
    return {"factor": best_c, "calibration_nll": best_nll,
            "thresholds": {k: float(n.theta) for k, n in neurons.items()},
            "scales": {k: s for k, (_, s) in fits.items()}}


class AnalogStandIn(nn.Module):
    """Takes a converted spiking layer's place and passes what the twin's ReLU passed, over the
    spike scale ``s`` the layer's readers hold folded in: they then compute exactly the twin's
    values. Why: swapping layers back one at a time shows which layer's binarisation costs the
    converted SNN its accuracy (``benchmarks.binarisation``). The membrane passes unchanged."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.potential = torch.relu(x)  # a membrane readout holds no folded scale: the twin's value
        return self.potential / self.scale, v


@contextmanager
def analog_layers(model: SliceSegNet, scales: dict[str, float], names: Iterable[str]) -> Iterator[SliceSegNet]:
    """``model`` (converted by :func:`balance`, whose ``scales`` it returned) with the spiking
    layers ``names`` analog (:class:`AnalogStandIn`) inside the block; restored on exit. With
    every layer analog the model computes its twin's logits."""
    names = list(names)
    unknown = set(names) - set(spiking_layers(model))
    if unknown:
        raise ValueError(f"no spiking layers {sorted(unknown)} in the model")
    blocks = {name: model.get_submodule(name) for name in names}
    saved = {name: blk.act for name, blk in blocks.items()}
    try:
        for name, blk in blocks.items():
            blk.act = AnalogStandIn(scales[name])
        yield model
    finally:
        for name, blk in blocks.items():
            blk.act = saved[name]
