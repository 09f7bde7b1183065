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
    model.eval()
    seq = torch.from_numpy(np.ascontiguousarray(to_view(image, view), dtype=np.float32)).to(device)
    if model.stateful:
        logits, _ = model(seq[None], reset_every_step=reset_every_step)
        logits = logits[0]
    else:
        logits = torch.cat([model(seq[i:i + batch_slices, None])[0][:, 0]
                            for i in range(0, seq.shape[0], batch_slices)])
    return from_view(torch.sigmoid(logits.float()).cpu().numpy(), view)
