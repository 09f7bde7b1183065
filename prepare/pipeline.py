"""``spikeseg prepare``'s steps, in order: find and name the series, read them, (N4), co-register
T1, T2 and FLAIR to T1ce (rigid), map T1ce to the template (affine), resample the four onto the
template's BraTS grid, extract the brain, write the case. The output folder is assembled under a
hidden name and renamed into place: a failure at any step leaves nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spikeseg.prepare import brain as brain_mod
from spikeseg.prepare import strip
from spikeseg.prepare.register import Registration, affine, ras, resample, rigid, transform_of
from spikeseg.prepare.series import Choice, Series, choose, discover, not_a_volume
from spikeseg.prepare.template import load_template
from spikeseg.prepare.volumes import check_size, from_array, n4, read_series, to_array, to_nifti
from spikeseg.runtime import __version__
from spikeseg.runtime.atomic import atomic_dir
from spikeseg.runtime.case_io import MODALITIES, check_case_id
from spikeseg.runtime.console import log as console
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.outputs import check_apart, check_replaceable
from spikeseg.runtime.bundle import sha256_file
from spikeseg.runtime.prepared import FOLDER, NATIVE_REFERENCE, RECORD, PrepareRecord

#: Mutual information (Mattes, 32 bins, as a positive number) below which a registration is
#: refused as not converged: scanner-style phantoms register at about 1.0 (rigid) and 1.2
#: (template), and a series of noise falls below the floor (tests/test_prepare.py).
MIN_RIGID_MI = 0.2
MIN_TEMPLATE_MI = 0.15
#: The template is sampled this far outside its brain mask (mm): the brain's edge carries the fit.
_FIXED_MASK_MM = 6.0


@dataclass(frozen=True)
class PrepareOptions:
    """What a user chooses (``spikeseg prepare --help`` says each)."""

    #: modality -> a series folder, a file of it, or a NIfTI file; always wins over the guess
    explicit: dict[str, Path] = field(default_factory=dict)
    n4: bool = False
    case_id: str | None = None
    threads: int | None = None
    #: "atlas" (needs nothing), or an installed tool: "hd-bet", "synthstrip" (:mod:`.strip`)
    brain: str = "atlas"


@dataclass
class Prepared:
    folder: Path
    record: PrepareRecord
    seconds: dict[str, float]


def is_prepared_case(folder: Path) -> bool:
    """A folder ``prepare`` made (it may be replaced with ``--overwrite``)."""
    return (folder / FOLDER / RECORD).is_file()


def prepare(source: str | Path, out: str | Path, options: PrepareOptions | None = None, overwrite: bool = False,
            log: Callable[[str], None] | None = None) -> Prepared:
    """Turn one study's scans (``source``) into a BraTS case folder ``out``; see the module docstring."""
    o = options or PrepareOptions()
    say = log or console.info  # the spikeseg logger: -q silences it, a notebook redirects it
    source, out = Path(source), Path(out)
    case_id = check_case_id(o.case_id or out.name, out)
    check_apart(out, [source, *o.explicit.values()])
    check_replaceable(out, overwrite, is_prepared_case, "prepared case")
    tool = strip.find(o.brain) if o.brain != strip.ATLAS else None  # a missing tool is refused before any work
    if o.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(o.threads))
    clock = _Clock(say)

    found = discover(source)
    choices = choose(found, o.explicit)
    clock.lap("series", ", ".join(f"{c.modality}: {c.series.description or c.series.path.name}" for c in choices))
    native = _read(choices, clock)
    images = {m: n4(img) for m, img in native.items()} if o.n4 else native
    if o.n4:
        clock.lap("n4", "bias field corrected (N4)")
    t1_img, mask_img = load_template()
    template = from_array(np.asarray(t1_img.dataobj, dtype=np.float32), t1_img.affine)
    template_mask = np.asarray(mask_img.dataobj) > 0
    coreg, to_case = _register(images, choices, template, template_mask, mask_img.affine, clock)

    maps = {m: (coreg[m].matrix @ to_case.matrix if m in coreg else to_case.matrix) for m in MODALITIES}
    arrays = {m: to_array(resample(images[m], template, maps[m]))[0] for m in MODALITIES}
    clock.lap("resample", "onto the template's 240x240x155 1 mm grid")
    if tool is None:
        brain = brain_mod.extract(template_mask, arrays["t1"], arrays["t2"], 1.0)
    else:
        brain = brain_mod.checked(strip.run(o.brain, arrays["t1"], t1_img.affine), template_mask, 1.0)
    clock.lap("brain", f"{o.brain}: {brain.volume_ml:.0f} mL, Dice {brain.template_dice:.3f} with the template mask")
    record = PrepareRecord(case_id, ras(to_case.matrix), NATIVE_REFERENCE, "",
                           _provenance(choices, found, coreg, to_case, brain, maps, o,
                                       strip.version(*tool) if tool else None))
    folder = _write(out, case_id, arrays, brain.mask, t1_img.affine, native["t1ce"], maps, record, clock)
    return Prepared(folder, record, clock.seconds)


