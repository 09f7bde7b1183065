"""The INT8 accuracy budget's retry, with stand-ins for the quantiser and the scoring (no
training, seconds): first plain INT8; over budget, once more with the first conv and the
readout kept in float; still over, refused unless --allow-accuracy-drop."""

from __future__ import annotations

from pathlib import Path

import pytest

import spikeseg.export.build as build
from spikeseg.runtime.errors import InputError

FLOAT_MODULES = ["enc0.conv", "readout"]


class StubEngine:
    def __init__(self, model, precision: str, threads: int) -> None:
        self.precision = precision


@pytest.fixture()
def stubs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Quantisers that record what they were asked to keep in float; scores that drop ``drops``
    WT points on the first and second attempt."""
    calls: list[list[str] | None] = []
    drops: dict[str, float] = {"plain": 0.05, "float_ends": 0.002}

    def quantise(fp32: Path, int8: Path, feeds, ignored):
        calls.append(ignored)
        int8.write_text(f"int8 {ignored}")
        if int8.suffix == ".xml":
            int8.with_suffix(".bin").write_bytes(b"w")
        return {"ignored": ignored}

    def dice_table(engine, spec, holdout, view):
        if engine.precision == "fp32":
            return {"ET": 0.5, "TC": 0.7, "WT": 0.9}
        drop = drops["float_ends" if calls[-1] else "plain"]
        return {"ET": 0.5, "TC": 0.7, "WT": 0.9 - drop}

    for name in ("fp32.xml", "fp32.onnx"):
        (tmp_path / f"axial_{name}").write_text("m")
    (tmp_path / "axial_fp32.bin").write_bytes(b"w")
    monkeypatch.setattr(build, "quantize_openvino", quantise)
    monkeypatch.setattr(build, "quantize_onnxruntime", quantise)
    monkeypatch.setattr(build, "OvEngine", StubEngine)
    monkeypatch.setattr(build, "OrtEngine", StubEngine)
    monkeypatch.setattr(build, "_dice_table", dice_table)
    return calls, drops


def _quantise(tmp_path: Path, allow_drop: bool = False):
    return build._quantise_view(tmp_path, "axial", None, [], holdout=[object()], budget=0.01, allow_drop=allow_drop,
                                threads=1, float_modules=FLOAT_MODULES, log=lambda *_: None)


def test_over_budget_retries_once_with_the_ends_in_float(stubs, tmp_path: Path) -> None:
    calls, _ = stubs
    entries, report = _quantise(tmp_path)
    assert calls == [None, FLOAT_MODULES, None, FLOAT_MODULES]  # per backend: plain, then the retry
    for backend in ("openvino", "onnxruntime"):
        assert len(report[backend]["attempts"]) == 2 and report[backend]["within_budget"]
        assert report[backend]["quantisation"] == {"ignored": FLOAT_MODULES}
    assert len(entries) == 2


def test_within_budget_at_once_needs_no_retry(stubs, tmp_path: Path) -> None:
    calls, drops = stubs
    drops["plain"] = 0.001
    _, report = _quantise(tmp_path)
    assert calls == [None, None] and len(report["openvino"]["attempts"]) == 1


def test_still_over_budget_is_refused_unless_allowed(stubs, tmp_path: Path) -> None:
    calls, drops = stubs
    drops["float_ends"] = 0.03
    with pytest.raises(InputError, match="over the 1.00-point budget"):
        _quantise(tmp_path)
    assert calls == [None, FLOAT_MODULES]
    calls.clear()
    _, report = _quantise(tmp_path, allow_drop=True)
    assert not report["openvino"]["within_budget"] and len(report["onnxruntime"]["attempts"]) == 2
