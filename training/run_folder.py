"""A training run folder on disk, read and written through :class:`RunFolder` only (the layout
is described in :mod:`spikeseg.training.trainer`): checkpoints, never executing code from a
file; the folder's set-up; and reading a trained view model back, which export, the benchmarks
and warm starts need without the trainer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spikeseg.runtime.atomic import atomic_path, write_json, write_text
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import PreprocessParams
from spikeseg.runtime.tables import rows_to_csv
from spikeseg.snn.models import ModelConfig, SliceSegNet, build_model
from spikeseg.snn.cascade import ARCHS as CASCADE_ARCHS, CascadeConfig, CascadeUnet
from spikeseg.snn.unet3d import ARCH as VOLUME_ARCH, LiteUnet3d, Unet3dConfig
from spikeseg.training.config import RUN_VERSION, TrainConfig

@dataclass(frozen=True)
class RunFolder:
    """One view model's training run: the only code that knows where its files are."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def preprocess_path(self) -> Path:
        return self.path / "preprocess.json"

    @property
    def splits_path(self) -> Path:
        return self.path / "splits.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def activity_path(self) -> Path:
        return self.path / "activity.csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def is_run(self) -> bool:
        """Set up by ``spikeseg train`` (its config written)."""
        return self.config_path.is_file()

    def finished(self) -> bool:
        """Trained to the end (its summary written last)."""
        return self.summary_path.is_file()

    def record(self) -> "RunRecord":
        """``config.json``: what was asked for and what it ran on; refused when missing or of
        another run version."""
        if not self.is_run():
            raise InputError(self.path, "not a training run (no config.json)")
        return RunRecord.parse(_read_json(self.config_path), self.config_path)

    def splits(self) -> dict[str, Any]:
        """``splits.json``: the fold's training and validation case ids ({} before set-up)."""
        return _read_json(self.splits_path) if self.splits_path.is_file() else {}

    def summary(self) -> dict[str, Any]:
        if not self.finished():
            raise InputError(self.path, "not finished (no summary.json)")
        return _read_json(self.summary_path)

    def preprocess(self) -> PreprocessParams:
        return PreprocessParams.load(self.preprocess_path)

    def write_setup(self, record: "RunRecord", params: PreprocessParams, splits: dict[str, Any]) -> None:
        write_json(self.config_path, record.to_dict())
        params.save(self.preprocess_path)
        write_json(self.splits_path, splits)

    def write_summary(self, result: dict[str, Any]) -> None:
        write_json(self.summary_path, result)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        write_text(self.metrics_path, rows_to_csv(rows))

    def write_activity(self, rows: list[dict[str, Any]]) -> None:
        write_text(self.activity_path, rows_to_csv(rows))

    def metrics(self) -> list[dict[str, str]]:
        """``metrics.csv`` rows as written (strings), one per epoch."""
        import csv

        with open(self.metrics_path, newline="") as f:
            return list(csv.DictReader(f))


@dataclass(frozen=True)
class RunRecord:
    """A run's ``config.json``, typed: the settings it was asked for (a :class:`TrainConfig`, the
    trainer resolved) and what it ran on. The file is flat, the settings' fields beside these, so
    ``spikeseg train --config`` reads it as a settings file."""

    settings: TrainConfig
    #: the architecture's model config (``ModelConfig.to_dict()`` or a volume model's)
    model_config: dict[str, Any]
    #: what the twin-to-SNN conversion chose, for a converted SNN
    conversion: dict[str, Any] | None = None
    #: what the run ran on; the defaults stand where a run of an earlier spikeseg (same run
    #: version) did not record them
    device: str = "unknown"
    amp_dtype: str = "float32"
    world_size: int = 1
    dist_backend: str | None = None
    data_fingerprint: str = ""
    torch: str = ""

    def to_dict(self) -> dict[str, Any]:
        ran = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        return {**self.settings.flat(), **ran}

    @classmethod
    def parse(cls, info: dict[str, Any], where: Path) -> "RunRecord":
        if info.get("version") != RUN_VERSION:
            raise InputError(where, f"run version {info.get('version')!r}; this spikeseg reads {RUN_VERSION}")
        if not isinstance(info.get("model_config"), dict):
            raise InputError(where, "malformed run config: no 'model_config'")
        ran = {f.name: info[f.name] for f in dataclasses.fields(cls) if f.name != "settings" and f.name in info}
        return cls(settings_from(info, where), **ran)


def settings_from(info: dict[str, Any], where: Path) -> TrainConfig:
    """The :class:`TrainConfig` fields of a config file (what else it holds is not a setting)."""
    names = set(TrainConfig.flat_names())
    try:
        return TrainConfig.of(**{k: v for k, v in info.items() if k in names})
    except TypeError as exc:  # a required field missing
        raise InputError(where, f"malformed run config: {exc}") from None


