"""The cascaded multi-encoder U-Net of the model zoo (issue 17) and its two ablations: Aliyev and
Gardashova, "Cascaded UNet for glioma segmentation" (2025), after the multiple-encoder design
they describe for BraTS 2018.

- ``unet3d``: a plain 3D U-Net, the four modalities stacked as input channels (the paper's
  "UNet" row).
- ``me-unet``: one encoder per modality, run as grouped convolutions (groups = modalities);
  at every level the modalities' feature maps are fused by their element-wise maximum and a
  1x1x1 convolution before they reach the decoder ("ME UNet").
- ``cascade-me-unet``: three ME U-Nets of the same shape on the input downsampled x4, x2 and
  x1. Each finer stage gets the coarser stage's class probabilities, upsampled x2, at its
  full-resolution decoder level, and at each coarser decoder level the context map (the
  feature map before the final 1x1x1 conv) of the stage working at that resolution
  (``d_i^t = g(W e_i^t + W d_{i-1}^t + W y^{t-i})``): no context is resampled. Each stage has
  its own output and loss (deep supervision); the graph outputs the finest ("C ME UNet").

Blocks are two (3x3x3 conv, InstanceNorm, ReLU); the paper states ReLU after every conv and
channel doubling per level but not its base width or normalisation, so the presets here are
ours: ``paper`` 16-32-64 per modality. Output: 4 classes (background, NCR, ED, ET; softmax),
the runtime's sliding-window contract, so the model runs like the lite 3D U-Net.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spikeseg.snn.architectures import CASCADE_ARCHS

ARCHS = CASCADE_ARCHS
PRESETS: dict[str, tuple[int, int, int]] = {"paper": (16, 32, 64), "small": (8, 16, 32), "tiny": (4, 8, 16)}
MODALITIES = 4
#: downsampling of each cascade stage's input, coarsest first
STAGE_SCALES = (4, 2, 1)
CONFIG_VERSION = 1


@dataclass(frozen=True)
class CascadeConfig:
    arch: str = "cascade-me-unet"
    widths: tuple[int, ...] = PRESETS["paper"]
    in_channels: int = MODALITIES
    classes: int = 4
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose from {ARCHS}")
        if self.cascade and len(self.widths) < len(STAGE_SCALES):
            raise ValueError(f"a cascade of {len(STAGE_SCALES)} stages needs at least that many levels")

    @property
    def cascade(self) -> bool:
        return self.arch == "cascade-me-unet"

    @property
    def multi_encoder(self) -> bool:
        return self.arch != "unet3d"

    @property
    def multiple(self) -> int:
        """Patch sides must be multiples of this: the coarsest stage's input pooled per level."""
        return (max(STAGE_SCALES) if self.cascade else 1) * 2 ** (len(self.widths) - 1)

    @property
    def min_patch(self) -> int:
        """The smallest patch: its bottleneck is 2 voxels a side (InstanceNorm needs more than one)."""
        return 2 * self.multiple

    @classmethod
    def preset(cls, arch: str, preset: str) -> "CascadeConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
        return cls(arch=arch, widths=PRESETS[preset])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CascadeConfig":
        if d.get("version") != CONFIG_VERSION or d.get("arch") not in ARCHS:
            raise ValueError(f"not a config of {ARCHS} version {CONFIG_VERSION}: {d.get('arch')!r} "
                             f"version {d.get('version')!r}")
        return cls(**{**d, "widths": tuple(d["widths"])})