def _read(choices: list[Choice], clock: "_Clock") -> dict[str, sitk.Image]:
    native = {}
    for c in choices:
        native[c.modality] = read_series(c.series)
        check_size(native[c.modality], c.series.path)
    clock.lap("read", "; ".join(f"{m} {'x'.join(str(n) for n in img.GetSize())} at "
                                f"{'x'.join(f'{v:.2g}' for v in img.GetSpacing())} mm" for m, img in native.items()))
    return native


def _register(images: dict[str, sitk.Image], choices: list[Choice], template: sitk.Image, template_mask: np.ndarray,
              template_affine: np.ndarray, clock: "_Clock") -> tuple[dict[str, Registration], Registration]:
    """Each modality rigidly to T1ce, then the template affinely to T1ce (sampled inside its brain
    mask, dilated: the template has no skull); each checked against its mutual-information floor."""
    fixed = images["t1ce"]
    coreg = {m: _checked(rigid(fixed, images[m]), MIN_RIGID_MI, f"co-registration of {m} to t1ce", _where(choices, m))
             for m in MODALITIES if m != "t1ce"}
    clock.lap("co-register", ", ".join(f"{m} MI {r.mutual_information:.2f}" for m, r in coreg.items()))
    fixed_mask = ndimage.binary_dilation(template_mask, iterations=int(_FIXED_MASK_MM))
    mask_img = sitk.Cast(from_array(fixed_mask.astype(np.float32), template_affine), sitk.sitkUInt8)
    to_case = _checked(affine(template, fixed, mask_img), MIN_TEMPLATE_MI, "registration of t1ce to the template",
                       _where(choices, "t1ce"))
    clock.lap("template", f"affine, MI {to_case.mutual_information:.2f}")
    return coreg, to_case


def _provenance(choices: list[Choice], found: list[Series], coreg: dict[str, Registration], to_case: Registration,
                brain: brain_mod.BrainMask, maps: dict[str, np.ndarray], o: PrepareOptions,
                brain_tool: str | None) -> dict:
    """What ``prepare.json`` says besides the way back: inputs, choices, methods, checks, transforms."""
    return {
        "spikeseg_version": __version__,
        "inputs": {c.modality: {**c.series.to_dict(), "chosen_because": c.why, "sha256": _series_sha256(c.series)}
                   for c in choices},
        "ignored": [{"series": s.label(), "why": not_a_volume(s) or "not chosen"} for s in found
                    if all(s is not c.series for c in choices)],
        "template": {"name": "MNI ICBM152 2009a on the BraTS 240x240x155 1 mm grid",
                     "notice": "spikeseg/prepare/template/NOTICE.txt"},
        "methods": {"dicom": f"pydicom {_version('pydicom')} (tags) and SimpleITK {sitk.Version_VersionString()} "
                             "(series reader)",
                    "bias_field": "N4 (SimpleITK)" if o.n4 else "none (pass --n4)",
                    "co_registration": "rigid to t1ce, Mattes mutual information, 3 levels",
                    "template_registration": "similarity then affine, t1ce to template, Mattes mutual information",
                    "brain_extraction": (f"{brain_tool}, on the registered T1 (spikeseg.prepare.strip)"
                                         if brain_tool else
                                         "template mask, refined by intensity at its edge (spikeseg.prepare.brain)"),
                    "interpolation": "cubic B-spline, clamped at 0"},
        "checks": {"co_registration_mi": {m: round(r.mutual_information, 4) for m, r in coreg.items()},
                   "template_mi": round(to_case.mutual_information, 4), "brain_volume_ml": round(brain.volume_ml, 1),
                   "brain_template_dice": round(brain.template_dice, 4)},
        "transforms_lps": {m: maps[m].round(9).tolist() for m in MODALITIES},
    }


