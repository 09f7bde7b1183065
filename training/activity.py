"""Spike activity while training: per PLIF layer, the firing rate and the surrogate pass-through.

Why: a spiking layer that never reaches threshold passes no spikes forward and, through the
arctan surrogate, only a small share of its peak gradient backward (at rest, h - theta = -1:
1 / (1 + pi^2) = 9 %); a ReLU passes half its units at slope 1. These two numbers per layer,
per update, show whether an SNN that learns slowly is silent or gradient-starved.
Written to ``activity.csv`` (the first ``first`` updates, then every ``every``-th), as epoch
means in ``metrics.csv`` and per layer in TensorBoard.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from spikeseg.snn.neurons import SpikingLayer


class ActivityMonitor:
    def __init__(self, model: nn.Module, first: int = 200, every: int = 25) -> None:
        self.layers = [(name.replace(".act", ""), m) for name, m in model.named_modules() if isinstance(m, SpikingLayer)]
        self.first, self.every = first, every
        self.updates = 0
        self.rows: list[dict[str, Any]] = []
        self._epoch: list[tuple[np.ndarray, np.ndarray]] = []

    def recording(self, on: bool) -> None:
        for _, m in self.layers:
            m.record = on
            m.stats.clear()

    def begin_update(self) -> None:
        for _, m in self.layers:
            m.stats.clear()

    def end_update(self, epoch: int) -> None:
        """Average the recorded steps of this update, per layer."""
        if not self.layers:
            return
        rates = np.array([np.mean([float(r) for r, _ in m.stats]) if m.stats else np.nan for _, m in self.layers])
        sgs = np.array([np.mean([float(g) for _, g in m.stats]) if m.stats else np.nan for _, m in self.layers])
        self.updates += 1
        self._epoch.append((rates, sgs))
        if self.updates <= self.first or self.updates % self.every == 0:
            row: dict[str, Any] = {"update": self.updates, "epoch": epoch}
            row.update({f"rate.{n}": float(r) for (n, _), r in zip(self.layers, rates)})
            row.update({f"surrogate.{n}": float(g) for (n, _), g in zip(self.layers, sgs)})
            self.rows.append(row)

    def epoch_summary(self) -> dict[str, float]:
        """Means over the epoch's updates: across layers, the mean and the quietest layer."""
        if not self._epoch:
            return {}
        rates = np.nanmean([r for r, _ in self._epoch], axis=0)
        sgs = np.nanmean([g for _, g in self._epoch], axis=0)
        self._epoch = []
        out = {"rate_mean": float(rates.mean()), "rate_min_layer": float(rates.min()),
               "surrogate_mean": float(sgs.mean())}
        out.update({f"rate/{n}": float(r) for (n, _), r in zip(self.layers, rates)})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates, self.rows = int(state["updates"]), list(state["rows"])
