"""The registration template shipped with spikeseg: MNI ICBM152 2009 T1 and brain mask on the
BraTS grid (240x240x155, 1 mm), placed as the phantoms are (``template/NOTICE.txt``: its licence).

Rebuilt by ``make template`` (:func:`spikeseg.training.phantoms.write_prepare_template`, which
needs nilearn); a test checks the shipped files against a fresh build.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import nibabel as nib

#: File names inside the package's ``template`` folder.
T1, MASK = "t1.nii.gz", "brain_mask.nii.gz"


def template_dir() -> Path:
    return Path(str(resources.files("spikeseg.prepare") / "template"))


def load_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The template T1 (uint8) and its brain mask, as nibabel images in RAS."""
    folder = template_dir()
    return nib.load(folder / T1), nib.load(folder / MASK)
