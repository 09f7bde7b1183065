"""The Python API: a :class:`Predictor` built once from a bundle (engines compiled once), then
any number of cases, from a folder, four file paths, nibabel images or arrays with an affine::

    import spikeseg
    result = spikeseg.segment("bundles/snn", "BraTS2021_00000/", "out/")   # the one-liner
    predictor = spikeseg.Predictor("bundles/snn", spikeseg.SegmentOptions(precision="int8"))
    result = predictor.predict({"t1": t1_img, "t1ce": t1ce_img, "t2": t2_img, "flair": flair_img})
    result.label_image().to_filename("pred.nii.gz"); result.qc.verdict; result.report

``spikeseg segment`` runs the same predictor over a case or a cohort (:mod:`spikeseg.runtime.segment`).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
from tqdm import tqdm

from spikeseg.runtime import __version__
from spikeseg.runtime.atomic import atomic_dir, write_json
from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.case_io import (MODALITIES, Case, CaseFiles, case_from_arrays, case_from_images,
                                      check_case_id, image_like, load_case, load_files, save_like)
from spikeseg.runtime.cohort import (native_name, prediction_name, probability_name, quicklook_name, report_name,
                                     uncertainty_name)
from spikeseg.runtime.energy import energy_table
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.guide import GuideResult, Refined, Refiner, guide_steps, run_guide
from spikeseg.runtime.guide import refine as refine_case
from spikeseg.runtime.inference import open_engine
from spikeseg.runtime.labels import REGIONS, labels_to_regions, regions_to_labels, relabel_small_et
from spikeseg.runtime.opcount import view_operations
from spikeseg.runtime.options import SegmentOptions
from spikeseg.runtime.prepared import FOLDER, NativeGrid
from spikeseg.runtime.preprocess import model_space
from spikeseg.runtime.projections import CAP_DEGREES
from spikeseg.runtime.qc import QCResult, measure_case, unchecked
from spikeseg.runtime.system import cpu_model, machine, peak_rss_mb, reset_peak_rss

#: The uncertainty map's storage step: uint16 with this NIfTI scale factor covers 0..0.5 (the
#: largest possible spread) in steps of 7.6e-6; as float32 it compressed 2:1 and was 8x slower to write.
UNCERTAINTY_STEP = 0.5 / 65535

#: What :meth:`Predictor.predict` takes: a case folder (BraTS names), a mapping of the four
#: modalities to file paths (any names) or to nibabel images, or a (4, X, Y, Z) array (or a
#: mapping of modality to array) together with ``affine=``.
CaseInput = str | Path | Mapping[str, Any] | np.ndarray


@dataclass
class Prediction:
    """One case's result: RAS arrays for computing with, and images in the input's own on-disk
    geometry for viewers (ITK-SNAP, 3D Slicer) and for saving."""

    case: Case
    #: uint8 labels in RAS, in the input's label convention (BraTS 2021: 1, 2, 4; 2023+: 1, 2, 3)
    labels: np.ndarray
    #: (3, X, Y, Z) float32 ET/TC/WT fused probabilities in RAS
    probabilities: np.ndarray
    #: per voxel the largest spread across the ensemble's members; None with a single member
    uncertainty: np.ndarray | None
    report: dict[str, Any]
    qc: QCResult
    #: the scanner's native T1ce grid, for a case folder written by ``spikeseg prepare``
    native: NativeGrid | None = None

    @property
    def case_id(self) -> str:
        return self.case.case_id

    def label_image(self) -> nib.spatialimages.SpatialImage:
        return image_like(self.labels, self.case.geometry, np.uint8)

    def uncertainty_image(self) -> nib.spatialimages.SpatialImage | None:
        if self.uncertainty is None:
            return None
        return image_like(self.uncertainty, self.case.geometry, np.uint16, slope=UNCERTAINTY_STEP)

    def native_images(self) -> dict[str, nib.spatialimages.SpatialImage]:
        """The labels (each label's indicator interpolated, the largest kept) and the uncertainty
        (linear) on the native T1ce grid of a prepared case, keyed by file name; empty for any
        other case."""
        if self.native is None:
            return {}
        g, cid = self.case.geometry, self.case_id
        out = {native_name(prediction_name(cid)): self.native.image(self.labels, g, np.uint8, labels=True)}
        if self.uncertainty is not None:
            out[native_name(uncertainty_name(cid))] = self.native.image(self.uncertainty, g, np.uint16, labels=False,
                                                                        slope=UNCERTAINTY_STEP)
        return out

    def probability_image(self) -> nib.spatialimages.SpatialImage:
        return image_like(self.probabilities, self.case.geometry, np.float32)

    def save(self, out_root: str | Path, png: bool = False, save_prob: bool = False) -> Path:
        """Write ``out_root/<case>/`` as ``spikeseg segment`` does: assembled in a hidden
        temporary folder and renamed into place (a failure leaves nothing), the report last.
        An existing ``out_root/<case>`` is replaced: the caller decides whether that is allowed."""
        out_root = Path(out_root)
        out_root.mkdir(parents=True, exist_ok=True)
        seconds = self.report["seconds"]
        with atomic_dir(out_root / self.case_id) as tmp:
            t = time.perf_counter()
            self._write_images(tmp, png, save_prob)
            seconds["write"] = time.perf_counter() - t
            seconds["total"] = seconds.get("total", 0.0) + seconds["write"]
            self.report["peak_rss_mb"] = peak_rss_mb()
            write_json(tmp / report_name(self.case_id), self.report)
        return out_root / self.case_id

    def _write_images(self, folder: Path, png: bool, save_prob: bool) -> None:
        """The NIfTI files are compressed side by side (zlib releases the GIL)."""
        g, cid = self.case.geometry, self.case_id
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [pool.submit(save_like, self.labels, g, folder / prediction_name(cid), np.uint8)]
            if self.uncertainty is not None:
                jobs.append(pool.submit(save_like, self.uncertainty, g, folder / uncertainty_name(cid), np.uint16,
                                        slope=UNCERTAINTY_STEP))
            if save_prob:
                jobs.append(pool.submit(save_like, self.probabilities, g, folder / probability_name(cid), np.float32))
            jobs += [pool.submit(nib.save, img, str(folder / name)) for name, img in self.native_images().items()]
            for job in jobs:
                job.result()
        if png:
            from spikeseg.runtime.quicklook import quicklook
            unc = self.uncertainty if self.uncertainty is not None else np.zeros(self.labels.shape, np.float32)
            quicklook(folder / quicklook_name(cid), self.case.image[3], self.labels, unc, self.case.files.convention,
                      self.qc.verdict)


class Predictor:
    """A bundle's engines compiled once (and a refinement bundle's, with ``options.refine``),
    then any number of cases; nnU-Net's ``nnUNetPredictor`` is the model."""

    def __init__(self, bundle: str | Path | Bundle, options: SegmentOptions | None = None,
                 refiner: Bundle | None = None) -> None:
        """``bundle``: a bundle folder (read and verified here) or a loaded :class:`Bundle`;
        ``refiner``: the loaded ``options.refine`` bundle where the caller has verified it already."""
        self.options = (options or SegmentOptions()).resolved()
        o = self.options
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        views, projections = (list(o.views) if o.views else None), o.projections
        self.refiner = None
        if o.refine is not None:
            refine_bundle = refiner if refiner is not None else load_bundle(o.refine)
            self.refiner = Refiner(refine_bundle, self.bundle, o.backend, o.precision, o.threads, o.guide_mode,
                                   views, projections)
            views, projections = list(self.refiner.spec.views), self.refiner.spec.projections
        self.cap_degrees = self.refiner.spec.cap_degrees if self.refiner else CAP_DEGREES
        self.views = self.bundle.views if views is None else views
        self.projections = projections
        self.progress = o.progress and sys.stderr.isatty()  # a bar only where someone watches
        self.params = self.bundle.preprocess
        self.qc_reference = self.bundle.qc
        t0 = time.perf_counter()
        self.engines = {v: open_engine(self.bundle, v, o.backend, o.precision, o.threads, counting=o.count_ops)
                        for v in self.views}
        self.compile_seconds = time.perf_counter() - t0 + (self.refiner.compile_seconds if self.refiner else 0.0)

    def load(self, case: CaseInput, affine: np.ndarray | None = None, case_id: str | None = None,
             scheme: str = "brats2021") -> Case:
        """Any :data:`CaseInput` as a checked :class:`Case`. ``case_id`` names the outputs (a
        folder's own id by default, else ``case``); ``scheme`` gives files and images that carry
        no BraTS names their label convention (``brats2021``: ET = 4; ``brats2023``: ET = 3)."""
        if isinstance(case, (str, Path)):
            if affine is not None:
                raise InputError(case, "affine= goes with arrays, not with a case folder")
            loaded = load_case(case, with_label=False)
            if case_id is not None:
                loaded.files = CaseFiles(check_case_id(case_id, Path(case)), loaded.files.folder, loaded.files.scheme,
                                         loaded.files.modalities, None)
            return loaded
        cid = case_id or "case"
        if isinstance(case, np.ndarray) or (isinstance(case, Mapping) and case
                                            and all(isinstance(v, np.ndarray) for v in case.values())):
            if affine is None:
                raise InputError(None, "arrays need affine= (the 4x4 voxel-to-world matrix, RAS mm)")
            return case_from_arrays(case if isinstance(case, np.ndarray) else dict(case), affine, cid, scheme)
        if affine is not None:
            raise InputError(None, "affine= goes with arrays, not with files or images")
        if isinstance(case, Mapping) and case and all(isinstance(v, (str, Path)) for v in case.values()):
            if set(case) != set(MODALITIES):
                raise InputError(None, f"expected one file per modality {list(MODALITIES)}, got {sorted(case)}")
            files = CaseFiles(check_case_id(cid, None), Path(case[MODALITIES[0]]).parent, scheme,
                              {m: Path(case[m]) for m in MODALITIES}, None)
            return load_files(files, with_label=False)
        if isinstance(case, Mapping):
            return case_from_images(dict(case), cid, scheme)
        raise InputError(None, f"cannot segment a {type(case).__name__}: give a case folder, four file paths, "
                               "four nibabel images, or arrays with affine=")

    def predict(self, case: CaseInput | Case, affine: np.ndarray | None = None, case_id: str | None = None,
                scheme: str = "brats2021") -> Prediction:
        """Segment one case (see :meth:`load` for what ``case`` may be); nothing is written."""
        reset_peak_rss()
        times: dict[str, float] = {}
        t_all = t = time.perf_counter()
        if not isinstance(case, Case):
            case = self.load(case, affine, case_id, scheme)
        # the native grid is read and its sha256 checked before any inference: a changed file is refused first
        native = NativeGrid.open(case.files.folder, case.prepared) if case.prepared is not None else None
        times["load"] = time.perf_counter() - t
        t = time.perf_counter()
        prepared = model_space(case, self.params)
        image, space = prepared.image, prepared.space
        times["preprocess"] = time.perf_counter() - t
        steps = guide_steps(self.bundle, self.views, image, self.projections)
        unit = "patch" if self.bundle.view(self.views[0]).window else "slice"
        with tqdm(total=steps, desc=f"{case.case_id} ({len(self.views)} {'views' if unit == 'slice' else 'model'})",
                  unit=unit, leave=False, disable=not self.progress) as bar:
            guide = run_guide(self.engines, self.bundle, self.views, image, self.projections, bar.update,
                              entropy=self.refiner is not None, cap_degrees=self.cap_degrees)
            operations = {v: view_operations(self.bundle.view(v), res) for v, res in guide.results.items()}
            times.update({f"view_{v}": res.seconds for v, res in guide.results.items()})
            refined = None
            if self.refiner is not None:
                refined = self._refine(case, guide, image, times, bar)
                operations["refiner"] = view_operations(self.refiner.view_spec, refined.result)
        t = time.perf_counter()
        prob, unc = guide.native(space, refined.prob if refined is not None else None)
        conv = case.files.convention
        labels = regions_to_labels(prob >= 0.5, conv)
        relabelled = 0
        if self.options.et_min_voxels:
            labels, relabelled = relabel_small_et(labels, conv, self.options.et_min_voxels)
        times["fuse"] = time.perf_counter() - t
        report = self._report(case, times, operations, labels, unc, relabelled, guide)
        qc = self.check(case, image, prob, unc, guide.agreement())
        report["qc"] = qc.to_dict()
        if refined is not None:
            report["refinement"] = self._refinement_report(refined, image)
        if native is not None:
            report["native"] = {"reference": str(case.files.folder / FOLDER / case.prepared.reference),
                                "outputs": "labels and uncertainty also on this grid (*.native.nii.gz)"}
        times["total"] = time.perf_counter() - t_all
        report["peak_rss_mb"] = peak_rss_mb()
        return Prediction(case, labels, prob, unc, report, qc, native)

    def run(self, case_dir: Path, out_root: Path) -> dict[str, Any]:
        """Segment one case folder into ``out_root/<case id>/`` (the cohort's step), replacing
        what is there: the caller decides whether that is allowed and holds the case's lock."""
        result = self.predict(Path(case_dir))
        result.save(out_root, self.options.png, self.options.save_prob)
        return result.report

    def check(self, case: Case, image: np.ndarray, prob: np.ndarray, unc: np.ndarray | None,
              agreement: float | None = None) -> QCResult:
        """The case's QC verdict against the bundle's reference (:mod:`spikeseg.runtime.qc`)."""
        if self.qc_reference is None:
            return unchecked("the bundle carries no QC reference (exported before spikeseg 0.3): re-export it")
        return self.qc_reference.verdict(measure_case(case.image, case.spacing, image, prob, unc, agreement))

    def _refine(self, case: Case, guide: GuideResult, image: np.ndarray, times: dict[str, float], bar) -> Refined:
        """The 3D model on the guide's most uncertain cubes; the case is normalised the 3D
        bundle's way when that differs from the guide's (same grid: checked on opening)."""
        ref = self.refiner
        assert ref is not None
        t = time.perf_counter()
        image3d = image if ref.params == self.params else model_space(case, ref.params).image
        times["preprocess_refiner"] = time.perf_counter() - t
        bar.set_postfix_str("refine")
        refined = refine_case(guide, ref.engine, ref.view_spec, image3d, ref.spec, self.params.spacing_mm,
                              advance=bar.update, plan=lambda n: setattr(bar, "total", bar.total + n))
        times["refine"] = refined.result.seconds
        return refined

    def _refinement_report(self, refined: Refined, image: np.ndarray) -> dict[str, Any]:
        ref = self.refiner
        assert ref is not None
        per_patch = float(ref.view_spec.dense_macs_per_slice)
        run, full = refined.result.slices, refined.full_steps
        return {"refiner_bundle": {"path": str(ref.bundle.root), "sha256": ref.bundle.checksum,
                                   "architecture": ref.bundle.architecture},
                "guide": {"mode": ref.spec.mode, "views": list(ref.spec.views), "projections": ref.spec.projections,
                          "projection_cap_degrees": ref.spec.cap_degrees if ref.spec.projections else None},
                **refined.cubes.summary(np.any(image != 0, axis=0)),
                "refiner_patches_run": run, "refiner_patches_everywhere": full,
                "refiner_dense_macs": per_patch * run, "refiner_dense_macs_everywhere": per_patch * full,
                "compute_saved": 1.0 - run / full if full else 0.0,
                "fusion": {r: vars(f) for r, f in ref.spec.fusion.items()}}

    def _report(self, case: Case, times, operations, labels, unc, relabelled, guide: GuideResult) -> dict[str, Any]:
        o = self.options
        conv = case.files.convention
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        regions = labels_to_regions(labels, conv)
        volumes = {r: float(regions[i].sum()) * voxel_ml for i, r in enumerate(REGIONS)}
        wt = regions[2]
        engine = next(iter(self.engines.values()))
        return {
            "case": case.case_id, "spikeseg_version": __version__,
            "bundle": {"path": str(self.bundle.root), "sha256": self.bundle.checksum,
                       "architecture": self.bundle.architecture},
            "backend": o.backend, "precision": o.precision,
            "compute_precision": engine.compute_precision, "threads": o.threads,
            "cpu": cpu_model(), "machine": machine(),
            "views": self.views,
            "uncertainty": (f"max over ET/TC/WT of the std across {guide.members} {guide.kind}" if unc is not None
                            else "not available: a single view gives no ensemble spread"),
            "mean_uncertainty_in_wt": float(unc[wt].mean()) if unc is not None and wt.any() else None,
            "volumes_ml": volumes, "label_convention": conv.name,
            "postprocessing": ({"et_min_voxels": o.et_min_voxels, "relabelled_voxels": relabelled}
                               if o.et_min_voxels else None),
            "seconds": times, "engine_compile_seconds": self.compile_seconds,
            "operations_counted": (
                "yes: synaptic operations, spikes and membrane updates counted in the graph (--count-ops)"
                if o.count_ops else "dense MACs only (static); --count-ops counts synaptic operations"),
            "operations": operations,
            "energy": energy_table(operations, self._specs(operations), o.precision, names="builtin"),
        }

    def _specs(self, operations: dict[str, Any]) -> dict[str, Any]:
        return {v: self.refiner.view_spec if v == "refiner" and self.refiner else self.bundle.view(v)
                for v in operations}


