"""Parametric LIF neuron (Fang et al., ICCV 2021) as an explicit-state step.

State lives outside the module (``v`` in, ``v_next`` out) so one slice is one call and the
exported ONNX step has every membrane potential as a named input and output; module-held
state (spikingjelly's ``self.v``) does not survive ONNX export.

Dynamics, identical to spikingjelly's ``ParametricLIFNode(decay_input=True, v_reset=0.0,
v_threshold=1.0, surrogate_function=surrogate.ATan())`` when ``tau_min == 1``:

    1/tau = sigmoid(w) / tau_min                  (learnable w, one per layer)
    h     = v + (x - v) / tau                     (charge, v_reset = 0)
    s     = Heaviside(h - 1)                      (fire; surrogate below for the gradient)
    v'    = h * (1 - s)                           (hard reset to 0; reset="zero", the default)
    v'    = h - theta * s                         (soft reset; reset="subtract", the paper's own
                                                   equation, spikingjelly's v_reset=None)

Every neuron is one step in three overridable parts, spikingjelly's template: ``charge`` (the
membrane from the input), ``fire`` (the spikes), ``reset`` (the membrane left after them).

Surrogate (the paper's): sigma(x) = arctan(pi x) / pi + 1/2, so dS/dx = 1 / (1 + (pi x)^2).
``detach_reset=True`` stops the gradient through the reset term (spikingjelly's option of the
same name); the default keeps it, as spikingjelly does. ``tau_min`` > 1 puts a floor under tau
(the pilot saw tau collapse to 1.2-1.75 with an update every slice) without a clamp that would
kill the gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn


class NeuronStep(NamedTuple):
    """What one step of a neuron layer returns: its spikes, the membrane left for the next step
    (after the reset), and the charged potential before the reset (what a membrane readout reads)."""

    spikes: torch.Tensor
    membrane: torch.Tensor
    potential: torch.Tensor


class ATanSpike(torch.autograd.Function):
    """Heaviside forward; backward the derivative of arctan(pi x / w)/pi + 1/2, rescaled to a
    peak of 1: ``1 / (1 + (pi x / w)^2)``. ``w = 1`` is the paper's surrogate; a wider ``w``
    passes more gradient to neurons far from threshold (Zenke & Vogels 2021: the scale of the
    surrogate matters more than its shape)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.width = width
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad / (1.0 + (math.pi * x / ctx.width) ** 2), None