def train_settings(path: Path) -> dict[str, Any]:
    """The settings (:class:`TrainConfig` fields) of a run's ``config.json``, given the file or
    the run folder: ``spikeseg train --config``. What the run recorded besides (its model config,
    its conversion) is not a setting and is left out; another run version is refused."""
    file = RunFolder(path).config_path if path.is_dir() else path
    if not file.is_file():
        raise InputError(path, "no config file there (a run's config.json, or its run folder)")
    info = _read_json(file)
    if info.get("version") != RUN_VERSION:
        raise InputError(file, f"config version {info.get('version')!r}; this spikeseg reads {RUN_VERSION}")
    names = set(TrainConfig.flat_names())
    return {k: v for k, v in info.items() if k in names}  # a file may set only some (its schema is the run's)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    return data


def write_untrained_run(path: Path, arch: str, view: str, preset: str, spacing_mm: float, seed: int = 0,
                        why: str = "untrained") -> RunFolder:
    """A run folder holding a seeded, untrained slice model, as export reads a trained one: for
    what does not depend on the weights (latency, the bundle's files and the runtime's checks),
    in seconds. The record and the checkpoint say it is untrained (``why``)."""
    from spikeseg.training.config import DEFAULT_TRAINER

    torch.manual_seed(seed)
    model_cfg = ModelConfig.preset(arch, preset)
    model = build_model(model_cfg)
    run = RunFolder(path)
    save_checkpoint(run.best, {"model": model.state_dict(), "model_config": model_cfg.to_dict(), "epoch": 0,
                               "val": {"note": why}})
    settings = TrainConfig.of(data="", out=str(path), arch=arch, view=view, preset=preset, spacing_mm=spacing_mm,
                              trainer=DEFAULT_TRAINER[arch], folds=1, epochs=0, seed=seed)
    record = RunRecord(settings, model_cfg.to_dict(), None, "cpu", "float32", 1, None, f"none: {why}",
                       torch.__version__)
    run.write_setup(record, PreprocessParams(spacing_mm=(spacing_mm,) * 3),
                    {"fold": 0, "folds": 1, "train": [], "validation": []})
    return run


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
    folder = RunFolder(run)
    if folder.config_path.exists() and not (resume or overwrite):
        raise InputError(run, "a run is already here; pass --resume to continue it or --overwrite")
    if overwrite and not resume and folder.checkpoints.exists():
        for f in folder.checkpoints.glob("*.pt"):
            f.unlink()
    run.mkdir(parents=True, exist_ok=True)


def build_any(model_config: dict[str, Any]) -> SliceSegNet | LiteUnet3d | CascadeUnet:
    """The untrained model a checkpoint's ``model_config`` describes, slice or volume model."""
    if model_config.get("arch") == VOLUME_ARCH:
        return LiteUnet3d(Unet3dConfig.from_dict(model_config))
    if model_config.get("arch") in CASCADE_ARCHS:
        return CascadeUnet(CascadeConfig.from_dict(model_config))
    return build_model(ModelConfig.from_dict(model_config))


@dataclass(frozen=True)
class TrainedRun:
    """A finished run as export and the benchmarks read it: where it is, what it recorded, and
    its best checkpoint's epoch and validation scores."""

    path: Path
    record: RunRecord
    best: dict[str, Any]

    @property
    def settings(self) -> TrainConfig:
        return self.record.settings


def load_run(run: str | Path) -> tuple[SliceSegNet | LiteUnet3d | CascadeUnet, TrainedRun, PreprocessParams]:
    """A trained view model from a run folder (best checkpoint), its record and preprocessing."""
    folder = RunFolder(Path(run))
    record = folder.record()
    ckpt = load_checkpoint(folder.best)
    model = build_any(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    # the folder itself, resolved: the settings' "out" is the parent of a --view all run
    trained = TrainedRun(folder.path.resolve(), record, {"epoch": ckpt["epoch"], **ckpt["val"]})
    return model, trained, folder.preprocess()


def twin_run_for(source: Path, view: str) -> Path:
    """The twin run to warm-start ``view`` from: ``source`` itself, or its ``view`` sub-folder
    when ``source`` holds a ``--view all`` run. A twin of another view is refused: the weights
    would map one to one but were trained on differently oriented slices."""
    run = source / view if RunFolder(source / view).is_run() else source
    if not RunFolder(run).is_run():
        raise InputError(source, f"not a training run (no config.json here or in {view}/)")
    twin_view = RunFolder(run).record().settings.view
    if twin_view != view:
        raise InputError(run, f"is a {twin_view} run; the {view} model needs a {view} twin")
    return run
