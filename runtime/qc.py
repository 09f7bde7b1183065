"""A QC verdict for every segmented case: ``ok``, or ``review`` with the reasons, or
``unchecked`` for a bundle that carries no reference. Numpy only, every bundle kind.

Why: a model trained on one simulator's phantoms lost tumour core and enhancing tumour almost
entirely on another's, and a scan that was not skull-stripped got edema painted along the skull,
and every one of those cases said ``ok``. A wrong answer must not look like a right one.

How: at export the bundle records what its data looked like (:class:`QCReference`, in the
manifest's ``"qc"``): per modality the normalised intensities inside the brain (quantiles), the
brain volume, the share of the volume's outer shell that is not background, the correlation of
every pair of modalities inside the brain (a file holding another modality's image), the reference
tumour volumes, and on the runs' validation cases the ensemble's uncertainty inside the predicted
whole tumour, the share of enhancing tumour predicted outside the tumour core, and how well the
ensemble's members agree on the whole tumour. The limits
are set from those cases (with the margins in :mod:`spikeseg.export.qc_fit`), never hard-coded
here. At run time :func:`measure_case` measures the same on the case and
:meth:`QCReference.verdict` names every measure outside its limit.

Min-max normalisation makes intensities scaled by x0.01 or x100 identical to the model, so
they pass; a FLAIR file holding a T1 image does not.

Version 2 added the modality correlations, version 3 the members' agreement (Roy et al.,
NeuroImage 2019, "Bayesian QuickNAT": the Dice overlap among an ensemble's samples tracks the
segmentation's true Dice); older records are still read and the checks they lack are skipped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.case_io import MODALITIES
from spikeseg.runtime.errors import InputError

QC_VERSION = 3
#: the versions this spikeseg reads (version 1 has no modality correlations, 1-2 no member agreement)
QC_READS = (1, 2, 3)
#: the quantiles of the normalised brain intensities compared per modality
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: two files of one case correlating above this inside the brain hold the same image
SAME_IMAGE_CORRELATION = 0.99
#: the outer shell whose non-background share is measured, in mm (skull-stripped scans are 0 there)
SHELL_MM = 6.0
VERDICTS = ("ok", "review", "unchecked")
#: every pair of modalities, named ``a-b`` (no modality name holds a hyphen)
PAIRS = tuple(f"{a}-{b}" for a, b in itertools.combinations(MODALITIES, 2))


@dataclass(frozen=True)
class CaseMeasures:
    """What QC looks at in one case (``None`` where a case gives no value, e.g. one view: no
    ensemble uncertainty)."""

    intensity_quantiles: dict[str, list[float]]
    brain_ml: float
    shell_share: float
    modality_correlation: dict[str, float] = field(default_factory=dict)
    wt_ml: float | None = None
    mean_uncertainty_in_wt: float | None = None
    et_outside_tc: float | None = None
    member_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it: NaN (no value) becomes null."""
        return _nan_to_none(asdict(self))


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any modality is not background (BraTS cases are skull-stripped: 0 outside)."""
    return np.any(image != 0, axis=0)


def shell(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """The volume's outer shell, :data:`SHELL_MM` thick along each axis."""
    inner = np.zeros(shape, bool)
    cut = tuple(slice(max(1, round(SHELL_MM / s)), n - max(1, round(SHELL_MM / s))) for n, s in zip(shape, spacing))
    inner[cut] = True
    return ~inner


def intensity_quantiles(model_image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, list[float]]:
    """Per modality, :data:`QUANTILES` of the normalised model-grid intensities inside the brain
    (NaN when there is no brain)."""
    mask = brain_mask(model_image) if mask is None else mask
    out = {}
    for m, channel in zip(MODALITIES, model_image):
        vals = channel[mask]
        out[m] = [float(q) for q in np.quantile(vals, QUANTILES)] if vals.size else [math.nan] * len(QUANTILES)
    return out


