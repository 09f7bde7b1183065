"""Energy per case and roofline latency per hardware profile, from operation counts.

Energy = MACs x E_MAC + ACs x E_AC, with the profile's energies for the model's precision.
Which counts enter depends on how the hardware executes the network (``execution`` in
``hardware_profiles.json``): a CPU runs the dense graph, so every MAC is paid whatever the
spikes (dense MACs x E_MAC); event-driven hardware pays MACs for analog-input layers and ACs
only for the spikes that arrive (effective counts, the NeuroBench/syops convention).

Latency on any profile but ``host`` is a roofline projection, and labelled as one:
max(dense MACs / peak MAC/s, bytes moved / bandwidth). ``host`` is measured once (a convolution
through OpenVINO in FP32 and INT8, and a memory-copy probe) and cached in
``$XDG_CACHE_HOME/spikeseg/host_profile.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from spikeseg.runtime.atomic import write_json
from spikeseg.runtime.bundle_spec import LayerSpec, ViewSpec
from spikeseg.runtime.errors import InputError

PROFILES_FILE = Path(__file__).with_name("hardware_profiles.json")
HOST_CACHE_VERSION = 2


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, dict[str, Any]]:
    data = json.loads(PROFILES_FILE.read_text())
    return data["profiles"]


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "spikeseg" / "host_profile.json"


#: The peak probe: one 3x3 convolution, 256 -> 256 channels on 32x32, the shape of a U-Net's
#: middle layers, big enough to keep the vector units busy (0.6 GMAC per call).
PROBE_CHANNELS, PROBE_SIZE = 256, 32


def _probe_model(int8: bool):
    import openvino as ov
    import openvino.opset13 as ops

    c, n = PROBE_CHANNELS, PROBE_SIZE
    x = ops.parameter([1, c, n, n], np.float32, name="x")
    weights = ops.constant(np.random.default_rng(0).uniform(-1, 1, (c, c, 3, 3)).astype(np.float32))
    inp = x
    if int8:  # FakeQuantize on both operands: OpenVINO's CPU plugin then runs the conv in u8 x i8
        def const(v: float):
            return ops.constant(np.array(v, np.float32))
        inp = ops.fake_quantize(x, const(0.0), const(2.55), const(0.0), const(2.55), 256)
        weights = ops.fake_quantize(weights, const(-1.27), const(1.27), const(-1.27), const(1.27), 255)
    y = ops.relu(ops.convolution(inp, weights, [1, 1], [1, 1], [1, 1], [1, 1]))
    return ov.Model([y], [x]), c * c * 9 * n * n


def measure_conv_peaks(threads: int, seconds: float = 0.5) -> dict[str, Any]:
    """MAC/s this CPU reaches on a convolution through OpenVINO, FP32 and INT8, at ``threads``.

    Why a convolution through the same engine, not a GEMM in numpy: it is the operation the
    bundles spend their time in, compiled the way the runtime compiles them (f32 hint, latency
    mode, one stream), so "x % of peak" compares like with like. The INT8 figure is kept only if
    OpenVINO really chose an integer kernel (read back from the compiled model): without VNNI
    or AMX, INT8 buys about 2x over FP32, not 4x. Values are None where OpenVINO is missing."""
    try:
        import openvino as ov
    except ImportError:
        return {"fp32": None, "int8": None, "int8_kernel": None}
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    out: dict[str, Any] = {}
    x = np.random.default_rng(1).uniform(0, 2.55, (1, PROBE_CHANNELS, PROBE_SIZE, PROBE_SIZE)).astype(np.float32)
    for precision in ("fp32", "int8"):
        model, macs = _probe_model(precision == "int8")
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        request.infer({0: x})  # warm up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            request.infer({0: x})
            reps += 1
        out[precision] = reps * macs / (time.perf_counter() - t0)
        if precision == "int8":
            kernels = {str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in compiled.get_runtime_model().get_ops()
                       if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
            out["int8_kernel"] = ",".join(sorted(kernels))
            if not kernels & {"u8", "i8"}:
                out["int8"] = None
    return out


def measure_host(seconds: float = 0.5) -> dict[str, Any]:
    """Peak MAC/s (a convolution through OpenVINO, FP32 and INT8; numpy GEMM where OpenVINO is
    missing) and copy bandwidth of this machine, measured now."""
    from spikeseg.runtime.system import physical_cores

    threads = physical_cores()
    conv = measure_conv_peaks(threads, seconds)
    if not conv["fp32"]:
        n = 512
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        b = a.T.copy()
        a @ b  # warm up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        conv["fp32"] = reps * n**3 / (time.perf_counter() - t0)
        probe = f"numpy float32 GEMM {n}x{n}, measured (OpenVINO missing)"
    else:
        probe = f"OpenVINO 3x3 conv {PROBE_CHANNELS}ch {PROBE_SIZE}x{PROBE_SIZE}, {threads} threads, measured"
    buf = np.ones(32 * 2**20 // 4, np.float32)
    dst = np.empty_like(buf)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        np.copyto(dst, buf)
        reps += 1
    bw = 2 * buf.nbytes * reps / (time.perf_counter() - t0) / 1e9
    return {"description": f"this machine ({platform.machine()}), measured", "architecture": platform.machine(),
            "execution": "dense", "energy_pj": {"fp32": {"mac": None, "ac": None}, "int8": {"mac": None, "ac": None}},
            "peak_macs_per_s": {"fp32": conv["fp32"], "int8": conv["int8"]},
            "memory_bandwidth_gb_s": bw, "power_w": None,
            "sources": {"peak_macs_per_s": probe,
                        "memory_bandwidth_gb_s": "numpy copy of 32 MiB, measured (read + write)",
                        "energy_pj": "not measurable here (no power counter); set power_w to derive it"},
            "cache_version": HOST_CACHE_VERSION}


def host_profile() -> dict[str, Any]:
    path = _cache_path()
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("cache_version") == HOST_CACHE_VERSION:
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    prof = measure_host()
    try:
        write_json(path, prof)
    except OSError:
        pass  # a read-only home is no reason to fail a segmentation
    return prof


#: what a profile's name may be (it becomes a column and a report key)
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
EXECUTIONS = ("dense", "event-driven")
#: a profiles file is a few kB; far more is not one
MAX_PROFILES_BYTES = 1 << 20


def load_profiles_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Hardware profiles a user adds (``spikeseg profile --profiles FILE``), in the built-in
    file's schema (``runtime/hardware_profiles.json``), every field checked: a wrong energy must
    not look like a right one, and every number needs its source."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PROFILES_BYTES:
            raise InputError(path, f"over {MAX_PROFILES_BYTES} bytes: not a hardware profiles file")
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != 1 or not isinstance(data.get("profiles"), dict):
        raise InputError(path, 'expected {"schema_version": 1, "profiles": {NAME: {...}}} as in the built-in '
                               "hardware_profiles.json")
    builtin = set(builtin_profiles()) | {"host"}
    out = {}
    for name, prof in data["profiles"].items():
        if not isinstance(name, str) or not _PROFILE_NAME.match(name):
            raise InputError(path, f"profile name {name!r}: lower-case letters, digits and . _ - only")
        if name in builtin:
            raise InputError(path, f"profile {name!r} would shadow the built-in one: choose another name")
        out[name] = check_profile(prof, f"{path}: profile {name!r}")
    return out


def check_profile(prof: Any, where: str) -> dict[str, Any]:
    """One profile's fields: execution, energies (pJ per MAC and per AC, per precision, >= 0 or
    null), optional peaks and bandwidth, and a source for the energies."""
    def bad(problem: str) -> InputError:
        return InputError(None, f"{where}: {problem}")

    def number(v: Any, what: str) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise bad(f"{what} must be a number >= 0 or null, not {v!r}")
        return float(v)

    if not isinstance(prof, dict):
        raise bad("must be an object")
    if prof.get("execution") not in EXECUTIONS:
        raise bad(f"execution must be one of {list(EXECUTIONS)}, not {prof.get('execution')!r}")
    energy, peaks = prof.get("energy_pj"), prof.get("peak_macs_per_s", {"fp32": None, "int8": None})
    if not isinstance(energy, dict) or set(energy) != {"fp32", "int8"} or not all(
            isinstance(energy[p], dict) and set(energy[p]) == {"mac", "ac"} for p in energy):
        raise bad('energy_pj must be {"fp32": {"mac": .., "ac": ..}, "int8": {"mac": .., "ac": ..}}')
    if not isinstance(peaks, dict) or set(peaks) != {"fp32", "int8"}:
        raise bad('peak_macs_per_s must be {"fp32": .., "int8": ..} (null where unknown)')
    sources = prof.get("sources")
    if not isinstance(sources, dict) or not isinstance(sources.get("energy_pj"), str) or not sources["energy_pj"].strip():
        raise bad("sources.energy_pj must say where the energies come from")
    return {"description": str(prof.get("description", "")), "architecture": str(prof.get("architecture", "")),
            "execution": prof["execution"],
            "energy_pj": {p: {k: number(energy[p][k], f"energy_pj.{p}.{k}") for k in ("mac", "ac")} for p in energy},
            "peak_macs_per_s": {p: number(peaks[p], f"peak_macs_per_s.{p}") for p in peaks},
            "memory_bandwidth_gb_s": number(prof.get("memory_bandwidth_gb_s"), "memory_bandwidth_gb_s"),
            "power_w": number(prof.get("power_w"), "power_w"),
            "sources": {str(k): str(v) for k, v in sources.items()}, "user_defined": True}


def profiles(names: str = "all", extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``all``, ``builtin`` (all but ``host``) or a comma list of profile names (``host`` is
    measured on first use); ``extra``: profiles from :func:`load_profiles_file`, offered beside
    the built-in ones (``all`` includes them)."""
    table = {**builtin_profiles(), **(extra or {})}
    if names in ("all", "builtin"):
        wanted = list(table) + (["host"] if names == "all" else [])
    else:
        wanted = [n.strip() for n in names.split(",")]
    out = {}
    for n in wanted:
        if n == "host":
            out[n] = host_profile()
        elif n in table:
            out[n] = table[n]
        else:
            raise InputError(PROFILES_FILE, f"no hardware profile {n!r}; have {sorted(table) + ['host']}")
    return out


