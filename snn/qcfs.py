"""The twin's activation for a lossless conversion: quantisation clip-floor-shift (QCFS).

Bu et al. (ICLR 2022, "Optimal ANN-SNN conversion for high-accuracy and ultra-low-latency
spiking neural networks") train the ANN with the quantised activation its SNN will compute, so
conversion has nothing left to lose. With L quantisation steps and a learnable level lambda:

    phi(x) = lambda / L * clip(floor(x L / lambda + 1/2), 0, L)

At one time step per slice (L = 1) that is a step: ``lambda * [x >= lambda / 2]``, the output of
a spiking neuron of threshold ``lambda / 2`` whose spikes are read with weight ``lambda``. The
floor passes its gradient straight through (the paper's ``GradFloor``), so ``x`` and ``lambda``
both learn. Until :attr:`QCFS.active` is set the module is a ReLU: the trainer switches it on
for the last share of the twin's budget (``--twin-activation qcfs``), with each layer's level
fitted to what its ReLU received (:func:`fit_level`). Switched on at once, a trained twin stops
segmenting and does not recover (docs/results/2026-12-06-fidelity-levers.md); so the switch also
chooses one step position for the network, ``share x lambda``, by the calibration cases' NLL, as
the conversion chooses its threshold factor (:func:`spikeseg.training.conversion.start_qcfs`),
and the step is brought in gradually, ``ReLU + m (step - ReLU)`` with ``m`` ramped from 0 to 1
over the first half of the QCFS phase, update by update; the best checkpoint is kept only from
the updates at ``m = 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: lambda is kept above this (a level of 0 would divide by 0)
LEVEL_MIN = 1e-3


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor forward, identity backward; ``detach`` keeps the exported graph a plain Floor."""
    return x + (torch.floor(x) - x).detach()


class QCFS(nn.Module):
    """ReLU until :attr:`active`, then the one-step QCFS ``lambda [x >= lambda / 2]``."""

    def __init__(self, level: float = 1.0) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(level)))
        #: kept in the state dict as a buffer, mirrored in a Python bool: the branch in
        #: :meth:`forward` must not read a tensor, for the exported graph to hold one activation
        self.register_buffer("enabled", torch.tensor(0.0))
        #: where the step sits, as a share of lambda: QCFS's shift of 1/2 puts it at lambda / 2;
        #: the trainer chooses one share for the network at the switch (see the module's doc)
        self.register_buffer("threshold_share", torch.tensor(0.5))
        #: how far the step has replaced the ReLU (1: all the way; the trainer ramps it up)
        self.register_buffer("mix", torch.tensor(1.0))
        self._active = False
        self._mix = 1.0

    @property
    def active(self) -> bool:
        return self._active

    @active.setter
    def active(self, on: bool) -> None:
        self._active = bool(on)
        self.enabled.fill_(float(self._active))

    def set_mix(self, mix: float) -> None:
        """Output ``ReLU + mix (step - ReLU)``: the step brought in gradually (1: the step alone)."""
        self._mix = min(1.0, max(0.0, float(mix)))
        self.mix.fill_(self._mix)

    @property
    def complete(self) -> bool:
        """Active and no longer mixed with the ReLU: what a converted SNN computes."""
        return self._active and self._mix >= 1.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.setdefault(prefix + "mix", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._active = bool(self.enabled)
        self._mix = float(self.mix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return torch.relu(x)
        lam = self.level.clamp(min=LEVEL_MIN)
        step = torch.clamp(floor_ste(x / lam + (1.0 - self.threshold_share)), 0.0, 1.0) * lam
        if self._mix >= 1.0:
            return step
        relu = torch.relu(x)
        return relu + self._mix * (step - relu)

    def fits(self) -> tuple[float, float]:
        """(threshold, spike scale) of the spiking layer that computes this one: (share x lambda, lambda)."""
        lam = max(float(self.level.detach()), LEVEL_MIN)
        return float(self.threshold_share) * lam, lam

    def extra_repr(self) -> str:
        return f"level={float(self.level.detach()):.3f}, active={self.active}"


def own_state_keys() -> tuple[str, ...]:
    """The state-dict keys a QCFS activation adds under its module (``level``, ``enabled`` ...):
    what a spiking model started from a QCFS twin's weights leaves out."""
    return tuple("." + k for k in QCFS().state_dict())


def fit_level(y: np.ndarray, candidates: int = 97) -> float:
    """lambda minimising mean((ReLU(y) - lambda [y >= lambda / 2])^2): where a ReLU's output is
    best matched by the step. Candidates: twice the quantiles of the positive values (the step
    there), and the mean above each quantile (the best output for the values passed there)."""
    y = np.asarray(y, dtype=np.float64).ravel()
    pos = np.sort(y[y > 0])
    if pos.size == 0:
        raise ValueError("no positive activations to fit a QCFS level to")
    # for threshold t = lambda/2 at each candidate: sum and count of ReLU(y) over y >= t
    tail_sum = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    quantiles = np.unique(np.quantile(pos, np.linspace(0.0, 1.0, candidates)))
    at = np.searchsorted(pos, quantiles, side="left")
    levels = np.unique(np.concatenate([2.0 * quantiles, tail_sum[at] / (pos.size - at)]))
    first = np.searchsorted(pos, levels / 2.0, side="left")
    count, above = pos.size - first, tail_sum[first]
    err = -2.0 * levels * above + levels ** 2 * count  # sum (r - lam m)^2 up to the constant sum r^2
    return float(levels[int(np.argmin(err))])


def qcfs_layers(model: nn.Module) -> dict[str, QCFS]:
    """The model's QCFS activations by the path of the block that holds them (``down.0`` ...)."""
    return {name.removesuffix(".act"): m for name, m in model.named_modules() if isinstance(m, QCFS)}
