"""Hostile or broken bundles and case headers: refused with one clear error, nothing loaded unhashed.

Each case was reproduced on copies of the demo's bundle before the fix (issue "Hardening the
runtime"); the fuzz passes at the end are seeded and bounded, and assert that whatever the
mutation, the answer is success or an InputError naming the file, never another exception."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spikeseg.runtime.bundle import MANIFEST, load_bundle, sha256_file
from spikeseg.runtime.case_io import load_case
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.inference import open_engine
from tests.helpers import run_cli


@pytest.fixture()
def bundle_copy(untrained_bundle, tmp_path: Path) -> Path:
    """A bundle's files as export writes them (untrained weights: these tests are about the files)."""
    dst = tmp_path / "bundle"
    shutil.copytree(untrained_bundle["useg"], dst)
    return dst


def edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    fn(m)
    (bundle / MANIFEST).write_text(json.dumps(m))


def first_model(m: dict, fmt: str = "onnx") -> dict:
    return next(x for x in m["views"]["axial"]["models"] if x["format"] == fmt and x["precision"] == "fp32")


def test_onnx_external_data_cannot_slip_in_unhashed(bundle_copy: Path) -> None:
    """A model whose weights live in an external data file: the data file was never hashed, and
    tampering with it changed a tumour volume from 55.6 to 669.9 mL. Models are now handed to
    ONNX Runtime as verified bytes, with no path from which to read anything else."""
    import onnx
    path = bundle_copy / "axial_fp32.onnx"
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="axial_fp32.onnx.data", size_threshold=0)
    edit_manifest(bundle_copy, lambda m: first_model(m).update(sha256=sha256_file(path)))
    b = load_bundle(bundle_copy)  # the listed files verify
    with pytest.raises(InputError, match="cannot load the model") as err:
        open_engine(b, "axial", "onnxruntime", "fp32", 1)
    assert "axial_fp32.onnx" in str(err.value)


def test_openvino_entry_without_weights_is_refused(bundle_copy: Path) -> None:
    edit_manifest(bundle_copy, lambda m: first_model(m, "openvino").pop("weights"))
    with pytest.raises(InputError, match="lacks its weights entry"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["/etc/passwd", "../../etc/passwd", "sub/../../x.onnx", "~/x.onnx"])
def test_manifest_paths_must_stay_inside_the_bundle(bundle_copy: Path, name: str) -> None:
    edit_manifest(bundle_copy, lambda m: first_model(m).update(file=name))
    with pytest.raises(InputError, match="not a plain path inside the bundle"):
        load_bundle(bundle_copy)


def test_a_symlinked_model_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_copy / "axial_fp32.onnx", outside)
    os.symlink(outside, bundle_copy / "axial_fp32.onnx")
    with pytest.raises(InputError, match="symlink"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("damage,message", [
    (lambda m: m.update(views=[]), "'views' must be a non-empty object"),
    (lambda m: m["views"]["axial"].update(models=[]), "has no models"),
    (lambda m: first_model(m).update(file=7), "needs a 'file' string"),
    (lambda m: first_model(m).pop("sha256"), "sha256"),
    (lambda m: m.update(preprocess=None), "'preprocess' must be an object"),
    (lambda m: m["views"]["axial"].pop("layers"), "lacks ['layers']"),
])
def test_malformed_manifests_get_one_clear_error(bundle_copy: Path, phantom_root: Path, tmp_path: Path,
                                                 damage, message: str) -> None:
    edit_manifest(bundle_copy, damage)
    case = sorted(phantom_root.iterdir())[0]
    r = run_cli("segment", bundle_copy, case, tmp_path / "out", block_torch=True)
    assert r.returncode == 2 and message in r.stderr and MANIFEST in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_deeply_nested_manifest_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / MANIFEST).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(InputError, match="unreadable manifest"):
        load_bundle(bundle_copy)


def _mutate(value, rng: np.random.Generator):
    choices = [None, 0, -1, 1e300, "", "../x", [], {}, "a" * 3, True]
    return choices[int(rng.integers(len(choices)))] if rng.random() < 0.7 else value