def segment(bundle: str | Path | Bundle, case: CaseInput, out: str | Path | None = None,
            overwrite: bool = False, **options: Any) -> Prediction:
    """One line from a notebook: segment one case with a bundle; with ``out``, also write
    ``out/<case>/`` as ``spikeseg segment`` does (refused where it exists, unless ``overwrite``).
    ``options``: any :class:`SegmentOptions` field (``precision="int8"``, ``png=True``, ...);
    ``affine``, ``case_id`` and ``scheme`` go to :meth:`Predictor.predict`."""
    load_args = {k: options.pop(k) for k in ("affine", "case_id", "scheme") if k in options}
    opts = SegmentOptions(**options)
    predictor = Predictor(bundle, opts)
    t = time.perf_counter()
    loaded = predictor.load(case, **load_args)  # first, so the output's name is known before any inference
    load_seconds = time.perf_counter() - t
    if out is not None:  # refused before any inference: outputs never touch inputs, never replaced unasked
        from spikeseg.runtime.outputs import check_apart
        dest = Path(out) / loaded.case_id
        check_apart(dest, [Path(case)] if isinstance(case, (str, Path)) else
                    [Path(p) for p in case.values() if isinstance(p, (str, Path))] if isinstance(case, Mapping) else [])
        if dest.exists() and not overwrite:
            raise InputError(dest, "output exists; pass overwrite=True to replace it")
    result = predictor.predict(loaded)
    seconds = result.report["seconds"]
    seconds["total"] += load_seconds - seconds["load"]
    seconds["load"] = load_seconds
    if out is not None:
        result.save(out, opts.png, opts.save_prob)
    return result
