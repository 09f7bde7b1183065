"""Training data: cases preprocessed once to disk (nnU-Net style), folds, and slice sequences.

Each case is turned into the model grid by the same :mod:`runtime.preprocess` code the
runtime uses, and stored as ``<case>_image.npy`` (4, X, Y, Z) float16 and
``<case>_regions.npy`` (3, X, Y, Z) uint8 in a cache folder keyed by the preprocessing record
and the storage type, so the three view models of a run share one cache; a case is read
(memory-mapped) when a batch needs it and handed to the trainers as float32.

Why float16: half the disk of float32 (BraTS 2023's 1,251 cases at 1 mm: 47 GB instead of 94);
the normalised intensities (min-max to [0, 1], or z-scores within +-5) keep 3 significant
digits, and :mod:`spikeseg.benchmarks.cache_precision` measures what that does to training.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spikeseg.runtime.atomic import atomic_path, write_json
from spikeseg.runtime.case_io import find_cases
from spikeseg.runtime.console import log
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import PreprocessParams, load_model_space, to_view


@dataclass(frozen=True)
class CachedCase:
    case_id: str
    image_path: Path
    regions_path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The image as float32 (whatever the cache stores) and the region masks (memory-mapped)."""
        image, regions = self.stored()
        return np.asarray(image, dtype=np.float32), regions

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """Both memory-mapped as stored: for a reader that takes a small part and casts only that
        (a patch), rather than the whole volume on every draw."""
        return np.load(self.image_path, mmap_mode="r"), np.load(self.regions_path, mmap_mode="r")


def data_fingerprint(case_dirs: list[Path], with_times: bool = False) -> str:
    """Hash of the case ids, file names and sizes: cheap, and changes when the data set does.
    ``with_times`` adds modification times (the cache's key: a file rewritten in place, even at
    the same size, is preprocessed again, never read stale)."""
    h = hashlib.sha256()
    for d in case_dirs:
        for f in sorted(d.iterdir()):
            st = f.stat()
            h.update(f"{d.name}/{f.name}:{st.st_size}{f':{st.st_mtime_ns}' if with_times else ''}".encode())
    return h.hexdigest()[:16]


#: Runs share preprocessed cases through this folder when set (``spikeseg train --cache`` wins).
CACHE_ENV = "SPIKESEG_CACHE"
#: how cached images are stored (see the module docstring); part of the cache's key
CACHE_DTYPE = np.float16


def cache_folder(cfg, out: Path) -> Path:  # noqa: ANN001 - a TrainConfig (config imports this module's users)
    """Where a run keeps its preprocessed cases: ``--cache``, else ``$SPIKESEG_CACHE``, else ``RUN/preprocessed``."""
    return Path(cfg.cache or os.environ.get(CACHE_ENV) or out / "preprocessed")


def preprocess_dataset(data_dir: Path, cache_root: Path, params: PreprocessParams,
                       progress: bool = True) -> list[CachedCase]:
    """Preprocess every labelled case into ``cache_root/<params hash>-<data fingerprint>/``
    (skipping cached ones). Keyed by the data set too, so that runs on other data sharing one
    cache root never read each other's cases; runs on the same data and grid (a view's three
    models, a twin and its SNN) share one copy. Files are written atomically, so two runs filling
    it at once each see whole files."""
    folders = find_cases(data_dir)
    dtype = np.dtype(CACHE_DTYPE)
    record = {**params.to_dict(), "storage": dtype.name}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    cache = cache_root / f"{key}-{data_fingerprint(folders, with_times=True)}"
    cache.mkdir(parents=True, exist_ok=True)
    write_json(cache / "preprocess.json", record)
    out, made = [], 0
    for folder in tqdm(folders, desc="preprocess", unit="case", disable=not progress):
        case_id = folder.name
        img_p, reg_p = cache / f"{case_id}_image.npy", cache / f"{case_id}_regions.npy"
        if not (img_p.exists() and reg_p.exists()):
            prepared = load_model_space(folder, params, label="required")
            assert prepared.regions is not None
            for path, arr in ((reg_p, prepared.regions.astype(np.uint8)), (img_p, prepared.image.astype(dtype))):
                with atomic_path(path, suffix=".npy") as tmp:
                    np.save(tmp, arr)
            made += 1
        out.append(CachedCase(case_id, img_p, reg_p))
    size = sum(p.stat().st_size for c in out for p in (c.image_path, c.regions_path))
    log.info(f"preprocessed cases: {len(out)} ({made} new) in {cache}, {size / 2**20:.0f} MB on disk ({dtype.name})")
    return out


def kfold_split(case_ids: list[str], folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """Split by case (never by slice), seeded; returns (train, validation) ids."""
    if not 0 <= fold < folds:
        raise InputError(None, f"fold {fold} outside 0..{folds - 1}")
    if len(case_ids) < folds:
        raise InputError(None, f"{len(case_ids)} cases cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(sorted(case_ids))
    parts = np.array_split(order, folds)
    val = sorted(parts[fold].tolist())
    train = sorted(c for c in case_ids if c not in set(val))
    return train, val


def view_sequence(image: np.ndarray, regions: np.ndarray, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(4|3, X, Y, Z) volumes to (T, C, H, W) slice sequences along the view's axis
    (augmentation, mirroring included, is :mod:`spikeseg.training.augment`'s)."""
    img = np.asarray(image)
    reg = np.asarray(regions)
    return (np.ascontiguousarray(to_view(img, view), dtype=np.float32),
            np.ascontiguousarray(to_view(reg, view), dtype=np.float32))
