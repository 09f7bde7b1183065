"""A training run's configuration: what ``spikeseg train`` was asked, written to the run folder's
``config.json`` and read back by export and the benchmarks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from spikeseg.runtime.errors import InputError
from spikeseg.snn.architectures import CASCADE_ARCHS, DEFAULT_TRAINER, VOLUME_ARCHS  # noqa: F401 (read from here too)
from spikeseg.training.recipes import CONVERTED, SPIKING, recipes

TRAINERS = ("fptt", "tbptt", "bptt", "standard", "patches")
RUN_VERSION = 1
#: How the stateful trainers (fptt, tbptt) draw slices, per architecture. ``shuffled`` (the SNN
#: recipe): each update takes batch x window slices at random (case, slice) positions, each with
#: its membranes warmed up by a few slices run as at inference, as varied as the twin's updates;
#: ``sequential`` (the paper's, and the ConvLSTM twin's): windows front to back through each
#: volume with the state carried; ``random``: one window per update at a tumour-biased position.
#: The recipes (:mod:`spikeseg.training.recipes`) choose shuffled for the SNN.
WINDOW_SAMPLING = ("sequential", "random", "shuffled")
#: Burn-in slices (run as at inference before a sampled window) for random windows, as before
RANDOM_WINDOW_BURN_IN = 8
#: Shuffled slices: enough burn-in slices that the zero start's share of the membrane falls to
#: this (PLIF keeps 1 - 1/tau a slice: 1 slice at the recipe's tau 1.25, 3 at tau 2)
BURN_IN_RESIDUE = 0.2
#: PLIF's initial tau everywhere else: the paper's and spikingjelly's default
DEFAULT_INIT_TAU = 2.0


@dataclass
class SliceConfig:
    """What only the view models' trainers read: the Spiking U-Seg-Net and its twins (windows,
    neurons, the twin-to-SNN conversion)."""

    window: int = 4
    alpha: float = 0.1
    eval_average: bool = False
    state_reset: bool = False
    val_both_ways: bool = False
    tau_min: float = 1.0
    #: PLIF's initial time constant; None: the converted-snn recipe's multiple of tau_min after a
    #: conversion, else DEFAULT_INIT_TAU
    init_tau: float | None = None
    norm_gain: float = 1.0
    learn_threshold: bool = False
    surrogate_width: float = 1.0
    neuron: str = "plif"
    #: after a spike: "zero" (hard reset) or "subtract" (the threshold taken off, the residual kept)
    reset: str = "zero"
    #: the twin's activation: "relu", or "qcfs" for the last ``qcfs_share`` of the budget (the
    #: step its converted SNN computes, ramped in over the first half of that share: :mod:`spikeseg.snn.qcfs`)
    twin_activation: str = "relu"
    qcfs_share: float = 0.5
    readout_lr_scale: float | None = None  # None: the recipe's (1 outside the Spiking U-Seg-Net)
    readout_input: str = "spikes"
    #: None: the arch's default (:meth:`TrainConfig.resolved_window_sampling`)
    window_sampling: str | None = None
    #: None: the sampling's default (:meth:`TrainConfig.resolved_burn_in`)
    burn_in: int | None = None
    tumour_share: float = 0.5
    init_from: str | None = None
    #: with init_from: "balance" sets thresholds and folds spike scales from the twin
    #: (training.conversion); "copy" takes its weights as they are
    convert: str = "balance"
    distill: float = 0.0
    empty_keep: float = 1.0


@dataclass
class VolumeConfig:
    """What only the volume models' patch trainer reads."""

    #: patch side (voxels, a multiple of the model's pooling) and patches per training case per epoch
    patch: int = 64
    patches_per_case: int = 4
    #: share of patches centred on a tumour voxel (the rest anywhere in the grid)
    patch_tumour_share: float = 0.33
    #: probability, per modality and patch, of replacing it by noise (channel-out)
    channel_out: float = 0.0


#: the per-trainer groups of a TrainConfig: attribute -> its dataclass
GROUPS = {"slices": SliceConfig, "volume": VolumeConfig}