def case_energy(counts: dict[str, float], precision: str, profile: dict[str, Any]) -> dict[str, Any]:
    """Joules for one case from ``dense_macs``, ``effective_macs``, ``effective_acs``."""
    e = profile["energy_pj"][precision]
    notes = []
    if profile["execution"] == "dense":
        if e["mac"] is None:
            return {"joules": None, "basis": "dense", "note": profile["sources"].get("energy_pj", "")}
        joules = counts["dense_macs"] * e["mac"] * 1e-12
        return {"joules": joules, "basis": "dense MACs x E_MAC"}
    if not counts.get("counted", True):
        return {"joules": None, "basis": "not counted",
                "note": "event-driven energy needs the synaptic operations: segment with --count-ops"}
    if e["mac"] is None and counts["effective_acs"] == 0:
        return {"joules": None, "basis": "not applicable",
                "note": "no part of this network runs here (analog-input layers only)"}
    joules = counts["effective_acs"] * e["ac"] * 1e-12
    if e["mac"] is None:
        if counts["effective_macs"] > 0:
            notes.append(f"{counts['effective_macs']:.3g} MACs of analog-input layers not executable here: left out")
    else:
        joules += counts["effective_macs"] * e["mac"] * 1e-12
    out = {"joules": joules, "basis": "effective MACs x E_MAC + ACs x E_AC"}
    if notes:
        out["note"] = "; ".join(notes)
    return out


