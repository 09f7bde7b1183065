"""Torch inference over whole volumes: one view model, or the three-view ensemble.

Fusion and uncertainty are :mod:`runtime.ensemble`'s (numpy), so torch, ONNX Runtime and
OpenVINO outputs are fused by one piece of code.
"""

from __future__ import annotations

import numpy as np
import torch

from spikeseg.runtime.preprocess import from_view, to_view
from spikeseg.snn.models import SliceSegNet


@torch.no_grad()
def predict_view(model: SliceSegNet, image: np.ndarray, view: str, device: torch.device | str = "cpu",
                 batch_slices: int = 32, reset_every_step: bool = False) -> np.ndarray:
    """(4, X, Y, Z) model-space image to (3, X, Y, Z) probabilities from one view model.

    Stateful models run slice by slice with the state carried; stateless ones in batches.
    """
    return predict_views(model, [image], view, device, batch_slices, reset_every_step)[0]


@torch.no_grad()
def predict_views(model: SliceSegNet, images: list[np.ndarray], view: str, device: torch.device | str = "cpu",
                  batch_slices: int = 32, reset_every_step: bool = False) -> list[np.ndarray]:
    """:func:`predict_view` over several images; a stateful model runs images of one shape as
    one batch of sequences. Why: stepped one image at a time, an SNN's validation made three times
    as many small kernel calls (1.4 s an epoch at the demo's size, now 1.05 s; its twin's 0.8 s)."""
    model.eval()
    seqs = [torch.from_numpy(np.ascontiguousarray(to_view(im, view), dtype=np.float32)).to(device) for im in images]
    if model.stateful:
        logits: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(seqs):
            by_shape.setdefault(tuple(s.shape), []).append(i)
        for idx in by_shape.values():
            out, _ = model(torch.stack([seqs[i] for i in idx]), reset_every_step=reset_every_step)
            for k, i in enumerate(idx):
                logits[i] = out[k]
    else:
        logits = [torch.cat([model(s[i:i + batch_slices, None])[0][:, 0] for i in range(0, s.shape[0], batch_slices)])
                  for s in seqs]
    return [from_view(torch.sigmoid(lg.float()).cpu().numpy(), view) for lg in logits]
