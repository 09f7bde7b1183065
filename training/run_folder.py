"""A run folder on disk (its layout: :mod:`spikeseg.training.trainer`): checkpoints, never
executing code from a file; the folder's set-up; and reading a trained view model back, which
export, the benchmarks and warm starts need without the trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spikeseg.runtime.atomic import atomic_path
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import PreprocessParams
from spikeseg.snn.models import ModelConfig, SliceSegNet, build_model
from spikeseg.snn.cascade import ARCHS as CASCADE_ARCHS, CascadeConfig, CascadeUnet
from spikeseg.snn.unet3d import ARCH as VOLUME_ARCH, LiteUnet3d, Unet3dConfig
from spikeseg.training.config import RUN_VERSION, TrainConfig

def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Never executes code from a file: ``weights_only=True``."""
    if not path.is_file():
        raise InputError(path, "no checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"cannot read checkpoint: {exc}") from exc


def prepare_run(run: Path, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    if (run / "config.json").exists() and not (resume or overwrite):
        raise InputError(run, "a run is already here; pass --resume to continue it or --overwrite")
    if overwrite and not resume and (run / "checkpoints").exists():
        for f in (run / "checkpoints").glob("*.pt"):
            f.unlink()
    run.mkdir(parents=True, exist_ok=True)


def build_any(model_config: dict[str, Any]) -> SliceSegNet | LiteUnet3d | CascadeUnet:
    """The untrained model a checkpoint's ``model_config`` describes, slice or volume model."""
    if model_config.get("arch") == VOLUME_ARCH:
        return LiteUnet3d(Unet3dConfig.from_dict(model_config))
    if model_config.get("arch") in CASCADE_ARCHS:
        return CascadeUnet(CascadeConfig.from_dict(model_config))
    return build_model(ModelConfig.from_dict(model_config))


def load_run(run: str | Path) -> tuple[SliceSegNet | LiteUnet3d | CascadeUnet, dict[str, Any], PreprocessParams]:
    """A trained view model from a run folder (best checkpoint), its config and preprocessing."""
    run = Path(run)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise InputError(run, "not a training run (no config.json)")
    info = json.loads(cfg_path.read_text())
    if info.get("version") != RUN_VERSION:
        raise InputError(cfg_path, f"run version {info.get('version')!r}; this spikeseg reads {RUN_VERSION}")
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    model = build_any(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    info["best"] = {"epoch": ckpt["epoch"], **ckpt["val"]}
    info["run_dir"] = str(run.resolve())  # cfg "out" is the parent folder of a --view all run
    return model, info, PreprocessParams.load(run / "preprocess.json")


def twin_run_for(source: Path, view: str) -> Path:
    """The twin run to warm-start ``view`` from: ``source`` itself, or its ``view`` sub-folder
    when ``source`` holds a ``--view all`` run. A twin of another view is refused: the weights
    would map one to one but were trained on differently oriented slices."""
    run = source / view if (source / view / "config.json").is_file() else source
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise InputError(source, f"not a training run (no config.json here or in {view}/)")
    twin_view = json.loads(cfg_path.read_text()).get("view")
    if twin_view != view:
        raise InputError(run, f"is a {twin_view} run; the {view} model needs a {view} twin")
    return run