def _write(out: Path, case_id: str, arrays: dict[str, np.ndarray], mask: np.ndarray, affine_ras: np.ndarray,
           native_t1ce: sitk.Image, maps: dict[str, np.ndarray], record: PrepareRecord, clock: "_Clock") -> Path:
    with atomic_dir(out) as tmp:
        for m in MODALITIES:
            _save(np.where(mask, arrays[m], 0).astype(np.float32), affine_ras, tmp / f"{case_id}_{m}.nii.gz")
        side = tmp / FOLDER
        side.mkdir()
        _save(mask.astype(np.uint8), affine_ras, side / "brain_mask.nii.gz")
        nib.save(to_nifti(native_t1ce), side / NATIVE_REFERENCE)
        for m in MODALITIES:  # ITK transform files: 3D Slicer and ITK-SNAP read them
            sitk.WriteTransform(transform_of(maps[m]), str(side / f"template_to_{m}.tfm"))
        _quicklook(side / "quicklook.png", arrays, mask)
        clock.lap("write", f"{out}")
        final = PrepareRecord(record.case_id, record.template_to_native, record.reference,
                              sha256_file(side / NATIVE_REFERENCE), {**record.provenance, "seconds": clock.seconds})
        final.write(tmp)
    return out


def _save(data: np.ndarray, affine_ras: np.ndarray, dest: Path) -> None:
    img = nib.Nifti1Image(data, affine_ras)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    nib.save(img, dest)


def _quicklook(dest: Path, arrays: dict[str, np.ndarray], mask: np.ndarray) -> None:
    """Axial and coronal slices through the brain's centre of each prepared modality, the brain
    mask's outline in yellow: a check at a glance that the four line up and the mask fits."""
    from spikeseg.runtime.quicklook import _grey, write_png

    centre = np.round(ndimage.center_of_mass(mask)).astype(int)
    outline = mask & ~ndimage.binary_erosion(mask)
    rows = []
    for take in (lambda v: v[:, :, centre[2]], lambda v: v[:, centre[1], :]):
        panels = []
        for m in MODALITIES:
            rgb = _grey(np.rot90(take(arrays[m])))
            rgb[np.rot90(take(outline))] = (255, 220, 0)
            panels.append(rgb)
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    write_png(dest, np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0))


def _checked(reg: Registration, floor: float, what: str, where: Path) -> Registration:
    if not np.isfinite(reg.mutual_information) or reg.mutual_information < floor:
        raise InputError(where, f"{what} did not converge: mutual information {reg.mutual_information:.3f} "
                                f"< {floor} ({reg.stop.strip()}); check that the series shows the same head")
    return reg


def _where(choices: list[Choice], modality: str) -> Path:
    return next(c.series.path for c in choices if c.modality == modality)


def _series_sha256(s: Series) -> str:
    """sha256 over the files' own sha256 digests in path order: one digest per series."""
    h = hashlib.sha256()
    for f in sorted(s.files):
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


class _Clock:
    """Step timings, each step said as it ends."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.seconds, self.t0, self.t = say, {}, time.perf_counter(), time.perf_counter()

    def lap(self, step: str, detail: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self.t, 3)
        self.seconds["total"] = round(now - self.t0, 3)
        self.t = now
        self.say(f"{step:12s} {self.seconds[step]:6.1f} s  {detail}")