def modality_correlation(model_image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Pearson correlation of every pair of modalities (:data:`PAIRS`) over the brain's voxels on
    the model grid: two files holding the same image correlate at 1, whatever their scaling.
    NaN where a modality is constant or there is no brain."""
    mask = brain_mask(model_image) if mask is None else mask
    vals = model_image[:, mask].astype(np.float64)
    vals -= vals.mean(axis=1, keepdims=True) if vals.shape[1] else 0.0
    out = {}
    for pair, (i, j) in zip(PAIRS, itertools.combinations(range(len(MODALITIES)), 2)):
        den = math.sqrt(float(vals[i] @ vals[i]) * float(vals[j] @ vals[j]))
        out[pair] = float(vals[i] @ vals[j]) / den if den > 0 else math.nan
    return out


def member_agreement(member_probs: list[np.ndarray]) -> float | None:
    """Mean Dice between every two members' whole tumours (WT probability >= 0.5), each a
    (3, X, Y, Z) ET/TC/WT map on one grid; two members that both find no tumour agree (1.0).
    None with fewer than two members."""
    masks = [p[2] >= 0.5 for p in member_probs]
    if len(masks) < 2:
        return None
    scores = []
    for a, b in itertools.combinations(masks, 2):
        total = int(a.sum()) + int(b.sum())
        scores.append(2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0)
    return float(np.mean(scores))


def measure_case(image: np.ndarray, spacing: tuple[float, ...], model_image: np.ndarray,
                 prob: np.ndarray | None = None, uncertainty: np.ndarray | None = None,
                 agreement: float | None = None) -> CaseMeasures:
    """``image``: the native (4, X, Y, Z) RAS image; ``model_image``: the same case on the model
    grid, normalised; ``prob``: the fused (3, X, Y, Z) ET/TC/WT probabilities on the native grid;
    ``uncertainty``: the native uncertainty map (None with one ensemble member); ``agreement``:
    :func:`member_agreement` of the ensemble's members (None where the members are not kept)."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    brain = brain_mask(image)
    edge = shell(brain.shape, spacing)
    model_brain = brain_mask(model_image)  # one mask for both measures on the model grid
    measures: dict[str, Any] = {"intensity_quantiles": intensity_quantiles(model_image, model_brain),
                                "modality_correlation": modality_correlation(model_image, model_brain),
                                "brain_ml": float(brain.sum()) * voxel_ml,
                                "shell_share": float(brain[edge].mean()) if edge.any() else 0.0}
    if prob is not None:
        et, tc, wt = prob[0] >= 0.5, prob[1] >= 0.5, prob[2] >= 0.5
        measures["wt_ml"] = float(wt.sum()) * voxel_ml
        measures["et_outside_tc"] = float((et & ~tc).sum() / et.sum()) if et.any() else 0.0
        if uncertainty is not None and wt.any():
            measures["mean_uncertainty_in_wt"] = float(uncertainty[wt].mean())
        measures["member_agreement"] = agreement
    return CaseMeasures(**measures)


def intensity_distance(a: list[float], b: list[float]) -> float:
    """Mean absolute difference of two quantile lists: the 1-Wasserstein distance between the two
    distributions, sampled at :data:`QUANTILES`."""
    return float(np.mean(np.abs(np.asarray(a) - np.asarray(b))))


@dataclass(frozen=True)
class Limit:
    """An accepted range; ``None`` is open on that side."""

    low: float | None = None
    high: float | None = None

    def outside(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)

    @staticmethod
    def json_schema() -> dict[str, Any]:
        from spikeseg.runtime import schema as js

        return js.obj({"low": js.number(nullable=True), "high": js.number(nullable=True)}, extra=False)

    def text(self, unit: str = "") -> str:
        lo = "-" if self.low is None else f"{self.low:.3g}"
        hi = "-" if self.high is None else f"{self.high:.3g}"
        return f"{lo} to {hi}{unit}"


@dataclass(frozen=True)
class QCResult:
    verdict: str                  # ok | review | unchecked
    reasons: tuple[str, ...] = ()
    measures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """What the console shows: never a bare ``ok`` for a case that needs review."""
        return f"QC {self.verdict.upper()}" + (f": {'; '.join(self.reasons)}" if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "measures": self.measures}


def unchecked(why: str) -> QCResult:
    return QCResult("unchecked", (why,))


@dataclass(frozen=True)
class QCReference:
    """What the bundle's data looked like and the limits set from it: the ``"qc"`` record of a
    bundle's manifest, written at export and read back here (its one owner)."""

    source: str
    cases: int
    intensity_reference: dict[str, tuple[float, ...]]
    intensity_distance: dict[str, Limit]
    brain_ml: Limit
    shell_share: Limit
    wt_ml: Limit
    mean_uncertainty_in_wt: Limit
    et_outside_tc: Limit
    #: per pair of modalities; empty for a version-1 record (the check is skipped)
    modality_correlation: dict[str, Limit] = field(default_factory=dict)
    #: open (the check skipped) for a record older than version 3
    member_agreement: Limit = Limit()
    version: int = QC_VERSION

    def verdict(self, m: CaseMeasures) -> QCResult:
        """``review`` with one reason per measure outside its limit, else ``ok``."""
        reasons = []
        for mod in MODALITIES:
            q = m.intensity_quantiles.get(mod, [])
            if not q or any(math.isnan(v) for v in q):
                reasons.append(f"{mod}: no brain voxels")
                continue
            d = intensity_distance(q, list(self.intensity_reference[mod]))
            if self.intensity_distance[mod].outside(d):
                reasons.append(f"{mod} intensities unlike the training data's (distance {d:.3f}, accepted "
                               f"{self.intensity_distance[mod].text()}): another contrast or protocol?")
        for pair, limit in self.modality_correlation.items():
            r = m.modality_correlation.get(pair, math.nan)
            if not math.isnan(r) and limit.outside(r):
                a, b = pair.split("-")
                reasons.append(f"{a} and {b} correlate at {r:.2f} inside the brain (accepted {limit.text()})"
                               + (": the same image in two files?" if r > SAME_IMAGE_CORRELATION
                                  else ": a file holding another modality, or another protocol?"))
        if self.brain_ml.outside(m.brain_ml):
            reasons.append(f"brain volume {m.brain_ml:.0f} mL outside {self.brain_ml.text(' mL')}"
                           + (": not skull-stripped, or background noise?" if m.brain_ml > (self.brain_ml.high or 0)
                              else ": empty or cut-off brain?"))
        if self.shell_share.outside(m.shell_share):
            reasons.append(f"{100 * m.shell_share:.0f} % of the volume's outer shell is not background (accepted "
                           f"up to {100 * (self.shell_share.high or 0):.0f} %): not skull-stripped, or background noise?")
        if m.wt_ml is not None and self.wt_ml.outside(m.wt_ml):
            reasons.append(f"whole tumour {m.wt_ml:.1f} mL outside {self.wt_ml.text(' mL')} (the reference cases' range)")
        if m.mean_uncertainty_in_wt is not None and self.mean_uncertainty_in_wt.outside(m.mean_uncertainty_in_wt):
            reasons.append(f"uncertainty inside the tumour {m.mean_uncertainty_in_wt:.3f} above the well-segmented "
                           f"held-out cases' {self.mean_uncertainty_in_wt.text()}: the models disagree")
        if m.member_agreement is not None and self.member_agreement.outside(m.member_agreement):
            reasons.append(f"the ensemble's members agree on the whole tumour at Dice {m.member_agreement:.2f} "
                           f"(accepted {self.member_agreement.text()}): the models disagree")
        if m.et_outside_tc is not None and self.et_outside_tc.outside(m.et_outside_tc):
            reasons.append(f"{100 * m.et_outside_tc:.0f} % of the enhancing tumour lies outside the tumour core "
                           f"(accepted up to {100 * (self.et_outside_tc.high or 0):.0f} %)")
        return QCResult("review" if reasons else "ok", tuple(reasons), m.to_dict())

    @staticmethod
    def json_schema() -> dict[str, Any]:
        from spikeseg.runtime import schema as js

        limit = Limit.json_schema()
        return js.obj({"source": js.string(), "cases": js.integer(0),
                       "intensity_reference": js.mapping(js.array(js.number(nullable=True)), keys=MODALITIES),
                       "intensity_distance": js.mapping(limit, keys=MODALITIES), "brain_ml": limit,
                       "shell_share": limit, "wt_ml": limit, "mean_uncertainty_in_wt": limit, "et_outside_tc": limit,
                       "modality_correlation": js.mapping(limit, keys=PAIRS), "member_agreement": limit,
                       "version": js.integer(1), "quantiles": js.array(js.number())},
                      required=("intensity_reference", "intensity_distance", "brain_ml", "shell_share", "wt_ml",
                                "mean_uncertainty_in_wt", "et_outside_tc"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["intensity_reference"] = {k: list(v) for k, v in self.intensity_reference.items()}
        if self.version < 3:  # a migrated record is written back as it was read
            d.pop("member_agreement")
        if self.version == 1:
            d.pop("modality_correlation")
        d["quantiles"] = list(QUANTILES)
        return d

    @classmethod
    def parse(cls, d: Any, where: str | Path | None) -> "QCReference":
        """The manifest's ``"qc"``, every field checked: one clear error, no traceback."""
        def bad(problem: str) -> InputError:
            return InputError(where, f"malformed manifest: qc {problem}")

        def number(v: Any, what: str) -> float | None:
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"needs a finite number or null for {what}, not {v!r}")
            return float(v)

        def limit(v: Any, what: str) -> Limit:
            if not isinstance(v, dict) or set(v) - {"low", "high"}:
                raise bad(f"needs {{low, high}} for {what}")
            return Limit(number(v.get("low"), what), number(v.get("high"), what))

        if not isinstance(d, dict):
            raise bad("must be an object")
        version = d.get("version")
        if isinstance(version, bool) or version not in QC_READS:
            raise bad(f"version {version!r}; this spikeseg reads versions {list(QC_READS)}")
        if d.get("quantiles") != list(QUANTILES):
            raise bad(f"quantiles {d.get('quantiles')!r}; this spikeseg compares {list(QUANTILES)}")
        ref, dist = d.get("intensity_reference"), d.get("intensity_distance")
        if not isinstance(ref, dict) or not isinstance(dist, dict) or set(ref) != set(MODALITIES) \
                or set(dist) != set(MODALITIES):
            raise bad(f"needs intensity_reference and intensity_distance for {list(MODALITIES)}")
        reference = {}
        for m in MODALITIES:
            if not isinstance(ref[m], list) or len(ref[m]) != len(QUANTILES):
                raise bad(f"needs {len(QUANTILES)} quantiles for {m}")
            reference[m] = tuple(number(v, f"{m} quantiles") for v in ref[m])  # type: ignore[misc]
        correlation: dict[str, Limit] = {}
        if version >= 2:
            corr = d.get("modality_correlation")
            if not isinstance(corr, dict) or set(corr) != set(PAIRS):
                raise bad(f"needs modality_correlation for {list(PAIRS)}")
            correlation = {p: limit(corr[p], f"modality_correlation.{p}") for p in PAIRS}
        agreement = limit(d.get("member_agreement"), "member_agreement") if version >= 3 else Limit()
        cases = d.get("cases")
        if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
            raise bad(f"needs a count of reference cases, not {cases!r}")
        return cls(str(d.get("source", "")), cases, reference,
                   {m: limit(dist[m], f"intensity_distance.{m}") for m in MODALITIES},
                   *(limit(d.get(k), k) for k in ("brain_ml", "shell_share", "wt_ml", "mean_uncertainty_in_wt",
                                                  "et_outside_tc")),
                   modality_correlation=correlation, member_agreement=agreement, version=version)
