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
                 batch_slices: int = 32, reset_every_step: bool = False, both_ways: bool = False) -> np.ndarray:
    """(4, X, Y, Z) model-space image to (3, X, Y, Z) probabilities from one view model.

    Stateful models run slice by slice with the state carried; stateless ones in batches.
    """
    return predict_views(model, [image], view, device, batch_slices, reset_every_step, both_ways)[0]


@torch.no_grad()
def predict_views(model: SliceSegNet, images: list[np.ndarray], view: str, device: torch.device | str = "cpu",
                  batch_slices: int = 32, reset_every_step: bool = False, both_ways: bool = False) -> list[np.ndarray]:
    """:func:`predict_view` over several images; a stateful model runs images of one shape as
    one batch of sequences. Why: stepped one image at a time, an SNN's validation made three times
    as many small kernel calls.
    ``both_ways``: a stateful model also runs each sequence back to front, and the two passes'
    probabilities are averaged (the runtime's ``slice-sequence-both-ways``)."""
    model.eval()
    seqs = [torch.from_numpy(np.ascontiguousarray(to_view(im, view), dtype=np.float32)).to(device) for im in images]
    if model.stateful:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, s in enumerate(seqs):
            by_shape.setdefault(tuple(s.shape), []).append(i)
        probs: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
        for idx in by_shape.values():
            batch = torch.stack([seqs[i] for i in idx])
            prob = torch.sigmoid(model(batch, reset_every_step=reset_every_step)[0].float())
            if both_ways and not reset_every_step:  # with the reset every slice, both passes are one
                back = model(batch.flip(1), reset_every_step=reset_every_step)[0].float().flip(1)
                prob = (prob + torch.sigmoid(back)) / 2
            for k, i in enumerate(idx):
                probs[i] = prob[k]
    else:
        probs = [torch.sigmoid(torch.cat([model(s[i:i + batch_slices, None])[0][:, 0]
                                          for i in range(0, s.shape[0], batch_slices)]).float()) for s in seqs]
    return [from_view(p.cpu().numpy(), view) for p in probs]