def spike_fn(x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
    """Surrogate spike while training; a plain comparison otherwise (what ONNX export sees)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return ATanSpike.apply(x, width)
    return (x >= 0).to(x.dtype)


class SpikingLayer(nn.Module):
    """What every neuron layer here shares: a threshold, binary spikes with the arctan surrogate,
    and activity recording. Subclasses define one step ``(x, v) -> (spikes, v_next)`` with the
    membrane state explicit, so the exported step graph carries it as an input and an output.

    ``learn_threshold``: the firing threshold is a parameter of the layer (DIET-SNN, Rathi &
    Roy 2021: learned leak and threshold), kept above :data:`THRESHOLD_MIN`.
    ``record``: keep, per call, the layer's firing rate and the mean surrogate factor
    ``1 / (1 + (pi (h - theta) / w)^2)`` (the share of its peak gradient the neurons pass), so
    training can show whether the layer is silent or its gradient starved."""

    #: stop the gradient through the reset term (spikingjelly's option of the same name)
    detach_reset = False

    def __init__(self, v_threshold: float, learn_threshold: bool, surrogate_width: float,
                 reset: str = "zero") -> None:
        super().__init__()
        if surrogate_width <= 0 or v_threshold <= THRESHOLD_MIN:
            raise ValueError(f"need surrogate_width > 0 and v_threshold > {THRESHOLD_MIN}")
        if reset not in RESETS:
            raise ValueError(f"reset {reset!r}: choose from {RESETS}")
        self.reset_mode = reset
        self.surrogate_width = float(surrogate_width)
        self.theta = nn.Parameter(torch.tensor(float(v_threshold)), requires_grad=learn_threshold)
        self.record = False
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def v_threshold(self) -> float:
        return float(self.threshold().detach())

    def threshold(self) -> torch.Tensor:
        return self.theta.clamp(min=THRESHOLD_MIN) if self.theta.requires_grad else self.theta

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> NeuronStep:
        """One step: charge -> fire -> reset; nothing is kept on the module."""
        h = self.charge(x, v)
        s = self.fire(h)
        return NeuronStep(s, self.reset(h, s), h)

    def charge(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """To zero (``h (1 - s)``) or by subtraction (``h - theta s``, the residual kept)."""
        r = s.detach() if self.detach_reset else s
        return h * (1.0 - r) if self.reset_mode == "zero" else h - self.threshold() * r

    def fire(self, h: torch.Tensor) -> torch.Tensor:
        u = h - self.threshold()
        s = spike_fn(u, self.surrogate_width)
        if self.record:
            with torch.no_grad():
                # the surrogate factor's mean from every RECORD_STRIDE-th neuron: recording it
                # over all of them cost 7 % of an SNN training epoch
                sample = u.detach().reshape(-1)[::RECORD_STRIDE]
                factor = 1.0 / (1.0 + (math.pi * sample / self.surrogate_width) ** 2)
                self.stats.append((s.detach().mean(), factor.mean()))
        return s

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # checkpoints from before the threshold was a parameter hold none: the fixed 1.0
        state_dict.setdefault(prefix + "theta", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PLIF(SpikingLayer):
    """One layer of PLIF neurons sharing a learnable time constant (the paper's neuron)."""

    def __init__(self, init_tau: float = 2.0, tau_min: float = 1.0, v_threshold: float = 1.0,
                 detach_reset: bool = False, learn_threshold: bool = False,
                 surrogate_width: float = 1.0, reset: str = "zero") -> None:
        super().__init__(v_threshold, learn_threshold, surrogate_width, reset)
        if not init_tau > tau_min >= 1.0:
            raise ValueError(f"need init_tau > tau_min >= 1, got {init_tau}, {tau_min}")
        self.tau_min = float(tau_min)
        self.detach_reset = detach_reset
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau / tau_min - 1.0)))

    @property
    def tau(self) -> float:
        return float(self.tau_min / torch.sigmoid(self.w.detach()))

    def charge(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v + (x - v) * (torch.sigmoid(self.w) / self.tau_min)

    def extra_repr(self) -> str:
        return (f"tau={self.tau:.3f}, tau_min={self.tau_min}, threshold={self.v_threshold:.3f}, "
                f"surrogate_width={self.surrogate_width}, detach_reset={self.detach_reset}, reset={self.reset_mode}")


class LeakyZero(SpikingLayer):
    """snnTorch's ``Leaky(beta, reset_mechanism="zero", learn_beta=True)`` (snntorch 1.0) as an
    explicit-state step, tested equal to snnTorch's own module step by step (``reset="subtract"``:
    its ``reset_mechanism="subtract"``):

        r  = Heaviside(v - theta)           (reset decided from the stored membrane, detached)
        v' = clamp(beta, 0, 1) * (1 - r) * v + x        (zero)
        v' = clamp(beta, 0, 1) * v + x - theta * r      (subtract)
        s  = Heaviside(v' - theta)          (arctan surrogate)

    Unlike PLIF the input is not divided by tau and the reset lands one step late (snnTorch's
    ``reset_delay``): the stored membrane is the potential before reset. ``beta = 0.5`` matches
    PLIF's initial leak (tau = 2)."""

    def __init__(self, beta: float = 0.5, v_threshold: float = 1.0, learn_threshold: bool = False,
                 surrogate_width: float = 1.0, reset: str = "zero") -> None:
        super().__init__(v_threshold, learn_threshold, surrogate_width, reset)
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def charge(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The reset lands here, one step late, decided from the stored membrane."""
        r = (v > self.threshold()).to(v.dtype).detach()
        beta = self.beta.clamp(0, 1)
        if self.reset_mode == "zero":
            return beta * (1.0 - r) * v + x
        return beta * v + x - self.threshold() * r

    def reset(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return h  # the membrane is stored before its (delayed) reset

    def extra_repr(self) -> str:
        return (f"beta={float(self.beta):.3f}, threshold={self.v_threshold:.3f}, "
                f"surrogate_width={self.surrogate_width}, reset={self.reset_mode}")


THRESHOLD_MIN = 0.05
#: how a neuron's membrane is reset after a spike: to zero, or by subtracting the threshold
RESETS = ("zero", "subtract")
#: a strided sample of the neurons is enough for a layer's mean surrogate factor (activity.csv)
RECORD_STRIDE = 16