def roofline_seconds(dense_macs: float, bytes_moved: float, precision: str, profile: dict[str, Any]) -> float | None:
    """Projected latency: the slower of compute at peak and memory traffic at full bandwidth."""
    peak = profile["peak_macs_per_s"][precision]
    bw = profile["memory_bandwidth_gb_s"]
    if not peak:
        return None
    t = dense_macs / peak
    if bw:
        t = max(t, bytes_moved / (bw * 1e9))
    return t


def bytes_per_slice(layers: Iterable[LayerSpec], precision: str) -> float:
    """Weights plus each layer's input and output activations, once per slice (a lower bound)."""
    width = 1 if precision == "int8" else 4
    total = 0.0
    for layer in layers:
        positions = math.prod(layer.grid)
        weights = layer.in_channels * layer.out_channels * math.prod(layer.kernel)
        activations = layer.in_channels * positions + layer.out_channels * positions * layer.output_scale
        total += (weights + activations) * width
    return total


def energy_table(view_counts: dict[str, dict[str, Any]], view_specs: dict[str, ViewSpec], precision: str,
                 names: str = "all", extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per profile: energy per view and for the ensemble, and the roofline latency."""
    out: dict[str, Any] = {}
    for name, prof in profiles(names, extra).items():
        per_view, total, latency = {}, 0.0, 0.0
        complete = True
        for view, counts in view_counts.items():
            e = case_energy(counts, precision, prof)
            per_view[view] = e
            if e["joules"] is None:
                complete = False
            else:
                total += e["joules"]
            moved = bytes_per_slice(view_specs[view].layers, precision) * counts["slices"]
            t = roofline_seconds(counts["dense_macs"], moved, precision, prof)
            latency = None if t is None or latency is None else latency + t
        out[name] = {"execution": prof["execution"], "joules_per_case": total if complete else None,
                     "per_view": per_view,
                     "latency_s": None if name == "host" else latency,
                     "latency_kind": "measured (see seconds)" if name == "host" else "roofline projection"}
    return out
