"""The paper's loss: 0.5 BCE + 0.5 soft Dice (eps 1e-5), per region over the batch.

One deviation, measured necessary here: a region's Dice term is left out of a window in which
that region is absent from the target. With FPTT updating every K slices, most windows of a
sequence hold no tumour, and the paper's formula on an empty target (loss ~ 1 unless every
prediction is exactly 0) then pulls the whole network to background: the tiny SNN stayed at
Dice 0 for 11 epochs on phantoms. BCE still trains the background in those windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_EPS = 1e-5


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, region_dim: int = -3) -> torch.Tensor:
    """Mean over present regions of 1 - (2 sum(s r) + eps) / (sum s + sum r + eps); 0 if none."""
    dims = [d for d in range(prob.ndim) if d != (region_dim % prob.ndim)]
    inter = (prob * target).sum(dims)
    ref = target.sum(dims)
    loss = 1 - (2 * inter + DICE_EPS) / (prob.sum(dims) + ref + DICE_EPS)
    present = ref > 0
    if not bool(present.any()):
        return loss.sum() * 0.0
    return loss[present].mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``logits`` and ``target`` shaped (..., 3, H, W)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return 0.5 * bce + 0.5 * soft_dice_loss(torch.sigmoid(logits), target)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """BCE of the student's per-region probabilities against the teacher's (Hinton et al., 2015,
    "Distilling the knowledge in a neural network", with sigmoid outputs). Why: the warm-started
    SNN starts from the twin's weights; the twin's soft maps tell it, voxel by voxel, what the
    same weights computed before the neurons became binary, a denser signal than the labels,
    which on hard phantoms are mostly background."""
    return F.binary_cross_entropy_with_logits(student_logits.float(), torch.sigmoid(teacher_logits.float()))


def ce_dice_loss(logits: torch.Tensor, classes: torch.Tensor, ce_weight: float = 0.3) -> torch.Tensor:
    """The lite 3D U-Net's loss (Cecchin et al.): ``ce_weight`` x cross-entropy + the rest x soft
    Dice of the softmax against the one-hot classes, per class over the batch, averaged over
    the classes present (as :func:`soft_dice_loss`). ``logits`` (B, K, D, H, W), ``classes``
    (B, D, H, W) integer."""
    logits = logits.float()
    ce = F.cross_entropy(logits, classes)
    onehot = F.one_hot(classes, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    return ce_weight * ce + (1 - ce_weight) * soft_dice_loss(torch.softmax(logits, 1), onehot, region_dim=1)


def deep_mean_dice_loss(stage_logits: list[torch.Tensor], classes: torch.Tensor) -> torch.Tensor:
    """The cascade's loss (Aliyev & Gardashova 2025): mean Dice over the classes of each stage's
    softmax, each stage against the one-hot classes average-pooled to its grid (soft targets at
    x4 and x2), summed over the stages (each stage has its own loss). ``classes`` (B, D, H, W)."""
    onehot = F.one_hot(classes, stage_logits[-1].shape[1]).movedim(-1, 1).float()
    total = stage_logits[0].new_zeros((), dtype=torch.float32)
    for logits in stage_logits:
        scale = onehot.shape[-1] // logits.shape[-1]
        target = F.avg_pool3d(onehot, scale) if scale > 1 else onehot
        total = total + soft_dice_loss(torch.softmax(logits.float(), 1), target, region_dim=1)
    return total
