"""Every option of a segmentation, in one typed place: the CLI, the Python API and the Dask runner
all build a :class:`SegmentOptions`, and nothing else carries segmentation options around.

Run-level choices that are not about how a case is segmented (``--overwrite``, ``--shard``,
``--dask``, ``--qc-strict``) belong to the cohort run (:func:`spikeseg.runtime.segment.segment`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from spikeseg.runtime.errors import InputError
from spikeseg.runtime.inference import BACKENDS, PRECISIONS
from spikeseg.runtime.preprocess import VIEWS
from spikeseg.runtime.refine import GUIDE_MODES
from spikeseg.runtime.system import check_threads, physical_cores


@dataclass(frozen=True)
class SegmentOptions:
    """How a case is segmented. Frozen and hashable: a Dask worker keeps one predictor per
    distinct options object.

    ``views`` None: the bundle's (or, with ``refine``, those its fusion was fitted with);
    ``threads`` None: the physical cores; ``projections``: run each view over that many
    spherical projections (0: as it is); ``refine``: a 3D bundle whose fusion was fitted for
    this bundle, ``guide_mode`` picking between its fits; ``et_min_voxels``: relabel enhancing
    tumour components smaller than this as necrosis (0: off)."""

    backend: str = "openvino"
    precision: str = "fp32"
    views: tuple[str, ...] | None = None
    threads: int | None = None
    et_min_voxels: int = 0
    count_ops: bool = False
    projections: int = 0
    refine: Path | None = None
    guide_mode: str | None = None
    png: bool = False
    save_prob: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(None, f"unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise InputError(None, f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")
        if self.views is not None:
            views = tuple(self.views)
            bad = [v for v in views if v not in VIEWS]
            if bad or not views:
                raise InputError(None, f"unknown view {bad or views!r}; choose from {list(VIEWS)}")
            object.__setattr__(self, "views", views)
        if isinstance(self.projections, bool) or not isinstance(self.projections, int) or self.projections < 0:
            raise InputError(None, f"projections {self.projections!r}: a count of spherical projections, 0 for none")
        if isinstance(self.et_min_voxels, bool) or not isinstance(self.et_min_voxels, int) or self.et_min_voxels < 0:
            raise InputError(None, f"et_min_voxels {self.et_min_voxels!r}: a voxel count, 0 for off")
        if self.guide_mode is not None and self.guide_mode not in GUIDE_MODES:
            raise InputError(None, f"unknown guide {self.guide_mode!r}; choose from {list(GUIDE_MODES)}")
        if self.threads is not None:
            check_threads(self.threads)
        if self.refine is not None:
            object.__setattr__(self, "refine", Path(self.refine))

    def resolved(self) -> "SegmentOptions":
        """The same options with the defaults that depend on the machine filled in."""
        if self.threads is not None:
            return self
        return replace(self, threads=physical_cores())
