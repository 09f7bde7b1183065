"""Per-slice latency of one view model at the paper's scale: torch FP32, ONNX Runtime FP32/INT8,
OpenVINO FP32/INT8, for the stateless twin and the SNN step (explicit state fed back).

Every engine runs the deployed graph (the operation counters pruned, as ``spikeseg segment``
runs a case) except ``openvino int8 + counters``, the same INT8 graph with its counters, which
``spikeseg profile`` and ``segment --count-ops`` run: their difference is what counting costs.

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
from typing import Any

import numpy as np
import torch

from spikeseg.benchmarks.bench import median_peaks, peak_shares
from spikeseg.export.graphs import export_onnx, onnx_to_openvino
from spikeseg.snn.graphs import TorchEngine
from spikeseg.export.quantize import calibration_feeds, quantize_onnxruntime, quantize_openvino
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.bundle import ModelFile
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.energy import measure_conv_peaks
from spikeseg.runtime.inference import OrtEngine, OvEngine, feed_back
from spikeseg.runtime.tables import refuse_existing_results
from spikeseg.cli import add_threads_argument
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


def run(preset: str, h: int, w: int, threads: int, steps: int, calib_items: int, rounds: int = 3,
        log=print) -> list[dict]:
    """Each engine timed in ``rounds`` interleaved rounds, each round also probing the CPU's
    peaks: on a shared machine the clock drifts by tens of percent within minutes, and timing
    one engine after another would hand that drift to whichever came last. Reported: the median
    over rounds of each engine's median ms per slice, and the median of the peaks."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    volume = rng.random((4, h, w, max(steps, 8)), dtype=np.float32)  # axial view: slices are (h, w)
    seq = np.ascontiguousarray(np.moveaxis(volume, 3, 0))
    probes: list[dict] = []
    timed: list[tuple[str, str, int, ViewSpec, Any, list[float]]] = []  # arch, engine name, params, spec, engine, s
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
                       "openvino int8": OvEngine(ModelFile.local(tmp / f"{arch}_int8.xml", "int8"), "int8", threads),
                       "openvino int8 + counters": OvEngine(ModelFile.local(tmp / f"{arch}_int8.xml", "int8"), "int8",
                                                            threads, counting=True)}
            times: dict[str, list[float]] = {name: [] for name in engines}
            for r in range(rounds):
                probes.append(measure_conv_peaks(threads, seconds=0.3))
                for name, engine in engines.items():
                    times[name].append(time_engine(engine, spec, seq[:steps]))
                log(f"{arch} round {r + 1}/{rounds}: " + ", ".join(f"{n} {1000 * t[-1]:.0f}" for n, t in times.items())
                    + " ms/slice")
            timed += [(arch, name, params, spec, engine, times[name]) for name, engine in engines.items()]
    peaks = median_peaks(probes)
    log(f"this CPU's peaks at {threads} threads (OpenVINO 3x3 conv probe, median of {len(probes)}): "
        f"FP32 {2 * peaks['fp32'] / 1e9:.0f} GOP/s, INT8 "
        + (f"{2 * peaks['int8'] / 1e9:.0f} GOP/s ({probes[0]['int8_kernel']})" if peaks["int8"] else "not measured"))
    rows, base = [], {}
    for arch, name, params, spec, engine, t in timed:
        s = statistics.median(t)
        base.setdefault(arch, s)  # torch fp32 comes first
        shares = peak_shares(spec.dense_macs_per_slice, s, engine.precision, peaks)
        rows.append({"architecture": arch, "engine": name, "compute_precision": engine.compute_precision,
                     "ms_per_slice": 1000 * s, "x_vs_torch_fp32": base[arch] / s, "parameters": params,
                     "peak_fp32_gops": 2 * peaks["fp32"] / 1e9,
                     "peak_int8_gops": 2 * peaks["int8"] / 1e9 if peaks["int8"] else None, **shares})
    return rows


def markdown(rows: list[dict], preset: str, h: int, w: int, threads: int) -> str:
    peak_int8 = f"{rows[0]['peak_int8_gops']:.0f}" if rows[0]["peak_int8_gops"] else "not measured"
    out = [f"Per-slice latency, `{preset}` preset, {h}x{w} slices, {threads} threads, batch 1 "
           f"(SNN: one time step with the membrane state fed back); this CPU's peaks in the same run "
           f"(3x3 conv through OpenVINO): FP32 {rows[0]['peak_fp32_gops']:.0f} GOP/s, INT8 {peak_int8} GOP/s\n",
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
    add_threads_argument(p, "inference threads")
    p.add_argument("--steps", type=int, default=12, help="slices timed per engine and round (median)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all engines (median of rounds)")
    p.add_argument("--calib-items", type=int, default=16)
    p.add_argument("--out", type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    a = p.parse_args(argv)
    if a.out:
        refuse_existing_results(a.out / "latency.md", a.overwrite)
    rows = run(a.preset, a.height, a.width, a.threads, a.steps, a.calib_items, a.rounds)
    md = markdown(rows, a.preset, a.height, a.width, a.threads)
    print(md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        write_text(a.out / "latency.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