def _block(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    """Two (Conv3d 3x3x3 -> InstanceNorm -> ReLU); ``groups`` keeps the modalities apart."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv3d(c, cout, 3, padding=1, groups=groups), nn.InstanceNorm3d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class MaxFusion(nn.Module):
    """(B, M*C, ...) modality-grouped features -> max over the M modalities -> 1x1x1 conv."""

    def __init__(self, modalities: int, channels: int) -> None:
        super().__init__()
        self.modalities = modalities
        self.conv = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, mc = x.shape[:2]
        fused = x.reshape(b, self.modalities, mc // self.modalities, *x.shape[2:]).amax(1)
        return self.conv(fused)


class UnetStage(nn.Module):
    """One U-Net; ``extras[l]`` channels join the decoder at level ``l`` (0 = full resolution):
    concatenated with the upsampled features and the skip, or, at the deepest level, with the
    bottleneck before its transposed conv. Returns (logits, context map)."""

    def __init__(self, widths: tuple[int, ...], in_channels: int, classes: int, multi_encoder: bool,
                 extras: dict[int, int]) -> None:
        super().__init__()
        m = in_channels if multi_encoder else 1
        self.extras = dict(extras)
        self.enc = nn.ModuleList(_block(in_channels if i == 0 else m * widths[i - 1], m * w, groups=m)
                                 for i, w in enumerate(widths))
        self.fuse = nn.ModuleList(MaxFusion(m, w) for w in widths) if multi_encoder else None
        deepest = len(widths) - 1
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1] + (extras.get(deepest, 0) if i + 1 == deepest else 0),
                                                   widths[i], 2, stride=2) for i in range(deepest))
        self.dec = nn.ModuleList(_block(2 * widths[i] + extras.get(i, 0), widths[i]) for i in range(deepest))
        self.head = nn.Conv3d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor, extras: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(F.max_pool3d(x, 2) if i else x)
            skips.append(self.fuse[i](x) if self.fuse is not None else x)
        y = skips[-1]
        for i in reversed(range(len(self.dec))):
            if i + 1 in extras and i + 1 == len(self.dec):
                y = torch.cat([y, extras[i + 1]], 1)
            parts = [self.up[i](y), skips[i]] + ([extras[i]] if i in extras else [])
            y = self.dec[i](torch.cat(parts, 1))
        return self.head(y), y


class CascadeUnet(nn.Module):
    """(B, 4, D, H, W) -> (B, classes, D, H, W) logits; D, H, W multiples of ``cfg.multiple``."""

    stateful = False

    def __init__(self, cfg: CascadeConfig = CascadeConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        if cfg.cascade:
            # stage t gets the probabilities of t-1 at level 0 and the context of t-l at level l
            self.stages = nn.ModuleList(
                UnetStage(w, cfg.in_channels, cfg.classes, True,
                          {**({0: cfg.classes} if t else {}), **{lvl: w[0] for lvl in range(1, t + 1)}})
                for t in range(len(STAGE_SCALES)))
        else:
            self.stages = nn.ModuleList([UnetStage(w, cfg.in_channels, cfg.classes, cfg.multi_encoder, {})])
        for mod in self.modules():
            if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)

    def connection_layers(self) -> list[tuple[str, nn.Module]]:
        """(module path, layer) of every conv and transposed conv, in execution order."""
        order: list[tuple[str, nn.Module]] = []
        for t, stage in enumerate(self.stages):
            p = f"stages.{t}"
            for i, enc in enumerate(stage.enc):
                order += [(f"{p}.enc.{i}.{k}", m) for k, m in enc.named_children() if isinstance(m, nn.Conv3d)]
                if stage.fuse is not None:
                    order.append((f"{p}.fuse.{i}.conv", stage.fuse[i].conv))
            for i in reversed(range(len(stage.dec))):
                order.append((f"{p}.up.{i}", stage.up[i]))
                order += [(f"{p}.dec.{i}.{k}", m) for k, m in stage.dec[i].named_children() if isinstance(m, nn.Conv3d)]
            order.append((f"{p}.head", stage.head))
        return order

    def stage_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's logits, coarsest first (the loss supervises each)."""
        if not self.cfg.cascade:
            return [self.stages[0](x, {})[0]]
        outs: list[torch.Tensor] = []
        contexts: list[torch.Tensor] = []
        for t, (stage, scale) in enumerate(zip(self.stages, STAGE_SCALES)):
            xt = F.avg_pool3d(x, scale) if scale > 1 else x
            extras = {lvl: contexts[t - lvl] for lvl in range(1, t + 1)}
            if t:
                extras[0] = F.interpolate(torch.softmax(outs[-1], 1), scale_factor=2.0, mode="trilinear",
                                          align_corners=False)
            logits, context = stage(xt, extras)
            outs.append(logits)
            contexts.append(context)
        return outs

    def forward(self, x: torch.Tensor, stages: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """The finest logits (what the exported graph outputs), or with ``stages`` every stage's."""
        outs = self.stage_logits(x)
        return outs if stages else outs[-1]
