"""Converting a trained ReLU twin into a Spiking U-Seg-Net before fine-tuning it with FPTT.

Copying the twin's weights one to one (``trainer.warm_start``) leaves every PLIF at threshold 1:
a GroupNorm output ``y`` then fires only when its charge ``y / tau`` reaches 1, so a few percent
of the neurons fire where half the twin's ReLUs pass, and each spike carries 1 where the
twin's next layer expects ``ReLU(y)`` of a few tenths to a few units, and the copied SNN
segments nothing before fine-tuning (docs/results/fidelity-lab-record.md).

Conversion here is threshold balancing (Diehl et al., IJCNN 2015; Rueckauer et al., Front.
Neurosci. 2017) for one time step per slice: each spiking layer is a 1-bit quantiser of the
twin's ``ReLU(y)``, ``s * [y >= t]``, with ``(t, s)`` the least-squares fit on the twin's own
activations over training slices (:func:`binary_quantiser`); ``s`` is folded into the weights
that read the layer (:func:`fold_input_scales`), so spikes stay 0/1 and the graph is
unchanged; the threshold is ``c * t``, with one factor ``c`` for the network chosen by the
calibration cases' NLL (factors up to 1: the membrane carries charge from slice to slice).
Balanced, the SNN segments before any fine-tuning (docs/results/fidelity-lab-record.md). The
trainer starts the converted PLIFs at a short time constant (the ``converted-snn`` recipe, ``training/recipes.json``):
the twin has no memory, and the fine-tuning is too short for tau to move far on its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from spikeseg.runtime.metrics import nll
from spikeseg.snn.models import SliceSegNet
from spikeseg.snn.neurons import NeuronStep, SpikingLayer
from spikeseg.snn.qcfs import QCFS, fit_level, qcfs_layers
from spikeseg.training.predict import predict_views

#: threshold factors tried (times each layer's quantiser threshold t)
FACTORS = (0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
#: step positions tried when a QCFS twin switches on, as shares of each layer's level: QCFS's
#: own 1/2 and below it, the conversion's factors on the same scale
QCFS_SHARES = tuple(0.5 * f for f in FACTORS)
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


def relu_inputs(twin: SliceSegNet, sequences: list[np.ndarray], view: str) -> dict[str, np.ndarray]:
    """A strided sample of what each of the twin's activations (ReLU, or QCFS) received over
    ``sequences``."""
    seen: dict[str, list[torch.Tensor]] = {}

    def record(key: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(key, []).append(inputs[0].detach().flatten()[::SAMPLE_STRIDE])
        return hook

    hooks = [m.register_forward_hook(record(name.removesuffix(".act")))
             for name, m in twin.named_modules() if isinstance(m, (nn.ReLU, QCFS))]
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
    ``--state-reset`` model is trained and run. A QCFS twin (``--twin-activation qcfs``) gives
    its own steps instead of the least-squares fit, and the factor at which the first slice fires
    exactly where the twin's step passes is among those scored. Returns what was chosen, for the
    run's config."""
    if not model.spiking or twin.spiking:
        raise ValueError("balance converts a ReLU twin's weights in a spiking model")
    twin.eval()
    images = [np.asarray(im) for im, _ in calibration]
    steps = {k: m for k, m in qcfs_layers(twin).items() if m.complete}
    if steps:  # a QCFS twin already computes the spiking layer's step: take it as it is
        fits = {k: m.fits() for k, m in steps.items()}
    else:
        fits = {k: binary_quantiser(y) for k, y in relu_inputs(twin, images, view).items()}
    neurons = spiking_layers(model)
    if set(fits) != set(neurons):
        raise ValueError(f"twin and model layers differ: {sorted(fits)} vs {sorted(neurons)}")
    fold_input_scales(model, {k: s for k, (_, s) in fits.items()})
    factors = list(factors)
    if steps:  # the factor at which the first slice fires exactly where the twin's step passes
        factors = sorted({*factors, *(exact_factor(n) for n in neurons.values())})

    def thresholds(c: float) -> None:
        for k, n in neurons.items():
            n.theta.fill_(c * fits[k][0])

    best_nll, best_c = best_by_nll(model, calibration, view, factors, thresholds, reset_every_step)
    return {"factor": best_c, "calibration_nll": best_nll,
            "thresholds": {k: float(n.theta) for k, n in neurons.items()},
            "scales": {k: s for k, (_, s) in fits.items()}}


def best_by_nll(model: SliceSegNet, calibration: list[tuple[np.ndarray, np.ndarray]], view: str,
                candidates: Iterable[float], apply: Callable[[float], None],
                reset_every_step: bool = False) -> tuple[float, float]:
    """(mean NLL, candidate) of the candidate whose ``apply`` gives ``model`` the lowest mean NLL on
    the calibration (model-space image, region masks) pairs; that candidate is left applied."""
    images = [np.asarray(im) for im, _ in calibration]
    scored = []
    for c in candidates:
        apply(c)
        probs = predict_views(model, images, view, next(model.parameters()).device, reset_every_step=reset_every_step)
        losses = [nll(p, np.asarray(regions).astype(bool)) for p, (_, regions) in zip(probs, calibration)]
        scored.append((float(np.mean(losses)), c))
    best = min(scored)
    apply(best[1])
    return best


@torch.no_grad()
def start_qcfs(twin: SliceSegNet, calibration: list[tuple[np.ndarray, np.ndarray]], view: str,
               shares: Iterable[float] = QCFS_SHARES) -> dict[str, float | dict[str, float]]:
    """Switch a QCFS twin's activations on: each level fitted to what its ReLU receives on the
    calibration images, and one step position (a share of each level) for the network, chosen by
    the calibration NLL. Returns what was chosen."""
    layers = qcfs_layers(twin)
    received = relu_inputs(twin, [np.asarray(im) for im, _ in calibration], view)
    for name, m in layers.items():
        m.level.fill_(fit_level(received[name]))
        m.active = True
        m.set_mix(1.0)  # the step alone is what is scored (and what a converted SNN computes)

    def place(share: float) -> None:
        for m in layers.values():
            m.threshold_share.fill_(share)

    best_nll, best_share = best_by_nll(twin, calibration, view, shares, place)
    return {"threshold_share": best_share, "calibration_nll": best_nll,
            "levels": {k: float(m.level) for k, m in layers.items()}}


def exact_factor(neuron: SpikingLayer) -> float:
    """The charge a neuron at rest takes from an input of 1 (PLIF: 1/tau; snnTorch's Leaky: 1):
    at that threshold factor the first slice fires exactly where the twin's input passes t."""
    with torch.no_grad():
        one = torch.ones(1, device=neuron.theta.device)
        return round(float(neuron.charge(one, torch.zeros_like(one))), 6)


class AnalogStandIn(nn.Module):
    """Takes a converted spiking layer's place and passes what the twin's ReLU passed, over the
    spike scale ``s`` the layer's readers hold folded in: they then compute exactly the twin's
    values. Why: swapping layers back one at a time shows which layer's binarisation costs the
    converted SNN its accuracy (``benchmarks.binarisation``). The membrane passes unchanged."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> NeuronStep:
        relu = torch.relu(x)  # a membrane readout holds no folded scale: the twin's value
        return NeuronStep(relu / self.scale, v, relu)


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
