"""`spikeseg bench`, the full-case latency benchmark and the FPTT/BPTT memory benchmark: they run and
report what they claim.

No timing is asserted here (performance belongs in the benchmark's own output)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from spikeseg.benchmarks.train_memory import run as train_memory
from tests.helpers import run_cli


def test_bench_compares_every_configuration_in_one_run(bundles, phantom_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = run_cli("bench", "--data", phantom_root, "--bundles", bundles["spiking-useg"], bundles["useg"],
                "--out", out, "--repeats", "1", "--max-cases", "1")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    configs = {row["config"] for row in rows}
    for arch in ("spiking-useg", "useg"):
        assert {f"{arch} {b} {p}" for b in ("onnxruntime", "openvino") for p in ("fp32", "int8")} | \
            {f"{arch} torch fp32"} <= configs
    torch_latency = {row["architecture"]: float(row["latency_s"]) for row in rows if row["backend"] == "torch"}
    for row in rows:
        assert 0.0 <= float(row["dice_WT"]) <= 1.0 and float(row["latency_s"]) > 0
        # each speed-up is against torch FP32 of the same architecture, in this run
        assert float(row["x_vs_torch"]) == pytest.approx(torch_latency[row["architecture"]] / float(row["latency_s"]),
                                                         rel=0.01)
        assert row["compute_precision"] in ("fp32", "f32", "int8 (QDQ convs) + fp32", "int8 (FakeQuantize convs) + f32")
        # achieved GOP/s and the ops/peak bound follow from the row's own counts and time
        gops = 2 * float(row["dense_macs"]) / float(row["latency_s"]) / 1e9
        assert float(row["gops"]) == pytest.approx(gops, rel=1e-3)
        assert float(row["x_bound"]) == pytest.approx(float(row["latency_s"]) / float(row["bound_s"]), rel=1e-3)
        assert float(row["x_bound"]) > 1  # nothing runs faster than the CPU's measured peak
    # both peaks were measured once in this run: every row sees the same INT8/FP32 peak ratio
    ratios = [float(row["pct_fp32_peak"]) / float(row["pct_int8_peak"]) for row in rows]
    assert ratios == pytest.approx([ratios[0]] * len(ratios), rel=1e-4)
    snn = [row for row in rows if row["architecture"] == "spiking-useg"]
    assert all(float(row["effective_acs"]) > 0 for row in snn)
    for name in ("results.md", "accuracy_vs_energy.png", "latency.png"):
        assert (out / name).stat().st_size > 0
    # the SNN set against the twin case by case, on the same backend and precision (one case here:
    # the gap is that case's difference and the interval collapses onto it)
    assert "dice_per_case" not in rows[0]
    by_config = {row["config"]: row for row in rows}
    md = (out / "results.md").read_text()
    for backend, precision in (("openvino", "int8"), ("onnxruntime", "fp32")):
        snn, twin = by_config[f"spiking-useg {backend} {precision}"], by_config[f"useg {backend} {precision}"]
        line = next(x for x in md.splitlines() if x.startswith(f"| spiking-useg {backend} {precision} |") and "[" in x)
        for cell, region in zip(line.strip("|").split("|")[1:], ("ET", "TC", "WT")):
            diff = 100 * (float(twin[f"dice_{region}"]) - float(snn[f"dice_{region}"]))
            if math.isnan(diff):
                assert cell.strip() == "undefined"
                continue
            mean, interval = cell.split("[")
            assert float(mean) == pytest.approx(diff, abs=0.051)
            assert [float(v) for v in interval.split("]")[0].split(",")] == pytest.approx([float(mean)] * 2)
            assert cell.strip().endswith(f"({int(diff > 0)}/1)")
    again = run_cli("bench", "--data", phantom_root, "--bundles", bundles["useg"], "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_fptt_memory_stays_flat_while_bptt_grows_with_the_sequence() -> None:
    """The benchmark's claim, measured the way it measures it: from 4 to 32 slices BPTT's peak
    grows by the graph of 28 more slices, FPTT's (one slice per update) barely moves."""
    rows = train_memory([4, 32], batch=1, h=48, w=48, window=1, log=lambda *_: None)
    assert [r["slices"] for r in rows] == [4, 32]
    bptt_growth = rows[1]["bptt_mb"] - rows[0]["bptt_mb"]
    fptt_growth = rows[1]["fptt_mb"] - rows[0]["fptt_mb"]
    assert bptt_growth > BPTT_GROWTH_MB, rows
    assert fptt_growth < bptt_growth / 10, rows
    assert all(r["fptt_s"] > 0 and r["bptt_s"] > 0 for r in rows)


