"""Brain extraction by an installed tool (``prepare --brain hd-bet|synthstrip``), against
stand-ins that take each tool's documented command line and write a mask as the tool does: no
network and no weights here, so what is tested is spikeseg's side of the contract (the command,
where the mask is read, the refusals, the record), not the tools' accuracy."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("SimpleITK")

from spikeseg.prepare import strip  # noqa: E402
from spikeseg.runtime.errors import InputError  # noqa: E402
from spikeseg.runtime.prepared import read_record  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

#: a stand-in: records its arguments, then writes a mask (the file named by $FAKE_MASK_FROM, or
#: the input above half its maximum) where the tool would
FAKE = """#!{python}
import json, os, sys
import nibabel as nib, numpy as np
args = sys.argv[1:]
open(os.environ["FAKE_ARGS"], "w").write(json.dumps(args))
if os.environ.get("FAKE_EXIT"):
    print("boom: out of memory", file=sys.stderr)
    sys.exit(int(os.environ["FAKE_EXIT"]))
image = nib.load(args[args.index("-i") + 1])
source = os.environ.get("FAKE_MASK_FROM")
mask = (np.asarray(nib.load(source).dataobj) > 0) if source else (np.asarray(image.dataobj) > 0.5 * image.get_fdata().max())
dest = args[args.index("-m") + 1] if "-m" in args else args[args.index("-o") + 1].replace(".nii.gz", "_bet.nii.gz")
nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), dest)
"""


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Both stand-ins on PATH, HOME moved to an empty folder (no HD-BET weights); returns the
    file each writes its arguments to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in ("hd-bet", "mri_synthstrip"):
        (bin_dir / exe).write_text(FAKE.format(python=sys.executable))
        (bin_dir / exe).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FAKE_ARGS", str(tmp_path / "args.json"))
    return tmp_path / "args.json"


def _volume() -> tuple[np.ndarray, np.ndarray]:
    t1 = np.zeros((20, 22, 18), np.float32)
    t1[5:15, 6:16, 4:14] = 1.0
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10, -11, -9)
    return t1, affine


def test_synthstrip_is_called_as_documented_and_its_mask_read_back(tools: Path) -> None:
    t1, affine = _volume()
    mask = strip.run("synthstrip", t1, affine)
    args = json.loads(tools.read_text())
    assert args[0] == "-i" and args[2] == "-m" and len(args) == 4
    np.testing.assert_array_equal(mask, t1 > 0.5)


def test_hd_bet_needs_its_weights_installed_and_is_never_left_to_download_them(tools: Path) -> None:
    t1, affine = _volume()
    weights = strip.TOOLS["hd-bet"].weights()
    with pytest.raises(InputError, match="weights are not installed") as refused:
        strip.run("hd-bet", t1, affine)
    assert str(weights) in str(refused.value) and not tools.exists()  # refused before the tool ran
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    mask = strip.run("hd-bet", t1, affine)
    args = json.loads(tools.read_text())
    assert ["-device", "cpu", "--disable_tta", "--save_bet_mask", "--no_bet_image"] == args[4:]
    assert args[3].endswith("brain.nii.gz")  # the mask is read from brain_bet.nii.gz beside it
    np.testing.assert_array_equal(mask, t1 > 0.5)


def test_a_missing_failing_or_misplaced_tool_is_a_clear_error(tools: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t1, affine = _volume()
    monkeypatch.setenv("FAKE_EXIT", "3")
    with pytest.raises(InputError, match=r"mri_synthstrip failed \(exit 3.*boom: out of memory"):
        strip.run("synthstrip", t1, affine)
    monkeypatch.delenv("FAKE_EXIT")
    other = tools.parent / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine), other)
    monkeypatch.setenv("FAKE_MASK_FROM", str(other))
    with pytest.raises(InputError, match="not on the image's grid"):
        strip.run("synthstrip", t1, affine)
    monkeypatch.setenv("PATH", str(tools.parent / "nowhere"))
    with pytest.raises(InputError, match="mri_synthstrip is not on PATH"):
        strip.run("synthstrip", t1, affine)
    with pytest.raises(InputError, match="unknown brain extraction 'bet'"):
        strip.find("bet")


def test_prepare_uses_the_tools_mask_checks_it_and_names_the_tool(tools: Path, monkeypatch,
                                                                   scanner, prepared) -> None:
    """End to end through the CLI: the tool's mask (here the atlas mask, one voxel thinner) is the
    case's brain mask, prepare.json names the tool; a tool without its weights is refused and
    nothing is written."""
    from scipy import ndimage

    atlas = prepared[0].folder / "prepare" / "brain_mask.nii.gz"
    img = nib.load(atlas)
    thinner = ndimage.binary_erosion(np.asarray(img.dataobj) > 0)
    source = tools.parent / "thinner.nii.gz"
    nib.save(nib.Nifti1Image(thinner.astype(np.uint8), img.affine), source)
    monkeypatch.setenv("FAKE_MASK_FROM", str(source))
    out = tools.parent / "P001"
    r = run_cli("prepare", scanner.folder, out, "--brain", "synthstrip", "-q")
    assert r.returncode == 0, r.stderr
    got = np.asarray(nib.load(out / "prepare" / "brain_mask.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(got, thinner)
    record = read_record(out)
    assert record.provenance["methods"]["brain_extraction"].startswith("synthstrip")
    r = run_cli("prepare", scanner.folder, tools.parent / "P002", "--brain", "hd-bet")
    assert r.returncode == 2 and "weights are not installed" in r.stderr
    assert not (tools.parent / "P002").exists()


def test_the_cli_offers_every_back_end() -> None:
    import argparse

    from spikeseg.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    (brain,) = [a for a in sub.choices["prepare"]._actions if "--brain" in a.option_strings]
    assert tuple(brain.choices) == strip.BACKENDS and brain.default == strip.ATLAS