@dataclass
class TrainConfig:
    """What ``spikeseg train`` was asked: the settings every trainer shares, and per trainer kind
    its own group (:attr:`slices`, :attr:`volume`). The command line and ``config.json`` are flat
    (one name per setting, as the options are named); :meth:`of` and :meth:`flat` convert."""

    data: str
    out: str
    arch: str = "spiking-useg"
    view: str = "axial"
    trainer: str | None = None
    preset: str = "tiny"
    fold: int = 0
    folds: int = 5
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    clip: float = 0.3
    plateau_patience: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    spacing_mm: float = 2.0
    normalisation: str = "minmax"
    #: training-time augmentation (:mod:`spikeseg.training.augment`): default, light or none
    augment: str = "default"
    max_minutes: float | None = None
    #: where preprocessed cases are kept (shared by runs on the same data and grid); None: the
    #: SPIKESEG_CACHE environment variable, else RUN/preprocessed
    cache: str | None = None
    progress: bool = True
    min_lr: float = 0.0
    #: SGD momentum (the cascade's recipe); 0 = the Adam/AdamW recipes
    momentum: float = 0.0
    #: exponential learning-rate decay per epoch instead of halving on a plateau; 0 = off
    lr_decay: float = 0.0
    #: exponential decay from lr to lr * lr_decay_to over the budget (epochs or max_minutes,
    #: whichever ends first); None: the converted-snn recipe's after a conversion, 1 = off
    lr_decay_to: float | None = None
    early_stop: int | None = None  # epochs without a better validation Dice before stopping
    slices: SliceConfig = field(default_factory=SliceConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    version: int = RUN_VERSION

    @classmethod
    def of(cls, **flat: object) -> "TrainConfig":
        """A config from flat settings (the command line's and ``config.json``'s names), each put in
        its group; a name no group or shared setting has is refused as the dataclass would."""
        grouped: dict[str, dict[str, object]] = {g: {} for g in GROUPS}
        shared = {}
        owner = {f.name: g for g, kind in GROUPS.items() for f in dataclasses.fields(kind)}
        for name, value in flat.items():
            if name in owner:
                grouped[owner[name]][name] = value
            else:
                shared[name] = value
        return cls(**shared, **{g: GROUPS[g](**values) for g, values in grouped.items()})  # type: ignore[arg-type]

    def flat(self) -> dict[str, object]:
        """Every setting by its flat name: what ``config.json`` holds and ``--config`` reads."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in GROUPS}
        for g in GROUPS:
            out.update(dataclasses.asdict(getattr(self, g)))
        return out

    @staticmethod
    def flat_names() -> list[str]:
        return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in GROUPS] + [
            f.name for kind in GROUPS.values() for f in dataclasses.fields(kind)]

    @classmethod
    def for_arch(cls, **given: object) -> "TrainConfig":
        """A config with the architecture's paper settings (``recipes.json``) where ``given`` is
        None (the command line was silent)."""
        arch = str(given.get("arch") or cls.arch)
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls.of(**{**recipes().arch_defaults(arch), **chosen})

    def resolved_readout_lr_scale(self) -> float:
        if self.slices.readout_lr_scale is not None:
            return self.slices.readout_lr_scale
        return float(recipes().setting(SPIKING, "readout_lr_scale", 1.0)) if self.arch == SPIKING else 1.0

    @property
    def converts_twin(self) -> bool:
        """Whether this run is an SNN converted from a trained twin (the recipe's own settings)."""
        return self.arch == "spiking-useg" and bool(self.slices.init_from) and self.slices.convert == "balance"

    def resolved_lr_decay_to(self) -> float:
        """The share of ``lr`` the budget ends at (1: no budget decay)."""
        if self.lr_decay_to is not None:
            if not 0 < self.lr_decay_to <= 1:
                raise InputError(None, f"--lr-decay-to must be in (0, 1], got {self.lr_decay_to}")
            if self.lr_decay and self.lr_decay_to < 1:
                raise InputError(None, "--lr-decay and --lr-decay-to are two schedules: choose one")
            return self.lr_decay_to
        if self.converts_twin and not self.lr_decay:
            return float(recipes().setting(CONVERTED, "lr_decay_to", 1.0))
        return 1.0

    def resolved_init_tau(self) -> float:
        """PLIF's time constant at the start of training (the snnTorch neuron keeps beta 0.5)."""
        if self.slices.init_tau is not None and self.slices.neuron != "plif":
            raise InputError(None, f"--init-tau sets PLIF's time constant; the {self.slices.neuron} neuron has none")
        if self.slices.init_tau is not None:
            tau = self.slices.init_tau
        elif self.converts_twin and self.slices.neuron == "plif":
            factor = recipes().setting(CONVERTED, "init_tau_x_tau_min", None)
            tau = DEFAULT_INIT_TAU if factor is None else float(factor) * self.slices.tau_min
        else:
            tau = DEFAULT_INIT_TAU
        if self.arch == "spiking-useg" and self.slices.neuron == "plif" and not tau > self.slices.tau_min:
            raise InputError(None, f"PLIF's initial tau ({tau}) must exceed --tau-min ({self.slices.tau_min}): "
                                   f"set --init-tau above it")
        return tau

    def resolved_twin_activation(self) -> str:
        """The model's activation: QCFS only for the useg twin (the one an SNN is converted from)."""
        if self.slices.twin_activation not in ("relu", "qcfs"):
            raise InputError(None, f"unknown --twin-activation {self.slices.twin_activation!r}; choose relu or qcfs")
        if self.slices.twin_activation != "relu" and self.arch != "useg":
            raise InputError(None, f"--twin-activation {self.slices.twin_activation} is the useg twin's (the one an "
                                   f"SNN is converted from), not {self.arch}'s")
        if not 0 < self.slices.qcfs_share <= 1:
            raise InputError(None, f"--qcfs-share must be in (0, 1], got {self.slices.qcfs_share}")
        return self.slices.twin_activation

    def resolved_window_sampling(self) -> str:
        """How fptt/tbptt draw their windows (the recipe's for the SNN); other trainers ignore it."""
        recipe = recipes().setting(SPIKING, "window_sampling", "sequential") if self.arch == SPIKING else "sequential"
        sampling = self.slices.window_sampling or recipe
        if sampling not in WINDOW_SAMPLING:
            raise InputError(None, f"unknown --window-sampling {sampling!r}; choose from {WINDOW_SAMPLING}")
        return sampling

    def resolved_burn_in(self) -> int:
        """Slices run as at inference before each sampled window: ``--burn-in``, or the
        sampling's default; none with the state reset every slice, whatever the sampling: the
        reset discards what a burn-in would warm up."""
        if self.slices.burn_in is not None and self.slices.burn_in < 0:
            raise InputError(None, f"--burn-in must be >= 0, got {self.slices.burn_in}")
        if self.slices.state_reset:
            return 0
        if self.slices.burn_in is not None:
            return self.slices.burn_in
        sampling = self.resolved_window_sampling()
        if sampling == "random":
            return RANDOM_WINDOW_BURN_IN
        if sampling == "sequential":
            return 0
        retention = 0.5  # snnTorch's Leaky starts at beta 0.5; the ConvLSTM has no single decay
        if self.arch == "spiking-useg" and self.slices.neuron == "plif":
            retention = 1.0 - 1.0 / self.resolved_init_tau()
        return max(1, math.ceil(math.log(BURN_IN_RESIDUE) / math.log(retention)))

    def resolved_trainer(self) -> str:
        trainer = self.trainer or DEFAULT_TRAINER[self.arch]
        if trainer not in TRAINERS:
            raise InputError(None, f"unknown trainer {trainer!r}; choose from {TRAINERS}")
        if (self.arch in VOLUME_ARCHS) != (trainer == "patches"):
            raise InputError(None, f"the volume models {VOLUME_ARCHS} train on patches (--trainer patches), "
                                   f"and only they do")
        if trainer == "patches":
            return trainer
        stateful = self.arch != "useg"
        if stateful and trainer == "standard":
            raise InputError(None, f"{self.arch} carries state across slices: use fptt, tbptt or bptt")
        if not stateful and trainer != "standard":
            raise InputError(None, "useg has no state across slices: use --trainer standard")
        return trainer