#: half the tiny model's autograd graph for 28 more slices of 48x48 (measured here: BPTT +90 MB,
#: FPTT +0.6 MB)
BPTT_GROWTH_MB = 45.0


def test_case_latency_times_fresh_bundles_end_to_end(phantom_root: Path, tmp_path: Path) -> None:
    """The full-case benchmark at a tiny scale: a fresh model exported (INT8 not checked, and the
    manifest says so), `spikeseg segment` run per precision, and every figure from those runs."""
    from spikeseg.benchmarks.case_latency import main as case_latency
    from spikeseg.runtime.preprocess import PreprocessParams
    case = sorted(phantom_root.iterdir())[0]
    out = tmp_path / "case"
    assert case_latency(["--case", str(case), "--preset", "tiny", "--spacing", "6", "--rounds", "1",
                         "--calib-items", "4", "--models", "SNN", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "case_latency.json").read_text())["rows"]
    assert [(r["model"], r["precision"]) for r in rows] == [("SNN", "int8"), ("SNN", "fp32")]
    total_slices = sum(PreprocessParams(spacing_mm=(6.0,) * 3).model_shape)
    for r in rows:
        assert 0 < r["inference_s"] < r["total_s"] and r["peak_rss_mb"] > 0 and r["bound_s"] > 0
        assert r["slices_run"] + r["air_slices_skipped"] == 2 * total_slices  # the SNN runs both ways
        assert r["dense_macs"] > 0 and r["gops"] > 0
    assert "| SNN | int8 |" in (out / "case_latency.md").read_text()
    assert not [p for p in out.iterdir() if p.is_dir()]  # the fresh bundles and outputs were temporary
    with pytest.raises(SystemExit, match="--overwrite"):  # refused before any work
        case_latency(["--case", str(case), "--preset", "tiny", "--spacing", "6", "--out", str(out)])


@pytest.mark.parametrize("module", ["fidelity", "cascade_ablation"])
def test_equal_budget_benchmarks_refuse_to_replace_results_before_any_training(module: str, tmp_path: Path) -> None:
    """An existing results.md stops the run at once (no training starts, the file is unchanged);
    --overwrite lets it past the check (here into the missing training data, a clear error)."""
    import importlib

    main = importlib.import_module(f"spikeseg.benchmarks.{module}").main
    (tmp_path / "results.md").write_text("quoted figures")
    args = ["--train", str(tmp_path / "no-train"), "--test", str(tmp_path / "no-test"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="results exist; pass --overwrite"):
        main(args)
    assert (tmp_path / "results.md").read_text() == "quoted figures"
    assert not (tmp_path / "runs").exists()
    with pytest.raises(BaseException) as past:
        main([*args, "--overwrite", "--minutes", "0.01"])
    assert "results exist" not in str(past.value)


def test_latency_benchmark_refuses_to_replace_its_table_before_timing_anything(tmp_path: Path) -> None:
    """The per-slice latency table is quoted in the README: an existing one stops the run before
    any model is built or timed, and the file is left as it was."""
    from spikeseg.benchmarks.latency import main as latency

    (tmp_path / "latency.md").write_text("quoted figures")
    with pytest.raises(SystemExit, match="results exist; pass --overwrite"):
        latency(["--out", str(tmp_path)])
    assert (tmp_path / "latency.md").read_text() == "quoted figures"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.md"]
