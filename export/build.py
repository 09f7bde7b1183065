"""``spikeseg export``: trained runs -> a checksummed deployment bundle.

For each view model (or the one volume model of a 3D architecture): ONNX FP32 step (or patch)
graph, OpenVINO IR FP32, and with ``--int8`` an NNCF INT8 IR and an ONNX Runtime QDQ INT8
graph, calibrated on real slices (or patches) of ``--calib`` cases. INT8 is
then compared with FP32 on held-out cases (the runs' validation cases when their data folder
is reachable, else the calibration cases, and the manifest says which). When the WT Dice
drop passes the budget, the first conv and the readout are kept in float and quantisation is
retried; a bundle still over budget is refused unless ``--allow-accuracy-drop``.

The bundle is assembled in a temporary folder beside ``--out`` and renamed into place at the
end: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.atomic import atomic_dir
from spikeseg.runtime.bundle import ModelFile, is_bundle, load_bundle
from spikeseg.runtime.bundle_spec import ModelEntry, ViewSpec, WindowSpec
from spikeseg.runtime.manifest import Manifest
from spikeseg.runtime.case_io import find_case, find_cases
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.inference import OrtEngine, OvEngine, run_view
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.metrics import region_dice
from spikeseg.runtime.opcount import static_counts
from spikeseg.runtime.outputs import check_apart, check_replaceable
from spikeseg.runtime.preprocess import VIEWS, PreprocessParams, load_model_space
from spikeseg.runtime.projections import CAP_DEGREES
from spikeseg.runtime.qc import QCReference
from spikeseg.runtime.refine import MAX_KERNELS, STOP_SHARE
from spikeseg.runtime.guide import check_guide
from spikeseg.export.fusion_fit import DEFAULT_PROJECTIONS, fit_refinement, parse_guide
from spikeseg.export.graphs import export_onnx, export_volume_onnx, onnx_to_openvino
from spikeseg.export.qc_fit import fit_bundle_qc
from spikeseg.training.config import VOLUME_ARCHS
from spikeseg.training.run_folder import RunFolder, TrainedRun, load_run
from spikeseg.export.quantize import calibration_feeds, quantize_onnxruntime, quantize_openvino

#: the mirrored copies a volume model's bundle runs (test-time augmentation): as it is, and
#: mirrored along each axis; 4 copies give its uncertainty map 4 samples, as 3 views do the SNN's
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))


def _load_model_space(case_dirs: list[Path], params: PreprocessParams) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    out = []
    for d in case_dirs:
        prepared = load_model_space(d, params, label="optional")
        out.append((prepared.case.case_id, prepared.image, prepared.regions))
    return out


def _holdout_dirs(run: TrainedRun) -> list[Path]:
    data = Path(run.settings.data)
    if not data.is_dir():
        return []
    ids = set(RunFolder(run.path).splits().get("validation", []))
    return [d for d in find_cases(data) if d.name in ids]


def _dice_table(engine, spec: ViewSpec, holdout, view: str) -> dict[str, float]:
    scores = {r: [] for r in REGIONS}
    for _, image, target in holdout:
        for r, d in region_dice(run_view(engine, spec, image, view).prob, target).items():
            scores[r].append(d)
    return {r: float(np.mean(v)) for r, v in scores.items()}


def _quantise_view(tmp: Path, view: str, spec: ViewSpec, feeds, holdout, budget: float, allow_drop: bool,
                   threads: int, float_modules: list[str], log) -> tuple[list[ModelEntry], dict[str, Any]]:
    """INT8 for both backends, with the accuracy check and one retry; returns model entries."""
    entries, report = [], {}
    backends = [("openvino", f"{view}_fp32.xml", f"{view}_int8.xml", quantize_openvino, OvEngine),
                ("onnxruntime", f"{view}_fp32.onnx", f"{view}_int8.onnx", quantize_onnxruntime, OrtEngine)]
    for backend, fp32_name, int8_name, quantise, engine_cls in backends:
        if holdout is None:  # a speed benchmark's bundle from untrained weights: nothing to check
            how = quantise(tmp / fp32_name, tmp / int8_name, feeds, None)
            report[backend] = {"quantisation": how, "accuracy": "not checked"}
            entries.append(ModelFile.local(tmp / int8_name, "int8").entry)
            continue
        base = _dice_table(engine_cls(ModelFile.local(tmp / fp32_name), "fp32", threads), spec, holdout, view)
        attempts = []
        for ignored in (None, float_modules):
            how = quantise(tmp / fp32_name, tmp / int8_name, feeds, ignored)
            q = _dice_table(engine_cls(ModelFile.local(tmp / int8_name, "int8"), "int8", threads), spec, holdout, view)
            change = {r: q[r] - base[r] for r in REGIONS}
            attempts.append({"quantisation": how, "dice_fp32": base, "dice_int8": q, "dice_change": change})
            log(f"  {view} {backend} INT8 Dice change ET/TC/WT "
                + "/".join(f"{100 * change[r]:+.2f}" for r in REGIONS) + " points"
                + (" (first conv and readout kept float)" if ignored else ""))
            if -change["WT"] <= budget:
                break
        final = attempts[-1]
        final["within_budget"] = -final["dice_change"]["WT"] <= budget
        if not final["within_budget"] and not allow_drop:
            raise InputError(None, f"{view} {backend} INT8 loses {-100 * final['dice_change']['WT']:.2f} WT Dice "
                                   f"points, over the {100 * budget:.2f}-point budget even with the first conv and "
                                   f"readout in float; pass --allow-accuracy-drop to write it anyway")
        report[backend] = {"attempts": attempts, **final}
        entries.append(ModelFile.local(tmp / int8_name, "int8").entry)
    return entries, report


def _cases_in(folder: Path) -> list[Path]:
    """The case folders under ``folder``; none where it is gone or holds none."""
    try:
        return find_cases(folder)
    except InputError:
        return []


def _fit_qc(run: TrainedRun, params: PreprocessParams, specs: dict[str, ViewSpec], tmp: Path,
            calib: Path | None, qc_dirs: list[Path], threads: int, log) -> QCReference | None:
    """The QC reference (:mod:`spikeseg.export.qc_fit`) from the runs' data, or the calibration
    cases when the data has moved; its output limits from ``qc_dirs`` (labelled cases held out
    from training) or else the runs' validation split. None (the runtime then says ``unchecked``)
    when there are no reference cases."""
    case_dirs, source = _cases_in(Path(run.settings.data)), f"the runs' data {run.settings.data}"
    if not case_dirs and calib is not None:
        case_dirs, source = _cases_in(Path(calib)), f"calibration cases {calib}"
    if not case_dirs:
        log("QC reference: no reference cases (the runs' data has moved and no --calib): segment will say unchecked")
        return None
    validation = qc_dirs or _holdout_dirs(run) or case_dirs[-2:]
    engines = {v: OrtEngine(ModelFile.local(tmp / f"{v}_fp32.onnx"), "fp32", threads) for v in specs}
    return fit_bundle_qc(case_dirs, validation, params, engines, specs, source, log)


def build_bundle(runs: list[Path], out: Path, int8: bool = False, calib: Path | None = None,
                 overwrite: bool = False, allow_accuracy_drop: bool = False, budget: float = 0.01,
                 threads: int = 2, calib_items: int = 300, check_accuracy: bool = True, log=print,
                 refine_guides: list[str] | None = None, projections: int = DEFAULT_PROJECTIONS,
                 refine_stop: float = STOP_SHARE, refine_max_kernels: int = MAX_KERNELS,
                 projection_cap: float = CAP_DEGREES, seed: int = 0, both_ways: bool = True,
                 qc_cases: Path | None = None) -> Path:
    """``check_accuracy=False`` (speed benchmarks on untrained weights only, not the CLI): INT8
    without the comparison against FP32; the manifest says it was not checked.
    ``refine_guides``: for a volume model, guide bundles (``BUNDLE[:views|:projections]``) to fit
    the uncertainty-guided refinement's fusion for (:mod:`spikeseg.export.fusion_fit`), stored in
    the manifest's "refinement" list. ``both_ways``: a stateful model runs its slices back to front
    too, the two passes averaged (:func:`spikeseg.export.graphs.execution_for`). ``qc_cases``:
    labelled cases held out from training that the QC limits on the model's outputs are fitted on
    (:mod:`spikeseg.export.qc_fit`; default the runs' validation split)."""
    out = Path(out)
    check_apart(out, [Path(r) for r in runs] + [Path(p) for p in (calib, qc_cases) if p is not None]
                + [parse_guide(g)[0] for g in refine_guides or []])
    check_replaceable(out, overwrite, is_bundle, "bundle")
    if int8 and calib is None:
        raise InputError(None, "--int8 needs --calib CASES_DIR (real slices to calibrate on)")
    loaded = [load_run(r) for r in runs]
    for _, run, _ in loaded:
        if run.settings.slices.state_reset:  # the step graph carries the state from slice to slice
            raise InputError(run.path, "was trained with --state-reset (membrane zeroed every slice, "
                                                    "an ablation); a bundle carries the state between slices, so "
                                                    "it would run differently than it was trained: not exported")
    archs = {run.settings.arch for _, run, _ in loaded}
    pres = {json.dumps(p.to_dict(), sort_keys=True) for _, _, p in loaded}
    views = [run.settings.view for _, run, _ in loaded]
    if len(archs) != 1:
        raise InputError(None, f"runs mix architectures {sorted(archs)}: one bundle holds one architecture")
    if len(pres) != 1:
        raise InputError(None, "runs were preprocessed differently: one bundle has one preprocessing record")
    if len(set(views)) != len(views):
        raise InputError(None, f"two runs for the same view: {views}")
    params = loaded[0][2]
    guides = [parse_guide(g) for g in refine_guides or []]
    if guides and (loaded[0][1].settings.arch not in VOLUME_ARCHS or len(loaded) != 1):
        raise InputError(None, "--refine-guide fits a 3D refiner: export one volume model (e.g. unet3d-lite) with it")
    guides = [(load_bundle(path), mode) for path, mode in guides]  # read and verified once
    for guide, _ in guides:  # refused now, before anything is exported: not on this grid
        check_guide(guide, params, guide.root)
    if projections < 1:
        raise InputError(None, f"--projections {projections}: at least 1")
    qc_dirs = find_cases(qc_cases) if qc_cases is not None else []
    for d in qc_dirs:  # refused now, not after every view is exported
        if find_case(d).seg is None:
            raise InputError(d, "--qc-cases needs labelled cases (<id>_seg): the QC limits are fitted on the "
                                "cases the model segments well")
    calib_images = _load_model_space(find_cases(calib), params) if int8 else []
    holdout_cache: dict[tuple[Path, ...], list] = {}
    with atomic_dir(out) as tmp:
        specs: dict[str, ViewSpec] = {}
        for model, run, _ in sorted(loaded, key=lambda m: list(VIEWS).index(m[1].settings.view)
                                    if m[1].settings.view in VIEWS
                                     else len(VIEWS)):
            cfg = run.settings
            view = cfg.view
            if cfg.arch in VOLUME_ARCHS:
                window = WindowSpec((cfg.volume.patch,) * 3, flips=TTA_FLIPS)
                log(f"exporting the {view} model ({cfg.arch}, {cfg.volume.patch}^3 patches by sliding window, "
                    f"{len(window.flips)} mirrored copies)")
                spec = export_volume_onnx(model, window, params.model_shape, tmp / f"{view}_fp32.onnx")
            else:
                h, w = params.slice_shape(view)
                log(f"exporting {view} ({cfg.arch}, {h}x{w} slices"
                    f"{', both ways' if both_ways and model.stateful else ''})")
                spec = export_onnx(model, h, w, tmp / f"{view}_fp32.onnx", params.model_shape[VIEWS[view]], both_ways)
            onnx_to_openvino(tmp / f"{view}_fp32.onnx", tmp / f"{view}_fp32.xml")
            models = [ModelFile.local(tmp / f"{view}_fp32.onnx").entry, ModelFile.local(tmp / f"{view}_fp32.xml").entry]
            quant = None
            if int8:
                holdout, holdout_dirs = None, []
                if check_accuracy:
                    holdout_dirs = _holdout_dirs(run)
                    key = tuple(holdout_dirs)
                    if key not in holdout_cache:  # the views of one fold share their validation cases
                        loaded_cases = _load_model_space(holdout_dirs, params) if holdout_dirs else calib_images
                        holdout_cache[key] = [c for c in loaded_cases if c[2] is not None]
                    holdout = holdout_cache[key]
                    if not holdout:
                        raise InputError(calib, "no labelled cases to check INT8 accuracy against")
                fp32_engine = OrtEngine(ModelFile.local(tmp / f"{view}_fp32.onnx"), "fp32", threads)
                feeds = calibration_feeds(fp32_engine, spec, [img for _, img, _ in calib_images], view,
                                          max_items=calib_items)
                if not feeds:
                    raise InputError(calib, "the calibration cases hold no brain: every slice is background "
                                            "after normalisation (constant images?)")
                float_modules = [spec.layers[0].module, spec.layers[-1].module]  # the first conv, the readout
                entries, quant = _quantise_view(tmp, view, spec, feeds, holdout, budget, allow_accuracy_drop,
                                                threads, float_modules, log)
                models += entries
                quant["holdout"] = ({"source": "run validation split" if holdout_dirs else "calibration cases",
                                     "cases": [c for c, _, _ in holdout]} if holdout is not None else None)
                quant["calibration_cases"] = [c for c, _, _ in calib_images]
            static = static_counts(tmp / f"{view}_fp32.onnx")
            spec = spec.with_models(
                models, quantisation=quant,
                static_ops={"macs_per_slice": static["macs_per_slice"], "conv_params": static["conv_params"],
                            "source": "OpenVINO graph of the FP32 ONNX model"},
                training={"run": str(run.path), "trainer": cfg.trainer, "fold": cfg.fold, "folds": cfg.folds,
                          "epochs": cfg.epochs, "best": run.best, "seed": cfg.seed,
                          "data_fingerprint": run.record.data_fingerprint, "preset": cfg.preset})
            specs[view] = spec
        # a speed benchmark's bundle of untrained weights has no data worth a reference
        qc = _fit_qc(loaded[0][1], params, specs, tmp, calib, qc_dirs, threads, log) if check_accuracy else None
        refinement = []
        if guides:
            fit_dirs = [d for d in _holdout_dirs(loaded[0][1])]
            source = "3D run's validation split"
            if len(fit_dirs) < 2:
                fit_dirs, source = (find_cases(calib) if calib else []), "calibration cases"
            if not fit_dirs:
                raise InputError(None, "--refine-guide needs labelled cases: the 3D run's validation data, or --calib")
            engine3d = OvEngine(ModelFile.local(tmp / f"{view}_fp32.xml"), "fp32", threads)
            for guide, mode in guides:
                refinement.append(fit_refinement(guide, mode, projections, engine3d, spec, params, fit_dirs, source,
                                                 threads, seed, log, refine_stop, refine_max_kernels,
                                                 projection_cap))
        first = loaded[0][1]
        Manifest(architecture=first.settings.arch, views=specs, preprocess=params, model_config=first.record.model_config,
                 qc=qc, refinement=tuple(refinement)).write(tmp)
    return out
