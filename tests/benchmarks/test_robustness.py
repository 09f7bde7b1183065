"""The robustness benchmark's pieces (the benchmark itself is run, not tested: benchmarks/):
each corruption does what its name says to a copy, never to the input, and the QC summary counts
failures and false alarms as stated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from spikeseg.benchmarks.robustness import CORRUPTIONS, conditions, qc_summary
from spikeseg.runtime.case_io import load_case


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_corrupted_copies_are_what_their_names_say_and_the_inputs_stay_untouched(phantom_root: Path,
                                                                                tmp_path: Path) -> None:
    before = _digest(phantom_root)
    conds = conditions(phantom_root, phantom_root, 0, tmp_path / "cases")  # the held-out family: given
    assert set(conds) == {"standard", "heldout family", *CORRUPTIONS}
    assert _digest(phantom_root) == before
    name = sorted(phantom_root.iterdir())[0].name
    original = load_case(phantom_root / name)
    brain = np.any(original.image != 0, axis=0)

    def copy(condition: str):
        case = load_case(next(c for c in conds[condition] if c.name == name))
        np.testing.assert_array_equal(case.label, original.label)
        return case.image

    skull = copy("not skull-stripped")
    assert (skull[:, ~brain] > 0).mean() > 0.9  # signal outside the brain
    np.testing.assert_allclose(copy("FLAIR holds T1")[3], original.image[0])
    np.testing.assert_allclose(copy("intensities x100"), original.image * 100, rtol=1e-5)
    np.testing.assert_allclose(copy("intensities x0.01"), original.image * 0.01, rtol=1e-5)
    for condition in ("strong bias", "strong noise", "6 mm slices", "mild blur"):
        changed = copy(condition)
        assert not np.allclose(changed, original.image) and not changed[:, ~brain].any()  # background stays 0


def test_the_qc_summary_counts_failures_flagged_and_false_alarms() -> None:
    cases = [{"condition": "standard", "wt_dice": 0.9, "qc": "ok"},
             {"condition": "standard", "wt_dice": 0.85, "qc": "review"},
             {"condition": "noise", "wt_dice": 0.4, "qc": "review"},
             {"condition": "noise", "wt_dice": 0.6, "qc": "ok"},
             {"condition": "skull", "wt_dice": 0.1, "qc": "review"}]
    qc = qc_summary(cases)
    assert qc == {"failures": 3, "failures_flagged": 2 / 3, "standard_cases": 2, "standard_flagged": 0.5,
                  "good_cases": 2, "good_flagged": 0.5}
