"""Per-slice latency of one view model at the paper's scale: torch FP32, ONNX Runtime FP32/INT8,
OpenVINO FP32/INT8, for the stateless twin and the SNN step (explicit state fed back).

Latency does not depend on the weights, so this uses freshly initialised ``paper``-preset models
(widths 64-512) and calibrates INT8 on a random volume: the figures are speed, not accuracy.
Ratios to torch FP32 are measured in the same run, on the same inputs.

    python -m spikeseg.benchmarks.latency --height 160 --width 192 --threads 2 --out bench/latency
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spikeseg.benchmarks.bench import TorchEngine, peak_shares
from spikeseg.export.graphs import export_onnx, onnx_to_openvino
from spikeseg.export.quantize import calibration_feeds, quantize_onnxruntime, quantize_openvino
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.bundle import ModelFile
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.energy import measure_conv_peaks
from spikeseg.runtime.inference import OrtEngine, OvEngine, feed_back
from spikeseg.runtime.system import physical_cores
from spikeseg.snn.models import ModelConfig, build_model


def time_engine(engine, spec: ViewSpec, seq: np.ndarray, warmup: int = 2) -> float:
    """Median seconds per slice over the sequence, one slice per call, state fed back as in the
    runtime; only the engine call is timed."""
    times = []

    def timed(feeds: dict) -> dict:
        t0 = time.perf_counter()
        out = engine(feeds)
        times.append(time.perf_counter() - t0)
        return out

    for _ in feed_back(timed, spec, seq, batch=1):
        pass
    return statistics.median(times[warmup:])


def run(preset: str, h: int, w: int, threads: int, steps: int, calib_items: int, log=print) -> list[dict]:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    volume = rng.random((4, h, w, max(steps, 8)), dtype=np.float32)  # axial view: slices are (h, w)
    seq = np.ascontiguousarray(np.moveaxis(volume, 3, 0))
    rows = []
    peaks = measure_conv_peaks(threads)
    log(f"this CPU's peaks at {threads} threads (OpenVINO 3x3 conv probe): FP32 {2 * peaks['fp32'] / 1e9:.0f} GOP/s, "
        f"INT8 {2 * peaks['int8'] / 1e9 if peaks['int8'] else float('nan'):.0f} GOP/s ({peaks['int8_kernel']})")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for arch in ("useg", "spiking-useg"):
            torch.manual_seed(0)
            model = build_model(ModelConfig.preset(arch, preset)).eval()
            params = sum(p.numel() for p in model.parameters())
            spec = export_onnx(model, h, w, tmp / f"{arch}.onnx")
            onnx_to_openvino(tmp / f"{arch}.onnx", tmp / f"{arch}.xml")
            feeds = calibration_feeds(OrtEngine(ModelFile.local(tmp / f"{arch}.onnx"), "fp32", threads), spec, [volume], "axial",
                                      max_items=calib_items)
            quantize_openvino(tmp / f"{arch}.xml", tmp / f"{arch}_int8.xml", feeds)
            quantize_onnxruntime(tmp / f"{arch}.onnx", tmp / f"{arch}_int8.onnx", feeds)
            engines = {"torch fp32": TorchEngine(model, spec, threads),
                       "onnxruntime fp32": OrtEngine(ModelFile.local(tmp / f"{arch}.onnx"), "fp32", threads),
                       "onnxruntime int8": OrtEngine(ModelFile.local(tmp / f"{arch}_int8.onnx", "int8"), "int8", threads),
                       "openvino fp32": OvEngine(ModelFile.local(tmp / f"{arch}.xml"), "fp32", threads),
                       "openvino int8": OvEngine(ModelFile.local(tmp / f"{arch}_int8.xml", "int8"), "int8", threads)}
            base = None
            for name, engine in engines.items():
                s = time_engine(engine, spec, seq[:steps])
                base = base or s
                shares = peak_shares(spec.dense_macs_per_slice, s, name.split()[-1], peaks)
                rows.append({"architecture": arch, "engine": name, "compute_precision": engine.compute_precision,
                             "ms_per_slice": 1000 * s, "x_vs_torch_fp32": base / s, "parameters": params, **shares})
                log(f"{arch:<13} {name:<17} {1000 * s:8.1f} ms/slice  x{base / s:4.1f} vs torch fp32  "
                    f"{shares['gops']:6.1f} GOP/s  x{shares['x_bound']:.1f} the bound  ({engine.compute_precision})")
    return rows


def markdown(rows: list[dict], preset: str, h: int, w: int, threads: int) -> str:
    out = [f"Per-slice latency, `{preset}` preset, {h}x{w} slices, {threads} threads, batch 1 "
           f"(SNN: one time step with the membrane state fed back)\n",
           "| model | engine | compute precision | ms / slice | x vs torch FP32 | GOP/s | % FP32 peak | % INT8 peak "
           "| bound ms (ops / peak) |", "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
    for r in rows:
        bound = f"{1000 * r['bound_s']:.1f}" if r["bound_s"] else "-"
        out.append(f"| {r['architecture']} ({r['parameters'] / 1e6:.2f} M params) | {r['engine']} | "
                   f"{r['compute_precision']} | {r['ms_per_slice']:.1f} | {r['x_vs_torch_fp32']:.2f} | "
                   f"{r['gops']:.0f} | {pct(r['pct_fp32_peak'])} | {pct(r['pct_int8_peak'])} | {bound} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--threads", type=int, default=physical_cores(), help="default: the physical cores")
    p.add_argument("--steps", type=int, default=20, help="slices timed per engine (median)")
    p.add_argument("--calib-items", type=int, default=16)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows = run(a.preset, a.height, a.width, a.threads, a.steps, a.calib_items)
    md = markdown(rows, a.preset, a.height, a.width, a.threads)
    print(md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        write_text(a.out / "latency.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