def test_fuzz_manifests_fail_cleanly(bundles) -> None:
    """200 seeded mutations of the manifest (a value replaced, a key dropped, at any depth):
    load_bundle answers with the bundle or an InputError, never another exception."""
    base = json.loads((bundles["useg"] / MANIFEST).read_text())
    rng = np.random.default_rng(0)
    work = bundles["useg"].parent / "fuzz-bundle"
    shutil.copytree(bundles["useg"], work, dirs_exist_ok=True)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(200):
        m = copy.deepcopy(base)
        parent, key = _pick_node(m, int(rng.integers(1, 5)), rng)
        if isinstance(parent, dict) and rng.random() < 0.3:
            parent.pop(key)
        else:
            parent[key] = _mutate(parent[key], rng)
        (work / MANIFEST).write_text(json.dumps(m))
        try:
            load_bundle(work)
            outcomes["ok"] += 1
        except InputError as exc:
            assert str(exc)
            outcomes["refused"] += 1
    # most of a manifest is the export's report (quantisation attempts, Dice), which steers
    # nothing: a mutation there loads; the operative part is hit often enough to be refused
    assert outcomes["refused"] >= 20 and outcomes["ok"] >= 20


def _pick_node(doc: dict, depth: int, rng: np.random.Generator) -> tuple[dict | list, str | int]:
    """A random (container, key) at most ``depth`` levels into a JSON document."""
    parent, key = doc, list(doc)[int(rng.integers(len(doc)))]
    for _ in range(depth - 1):
        child = parent[key]
        keys = list(child) if isinstance(child, dict) else list(range(len(child))) if isinstance(child, list) else []
        if not keys or rng.random() >= 0.7:
            break
        parent, key = child, keys[int(rng.integers(len(keys)))]
    return parent, key


HEADER_FIELDS = ["dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "qform_code",
                 "sform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d"]


def test_fuzz_case_headers_fail_cleanly(phantom_root: Path, tmp_path: Path) -> None:
    """120 seeded header mutations of one modality: load_case succeeds or raises an InputError
    that names the file; a claimed size never drives memory past a few hundred MB."""
    from spikeseg.runtime.system import peak_rss_mb, reset_peak_rss
    reset_peak_rss()
    src = sorted(phantom_root.iterdir())[0]
    rng = np.random.default_rng(1)
    refused = 0
    for i in range(120):
        case = tmp_path / f"c{i}" / src.name
        shutil.copytree(src, case)
        path = case / f"{src.name}_t2.nii.gz"
        img = nib.load(str(path))
        hdr = img.header.copy()
        raw = np.frombuffer(hdr.binaryblock, dtype=np.uint8).copy()
        field = HEADER_FIELDS[int(rng.integers(len(HEADER_FIELDS)))]
        arr = hdr.structarr.copy()
        value = arr[field]
        flat = np.atleast_1d(value).astype(np.float64)
        flat[int(rng.integers(flat.size))] = [0, -1, 1e9, np.nan, 65535, 2 ** 31 - 1][int(rng.integers(6))]
        try:
            with np.errstate(invalid="ignore"):  # NaN into an integer field is part of the fuzz
                arr[field] = flat.reshape(np.shape(value)).astype(arr[field].dtype)
        except (ValueError, OverflowError):
            continue
        raw = arr.tobytes()
        import gzip
        body = gzip.decompress(path.read_bytes())[len(raw):]
        path.write_bytes(gzip.compress(raw + body))
        try:
            load_case(case)
        except InputError as exc:
            assert path.name in str(exc) or case.name in str(exc), exc
            refused += 1
        shutil.rmtree(case.parent)
    assert refused > 20
    assert peak_rss_mb() < 2000


def test_default_threads_are_the_physical_cores_this_process_may_use(monkeypatch) -> None:
    """Against psutil's count of physical cores (an independent reading of the same machine),
    and never more than the CPUs in the affinity mask (a container or taskset limit)."""
    import os

    import psutil

    from spikeseg.runtime.system import physical_cores

    allowed = os.sched_getaffinity(0)
    assert physical_cores() == min(psutil.cpu_count(logical=False), len(allowed))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {min(allowed)})
    assert physical_cores() == 1
