"""Parametric LIF neuron (Fang et al., ICCV 2021) as an explicit-state step.

State lives outside the module (``v`` in, ``v_next`` out) so one slice is one call and the
exported ONNX step has every membrane potential as a named input and output; module-held
state (spikingjelly's ``self.v``) does not survive ONNX export.

Dynamics, identical to spikingjelly's ``ParametricLIFNode(decay_input=True, v_reset=0.0,
v_threshold=1.0, surrogate_function=surrogate.ATan())`` when ``tau_min == 1``:

    1/tau = sigmoid(w) / tau_min                  (learnable w, one per layer)
    h     = v + (x - v) / tau                     (charge, v_reset = 0)
    s     = Heaviside(h - 1)                      (fire; surrogate below for the gradient)
    v'    = h * (1 - s)                           (hard reset to 0)

Surrogate (the paper's): sigma(x) = arctan(pi x) / pi + 1/2, so dS/dx = 1 / (1 + (pi x)^2).
``detach_reset=True`` stops the gradient through the reset term (spikingjelly's option of the
same name); the default keeps it, as spikingjelly does. ``tau_min`` > 1 puts a floor under tau
(the pilot saw tau collapse to 1.2-1.75 with an update every slice) without a clamp that would
kill the gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ATanSpike(torch.autograd.Function):
    """Heaviside forward, derivative of arctan(pi x)/pi + 1/2 backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / (1.0 + (math.pi * x) ** 2)


def spike_fn(x: torch.Tensor) -> torch.Tensor:
    """Surrogate spike while training; a plain comparison otherwise (what ONNX export sees)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return ATanSpike.apply(x)
    return (x >= 0).to(x.dtype)


class PLIF(nn.Module):
    """One layer of PLIF neurons sharing a learnable time constant."""

    def __init__(self, init_tau: float = 2.0, tau_min: float = 1.0, v_threshold: float = 1.0,
                 detach_reset: bool = False) -> None:
        super().__init__()
        if not init_tau > tau_min >= 1.0:
            raise ValueError(f"need init_tau > tau_min >= 1, got {init_tau}, {tau_min}")
        self.tau_min = float(tau_min)
        self.v_threshold = float(v_threshold)
        self.detach_reset = detach_reset
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau / tau_min - 1.0)))

    @property
    def tau(self) -> float:
        return float(self.tau_min / torch.sigmoid(self.w.detach()))

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decay = torch.sigmoid(self.w) / self.tau_min
        h = v + (x - v) * decay
        s = spike_fn(h - self.v_threshold)
        reset = s.detach() if self.detach_reset else s
        return s, h * (1.0 - reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.3f}, tau_min={self.tau_min}, detach_reset={self.detach_reset}"
