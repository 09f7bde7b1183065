"""The QC reference a bundle carries (:class:`spikeseg.runtime.qc.QCReference`), fitted at export
from the cases the runs were trained and validated on: what the data looked like, and the limits
beyond which a case is flagged ``review``.

The limits on the images are the reference cases' own range widened by the margins below: with a
dozen cases the extremes are a thin estimate of what is normal, and a false ``review`` costs a
clinician a look, where a missed one costs a wrong answer that looks right.

The limits on the model's outputs (uncertainty, member agreement, ET outside TC) are fitted on
labelled cases held out from training, and only on those the bundle segments well (WT Dice at
least :data:`~spikeseg.runtime.evaluate.FAILURE_WT_DICE`): they describe what a good result
looks like, so a held-out case the model already fails on does not widen them (all held-out cases
are used, and the log says so, when none is good). ``benchmarks/robustness.py`` measures how well
the verdict then finds failures; the margins were fixed before that measurement, not tuned on it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.case_io import MODALITIES
from spikeseg.runtime.evaluate import FAILURE_WT_DICE
from spikeseg.runtime.guide import run_guide
from spikeseg.runtime.inference import Engine
from spikeseg.runtime.labels import labels_to_regions
from spikeseg.runtime.metrics import dice
from spikeseg.runtime.preprocess import PreprocessParams, load_model_space
from spikeseg.runtime.qc import (PAIRS, SAME_IMAGE_CORRELATION, CaseMeasures, Limit, QCReference, intensity_distance,
                                 measure_case)

#: a case's intensity distance may be this many times the largest among the reference cases
INTENSITY_MARGIN = 1.5
#: ... and at least this (normalised units: a distribution shifted by 3 % of the range)
INTENSITY_FLOOR = 0.03
#: a pair of modalities may correlate this much below the lowest or above the highest reference
#: case (Pearson r inside the brain; the wide phantom family spans about 0.5 per pair)
CORRELATION_MARGIN = 0.2
#: the brain volume may lie this far below the smallest and above the largest reference brain
BRAIN_RANGE = (0.75, 1.25)
#: the outer shell's non-background share may exceed the largest reference share by this much
SHELL_MARGIN = 0.02
#: the predicted whole tumour may be from this share of the smallest reference tumour to this
#: multiple of the largest
WT_RANGE = (0.25, 1.5)
#: the mean uncertainty inside the tumour may be this multiple of the good held-out cases' largest
UNCERTAINTY_MARGIN = 1.1
#: the members' whole-tumour agreement (Dice) may lie this far below the good held-out cases' lowest
AGREEMENT_MARGIN = 0.05
#: ET outside TC may exceed the good held-out cases' largest share by this much
ET_OUTSIDE_MARGIN = 0.05
#: reference cases measured at most (evenly spread over the sorted cases): BraTS's 1,251 would
#: make every export read the whole data set
MAX_REFERENCE_CASES = 40


class _Specs:
    """The view specs of a bundle being written, where the runtime asks a bundle for them."""

    def __init__(self, specs: dict[str, ViewSpec]) -> None:
        self.specs = specs

    def view(self, view: str) -> ViewSpec:
        return self.specs[view]


def fit_reference(images: list[CaseMeasures], label_wt_ml: list[float], predicted: list[CaseMeasures],
                  source: str) -> QCReference:
    """Limits from the reference cases: ``images`` measured without predictions (every case),
    ``label_wt_ml`` their reference tumours, ``predicted`` the held-out cases measured with the
    bundle's own predictions (uncertainty, member agreement, ET outside TC): the ones it segments
    well (:func:`good_predictions`)."""
    reference = {m: tuple(float(v) for v in np.mean([c.intensity_quantiles[m] for c in images], axis=0))
                 for m in MODALITIES}
    distance = {m: Limit(None, max(INTENSITY_FLOOR, INTENSITY_MARGIN * max(
        intensity_distance(c.intensity_quantiles[m], list(reference[m])) for c in images))) for m in MODALITIES}
    brains = [c.brain_ml for c in images]
    uncertainties = [c.mean_uncertainty_in_wt for c in predicted if c.mean_uncertainty_in_wt is not None]
    agreements = [c.member_agreement for c in predicted if c.member_agreement is not None]
    outside = [c.et_outside_tc for c in predicted if c.et_outside_tc is not None]
    tumours = [v for v in label_wt_ml if v > 0]
    correlation = {}
    for pair in PAIRS:
        rs = [r for c in images if not math.isnan(r := c.modality_correlation.get(pair, math.nan))]
        correlation[pair] = (Limit(max(-1.0, min(rs) - CORRELATION_MARGIN),
                                   min(SAME_IMAGE_CORRELATION, max(rs) + CORRELATION_MARGIN))
                             if rs else Limit(None, SAME_IMAGE_CORRELATION))
    return QCReference(
        source=source, cases=len(images), intensity_reference=reference, intensity_distance=distance,
        brain_ml=Limit(BRAIN_RANGE[0] * min(brains), BRAIN_RANGE[1] * max(brains)),
        shell_share=Limit(None, max(c.shell_share for c in images) + SHELL_MARGIN),
        wt_ml=Limit(WT_RANGE[0] * min(tumours), WT_RANGE[1] * max(tumours)) if tumours else Limit(),
        mean_uncertainty_in_wt=Limit(None, UNCERTAINTY_MARGIN * max(uncertainties)) if uncertainties else Limit(),
        et_outside_tc=Limit(None, min(1.0, max(outside) + ET_OUTSIDE_MARGIN)) if outside else Limit(),
        modality_correlation=correlation,
        member_agreement=Limit(max(0.0, min(agreements) - AGREEMENT_MARGIN), None) if agreements else Limit())


def good_predictions(predicted: list[CaseMeasures], wt_dice: list[float],
                     log: Callable[[str], object] = print) -> list[CaseMeasures]:
    """The held-out cases segmented well (WT Dice >= FAILURE_WT_DICE; NaN, no tumour in either
    mask or no label, counts as good); all of them, said in the log, when none is."""
    good = [c for c, d in zip(predicted, wt_dice) if math.isnan(d) or d >= FAILURE_WT_DICE]
    if not good and predicted:
        log(f"QC reference: no held-out case reaches WT Dice {FAILURE_WT_DICE}; the output limits are fitted on "
            f"all {len(predicted)}, failures included")
        return predicted
    return good


def fit_bundle_qc(case_dirs: list[Path], validation_dirs: list[Path], params: PreprocessParams,
                  engines: dict[str, Engine], specs: dict[str, ViewSpec], source: str,
                  log: Callable[[str], object] = print) -> QCReference | None:
    """Measure the reference cases and the held-out (labelled) cases' predictions by the bundle's
    FP32 models (run as the runtime runs them); None when there are no reference cases."""
    images, label_wt = [], []
    step = max(1, -(-len(case_dirs) // MAX_REFERENCE_CASES))
    for d in case_dirs[::step]:
        prepared = load_model_space(d, params, label="optional")
        case = prepared.case
        images.append(measure_case(case.image, case.spacing, prepared.image))
        if case.label is not None:
            wt = labels_to_regions(case.label, case.files.convention)[2]
            label_wt.append(float(wt.sum()) * float(np.prod(case.spacing)) / 1000.0)
    if not images:
        return None
    views = list(specs)
    predicted, wt_dice = [], []
    for d in validation_dirs:
        prepared = load_model_space(d, params, label="optional")
        guide = run_guide(engines, _Specs(specs), views, prepared.image)  # type: ignore[arg-type]
        prob, unc = guide.native(prepared.space)
        case = prepared.case
        predicted.append(measure_case(case.image, case.spacing, prepared.image, prob, unc, guide.agreement()))
        wt_dice.append(math.nan if case.label is None  # unlabelled calibration cases: taken as good, as before
                       else dice(prob[2] >= 0.5, labels_to_regions(case.label, case.files.convention)[2]))
    good = good_predictions(predicted, wt_dice, log)
    qc = fit_reference(images, label_wt, good, source)
    log(f"QC reference: {len(images)} cases ({source}); output limits from {len(good)} of {len(predicted)} held-out "
        f"cases (WT Dice >= {FAILURE_WT_DICE}); brain {qc.brain_ml.text(' mL')}, whole tumour {qc.wt_ml.text(' mL')}, "
        f"uncertainty in WT {qc.mean_uncertainty_in_wt.text()}, member agreement {qc.member_agreement.text()}")
    return qc
