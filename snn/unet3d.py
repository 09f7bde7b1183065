"""The lightweight 3D U-Net of the model zoo (issue 16): Cecchin, Dugo and Soldà, "Improved 3D
U-Net for Brain Tumor Segmentation on BraTS Dataset" (weights published at
huggingface.co/dugoalberto/3D_U_Net_full_slice), a dense, non-spiking baseline that sees the
whole volume where the Spiking U-Seg-Net sees slices.

The paper states the ingredients (three resolution levels, Conv3d + InstanceNorm + LeakyReLU
blocks, 3D max-pooling with stride 2, a mirrored decoder with skip connections, dropout 0.3
before the final 1x1x1 conv, Kaiming initialisation) and the size, 340,596 parameters, but not
the widths. Of the variants those ingredients allow (base width 4-64 doubling per level; one
or two convs per block, with or without bias; InstanceNorm with or without affine; upsampling
by 2x2x2 or 3x3x3 transposed conv, or interpolation with or without a 1x1x1 conv; one or two
decoder convs; 3 or 4 outputs; residual 1x1x1 shortcuts or none; an extra bottleneck block or
none), exactly one has 340,596 parameters, and it is built here: widths 16-32-64, two 3x3x3
convs with bias per block, InstanceNorm without affine parameters (PyTorch's default), 2x2x2
stride-2 transposed convs with bias, two convs per decoder block on the concatenated skip, and
a 1x1x1 conv to 4 classes (background and the BraTS labels 1, 2, 4, softmax).

Trained on patches (:mod:`spikeseg.training.patches`), exported as one patch-in, logits-out
graph, and run by the torch-free runtime by sliding window (:mod:`spikeseg.runtime.sliding`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from spikeseg.snn.architectures import LITE_3D

ARCH = LITE_3D
#: the paper's preset and smaller ones for a CPU
PRESETS: dict[str, tuple[int, int, int]] = {"paper": (16, 32, 64), "small": (8, 16, 32), "tiny": (4, 8, 16)}
PAPER_PARAMETERS = 340_596
LEAKY_SLOPE = 0.01  # PyTorch's default negative slope; the paper does not state one
MULTIPLE = 4  # two poolings: patch sides must be multiples of 4
CONFIG_VERSION = 1


@dataclass(frozen=True)
class Unet3dConfig:
    widths: tuple[int, int, int] = PRESETS["paper"]
    in_channels: int = 4
    classes: int = 4
    dropout: float = 0.3
    arch: str = ARCH
    version: int = CONFIG_VERSION

    @classmethod
    def preset(cls, preset: str) -> "Unet3dConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
        return cls(widths=PRESETS[preset])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Unet3dConfig":
        if d.get("version") != CONFIG_VERSION or d.get("arch") != ARCH:
            raise ValueError(f"not a {ARCH} config of version {CONFIG_VERSION}: {d.get('arch')!r} "
                             f"version {d.get('version')!r}")
        return cls(**{**d, "widths": tuple(d["widths"])})


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two (Conv3d 3x3x3 -> InstanceNorm -> LeakyReLU)."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv3d(c, cout, 3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(LEAKY_SLOPE)]
    return nn.Sequential(*layers)


class LiteUnet3d(nn.Module):
    """Three levels, (B, 4, D, H, W) -> (B, classes, D, H, W) logits; D, H, W multiples of 4."""

    def __init__(self, cfg: Unet3dConfig = Unet3dConfig()) -> None:
        super().__init__()
        w0, w1, w2 = cfg.widths
        self.cfg = cfg
        self.enc0, self.enc1, self.enc2 = _block(cfg.in_channels, w0), _block(w0, w1), _block(w1, w2)
        self.pool = nn.MaxPool3d(2, stride=2)
        self.up1, self.dec1 = nn.ConvTranspose3d(w2, w1, 2, stride=2), _block(2 * w1, w1)
        self.up0, self.dec0 = nn.ConvTranspose3d(w1, w0, 2, stride=2), _block(2 * w0, w0)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Conv3d(w0, cfg.classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    stateful = False

    def connection_layers(self) -> list[tuple[str, nn.Module]]:
        """(module path, layer) of every conv and transposed conv, in execution order."""
        order = ["enc0", "enc1", "enc2", "up1", "dec1", "up0", "dec0", "head"]
        layers = [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
        return sorted(layers, key=lambda nm: (order.index(nm[0].split(".")[0]), nm[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.enc0(x)
        s1 = self.enc1(self.pool(s0))
        y = self.enc2(self.pool(s1))
        y = self.dec1(torch.cat([self.up1(y), s1], 1))
        y = self.dec0(torch.cat([self.up0(y), s0], 1))
        return self.head(self.drop(y))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
