"""The architectures spikeseg trains, named once: what each is, whether it sees slices or 3D
patches, and the trainer it uses unless told otherwise. Torch-free, so that reading a run's
config or listing the CLI's choices never imports torch; the model modules check their own
names against it (``tests/test_models.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    #: "slice": one model per view over slice sequences; "volume": one model on 3D patches
    kind: str
    #: the trainer used unless ``--trainer`` says otherwise
    trainer: str
    #: one line for ``spikeseg train --help`` and the docs
    summary: str


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("spiking-useg", "slice", "fptt", "the Spiking U-Seg-Net (PLIF neurons, FPTT)"),
    Architecture("useg", "slice", "standard", "its ReLU twin, per slice"),
    Architecture("useg-clstm", "slice", "tbptt", "the twin with a ConvLSTM at the bottleneck"),
    Architecture("unet3d-lite", "volume", "patches", "the lightweight 3D U-Net (Cecchin et al.)"),
    Architecture("unet3d", "volume", "patches", "the cascade's ablation with one stage and one encoder"),
    Architecture("me-unet", "volume", "patches", "the cascade's ablation with one stage"),
    Architecture("cascade-me-unet", "volume", "patches",
                 "three cascaded multi-encoder 3D U-Nets at x4, x2, x1 (Aliyev & Gardashova)"),
)}

SLICE_ARCHS: tuple[str, ...] = tuple(n for n, a in ARCHITECTURES.items() if a.kind == "slice")
VOLUME_ARCHS: tuple[str, ...] = tuple(n for n, a in ARCHITECTURES.items() if a.kind == "volume")
#: the lite 3D U-Net is its own module (snn.unet3d); the rest are the cascade family (snn.cascade)
LITE_3D = "unet3d-lite"
CASCADE_ARCHS: tuple[str, ...] = tuple(n for n in VOLUME_ARCHS if n != LITE_3D)
DEFAULT_TRAINER: dict[str, str] = {n: a.trainer for n, a in ARCHITECTURES.items()}


def help_text() -> str:
    """Every architecture and what it is, for ``--arch``'s help."""
    return "; ".join(f"{n}: {a.summary}" for n, a in ARCHITECTURES.items()) + (
        ". The 3D models train on patches and have no views")
