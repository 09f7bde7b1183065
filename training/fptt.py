"""Forward Propagation Through Time (Kag & Saligrama, ICML 2021; Yin et al., NMI 2023).

Wraps any torch optimiser. Per parameter it keeps the running mean ``wbar`` and the gradient
memory ``lam`` (the paper's grad l_{t-1}). At each update t (a slice, or a window of K slices
with the hidden state detached between windows) the risk is

    L_t = l_t(w) + R(w),   R(w) = alpha/2 * || w - wbar_t - lam_{t-1} / (2 alpha) ||^2

and after the optimiser step (w_{t+1}):

    lam_t      = lam_{t-1} - alpha * (w_{t+1} - wbar_t)
    wbar_{t+1} = (wbar_t + w_{t+1}) / 2 - lam_t / (2 alpha)

Choice (documented, tested): we follow the paper's equations. The public reference code
(anilkagak2/FPTT, byin-cwi/sFPTT) adds ``-<w, lam> + alpha/2 ||w - wbar||^2`` to the loss,
whose gradient carries ``-lam`` where the paper's R gives ``-lam/2``; its running-mean update
is the same as above with beta = 1/2.

R does not depend on the activations, so instead of adding it to the loss we add its gradient,
``alpha (w - wbar) - lam / 2``, to ``p.grad`` after ``backward()``: the same update, no extra
graph, and it composes with AMP's unscaling and with DDP (whose all-reduce has already run).
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


class FPTT:
    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 alpha: float = 0.1) -> None:
        if alpha <= 0:
            raise ValueError("alpha must be positive")
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.alpha = float(alpha)
        self.wbar = [p.detach().clone() for p in self.params]
        self.lam = [torch.zeros_like(p) for p in self.params]

    def regulariser(self) -> torch.Tensor:
        """R(w) as a differentiable tensor (for logging and tests; training adds its gradient)."""
        a = self.alpha
        return sum(a / 2 * (p - wb - lm / (2 * a)).pow(2).sum()
                   for p, wb, lm in zip(self.params, self.wbar, self.lam))

    @torch.no_grad()
    def add_regulariser_grad(self) -> None:
        a = self.alpha
        for p, wb, lm in zip(self.params, self.wbar, self.lam):
            reg = a * (p - wb) - lm / 2
            if p.grad is None:
                p.grad = reg.clone()
            else:
                p.grad.add_(reg)

    @torch.no_grad()
    def update_running(self) -> None:
        """After the optimiser step: the gradient memory, then the running mean."""
        a = self.alpha
        for p, wb, lm in zip(self.params, self.wbar, self.lam):
            lm.sub_(a * (p - wb))
            wb.mul_(0.5).add_(0.5 * p - lm / (2 * a))

    def step(self, clip_norm: float | None = None, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """Regulariser gradient, clipping, the wrapped optimiser's step, then the FPTT update."""
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        self.add_regulariser_grad()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, clip_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.update_running()

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Evaluate with ``wbar`` in place of the weights, then put the weights back."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, wb in zip(self.params, self.wbar):
                p.copy_(wb)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "wbar": [t.clone() for t in self.wbar], "lam": [t.clone() for t in self.lam]}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])
        with torch.no_grad():
            for dst, src in zip(self.wbar, state["wbar"]):
                dst.copy_(src)
            for dst, src in zip(self.lam, state["lam"]):
                dst.copy_(src)
