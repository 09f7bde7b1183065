"""The wider phantom families: contrasts drawn per case within the orderings that define the
tissues and sub-regions, the held-out family outside the training family's ranges, the standard
phantoms unchanged, and every family written in a form the runtime reads."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.case_io import load_case
from spikeseg.training.phantoms import _CONTRAST, FAMILIES, family_contrast, make_case, storage
from tests.helpers import run_cli

CSF, GM, WM, NCR, ED, ET = range(6)
T1, T1CE, T2, FLAIR = range(4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_drawn_contrasts_keep_the_orderings_that_define_the_regions(family: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        c = family_contrast(rng, FAMILIES[family])
        assert c[T1, CSF] <= c[T1, GM] <= c[T1, WM] and c[T1CE, CSF] <= c[T1CE, GM] <= c[T1CE, WM]
        assert c[T2, CSF] >= c[T2, GM] >= c[T2, WM]
        assert c[FLAIR, CSF] < min(c[FLAIR, GM], c[FLAIR, WM])  # CSF suppressed
        assert c[T1CE, ET] >= 1.3 * c[T1, ET] and c[T1CE, ET] > c[T1CE, WM]  # enhancement
        assert c[T1CE, NCR] < c[T1CE, GM]
        for row in (T2, FLAIR):
            assert c[row, ED] > max(c[row, GM], c[row, WM])  # edema bright on T2 and FLAIR


def test_the_heldout_family_lies_outside_the_training_familys_ranges() -> None:
    wide, held = FAMILIES["wide"], FAMILIES["heldout"]
    (wlo, whi), = wide.contrast
    assert all(hi <= wlo or lo >= whi for lo, hi in held.contrast)
    for field in ("bias", "noise", "thickness_mm", "log10_scale"):
        (lo, hi), (hlo, hhi) = getattr(wide, field), getattr(held, field)
        assert hlo >= hi, field
    rng = np.random.default_rng(1)
    factors = np.stack([family_contrast(rng, held) / _CONTRAST for _ in range(50)])
    assert (np.abs(factors - 1) >= 0.2 - 1e-6).mean() > 0.8  # most entries outside wide's +-20 %
    for family in FAMILIES.values():  # a main lesion from under 1 mL to over 200 mL
        lo, hi = (4 / 3 * math.pi * r**3 / 1000 for r in family.radius_mm)
        assert lo < 1 and hi > 200


def test_the_standard_phantoms_are_what_they_were() -> None:
    a, b = make_case(100, "small", 0.5), make_case(100, "small", 0.5, "standard")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    wide = make_case(100, "small", 0.5, "wide")
    assert not np.array_equal(a[0], wide[0])
    assert all(np.array_equal(x, y) for x, y in zip(wide, make_case(100, "small", 0.5, "wide")))  # seeded


def test_family_cases_are_written_in_varied_storage_and_read_by_the_runtime(tmp_path: Path) -> None:
    r = run_cli("phantoms", tmp_path / "held", "--cases", "2", "--seed", "4", "--family", "heldout", "--quiet",
                allow=("nilearn",), block_torch=True)
    assert r.returncode == 0, r.stderr
    stored = set()
    for folder in sorted((tmp_path / "held").iterdir()):
        case = load_case(folder)
        assert case.image.shape[0] == 4 and case.label is not None and case.label.any()
        img = nib.load(str(next(folder.glob("*_t1.nii.gz"))))
        stored.add(str(img.get_data_dtype()))
        assert case.image.max() > 1000 * 10 ** FAMILIES["heldout"].log10_scale[0] * 0.5  # stored scaled up
    assert stored <= {"int16", "uint16", "float32"}
    scales = {storage(s, "wide")[0] for s in range(20)}
    assert min(scales) < 1000 < max(scales) and storage(3)[0] == 1000
