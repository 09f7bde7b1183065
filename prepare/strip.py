"""Brain extraction by an installed deep-learning tool: HD-BET or SynthStrip, when the user has
them (``spikeseg prepare --brain hd-bet|synthstrip``); the default stays the atlas mask of
:mod:`.brain`, which needs nothing.

Why optional and never downloaded: both are better than an atlas on brains far from the template
(Isensee et al., Hum. Brain Mapp. 2019; Hoopes et al., NeuroImage 2022), but HD-BET fetches its
weights from Zenodo at first use and SynthStrip ships inside FreeSurfer; a point-of-care machine
may have neither and no network. So spikeseg calls a tool only where it and its weights are
already installed, checks that before any work, and names the tool and its version in
``prepare.json``.

Each runs on the registered T1 (the template grid, skull and all), in a temporary folder that is
removed afterwards; its mask is then checked like the atlas mask (:func:`.brain.check`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from spikeseg.runtime.errors import InputError

ATLAS = "atlas"
#: A tool that has not answered in this long is stopped (HD-BET on 2 CPU cores without test-time
#: augmentation takes about a minute per volume).
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Tool:
    """How one brain-extraction program is called and where its weights must already be."""

    name: str
    executable: str
    #: the command, from the input image and the mask it must write
    command: Callable[[str, Path, Path], list[str]]
    #: the file the tool writes the mask to, from the mask path it was given
    mask_written: Callable[[Path], Path]
    #: the weights the tool would otherwise download (None: they come with the executable)
    weights: Callable[[], Path | None]
    how_to_install: str


def _hd_bet_weights() -> Path:
    # HD_BET/paths.py of HD-BET 2.x: ~/hd-bet_params/release_2.0.0/fold_all/checkpoint_final.pth
    return Path.home() / "hd-bet_params" / "release_2.0.0" / "fold_all" / "checkpoint_final.pth"


TOOLS: dict[str, Tool] = {
    # HD-BET 2.x (github.com/MIC-DKFZ/HD-BET): CPU, no test-time augmentation (its advice on a CPU);
    # the mask goes next to the output image as <name>_bet.nii.gz
    "hd-bet": Tool("hd-bet", "hd-bet",
                   lambda exe, image, mask: [exe, "-i", str(image), "-o", str(mask.with_name("brain.nii.gz")),
                                             "-device", "cpu", "--disable_tta", "--save_bet_mask", "--no_bet_image"],
                   lambda mask: mask.with_name("brain_bet.nii.gz"), _hd_bet_weights,
                   "pip install hd-bet, then put its weights where HD-BET's readme says"),
    # SynthStrip (FreeSurfer 7.3+, surfer.nmr.mgh.harvard.edu/docs/synthstrip): its model ships with it
    "synthstrip": Tool("synthstrip", "mri_synthstrip",
                       lambda exe, image, mask: [exe, "-i", str(image), "-m", str(mask)],
                       lambda mask: mask, lambda: None,
                       "install FreeSurfer 7.3 or later (or SynthStrip's own container) so mri_synthstrip is on PATH"),
}
BACKENDS = (ATLAS, *TOOLS)


def find(name: str) -> tuple[Tool, str]:
    """The tool and its executable's path; refused, naming what is missing, before any work."""
    if name not in TOOLS:
        raise InputError(None, f"unknown brain extraction {name!r}; choose from {', '.join(BACKENDS)}")
    tool = TOOLS[name]
    exe = shutil.which(tool.executable)
    if exe is None:
        raise InputError(None, f"--brain {name}: {tool.executable} is not on PATH ({tool.how_to_install}); "
                               f"--brain atlas needs nothing")
    weights = tool.weights()
    if weights is not None and not weights.is_file():
        raise InputError(weights, f"--brain {name}: its weights are not installed here, and spikeseg never lets it "
                                  f"download them ({tool.how_to_install})")
    return tool, exe


def version(tool: Tool, exe: str) -> str:
    """What the tool's package says of its version, else its path."""
    from importlib import metadata

    try:
        return f"{tool.name} {metadata.version(tool.name)}"
    except metadata.PackageNotFoundError:
        return f"{tool.name} ({exe})"


def run(name: str, t1: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """The tool's brain mask of ``t1`` (a RAS array on ``affine_ras``'s grid), on the same grid."""
    tool, exe = find(name)
    with tempfile.TemporaryDirectory(prefix="spikeseg-strip-") as tmp:
        image, mask = Path(tmp) / "t1.nii.gz", Path(tmp) / "mask.nii.gz"
        nib.save(nib.Nifti1Image(t1.astype(np.float32), affine_ras), image)
        cmd = tool.command(exe, image, mask)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise InputError(None, f"--brain {name}: {tool.executable} did not finish in {TIMEOUT_S} s") from None
        written = tool.mask_written(mask)
        if done.returncode != 0 or not written.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise InputError(None, f"--brain {name}: {tool.executable} failed (exit {done.returncode}"
                                   + ("" if written.is_file() else ", no mask written") + ")"
                                   + (f": {' / '.join(tail)}" if tail else ""))
        img = nib.load(written)
        if img.shape[:3] != t1.shape or not np.allclose(img.affine, affine_ras, atol=1e-3):
            raise InputError(written, f"--brain {name}: the mask is not on the image's grid ({img.shape[:3]} vs "
                                      f"{t1.shape})")
        return np.asarray(img.dataobj).reshape(t1.shape) > 0
