"""``spikeseg profile``: operations, spike rates, latency and energy per hardware profile, per view
and for the ensemble, in the shape of the paper's Table 3; with ``--twin`` the SNN-vs-twin reduction.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.energy import energy_table, load_profiles_file, profiles
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.inference import Engine, feed_back, open_engine, run_view
from spikeseg.runtime.opcount import static_counts, view_operations
from spikeseg.runtime.preprocess import load_model_space
from spikeseg.runtime.system import cpu_model

#: steps run before the timed ones (graph compilation, caches), as benchmark_app warms up
WARMUP_STEPS = 2


def step_latency(engine: Engine, spec: ViewSpec, iterations: int, seed: int = 0) -> dict[str, float]:
    """Per step of the deployed graph, one slice (or patch) a step with the state fed back as a
    case runs: median, min and max milliseconds, steps per second, and a case's seconds at the
    median. Random input, as OpenVINO's ``benchmark_app`` feeds: a dense graph's time does not
    depend on the values (a spiking one run densely on a CPU neither)."""
    rng = np.random.default_rng(seed)
    seq = rng.standard_normal((WARMUP_STEPS + iterations, spec.in_channels, *spec.slice_shape)).astype(np.float32)
    times: list[float] = []
    start = time.perf_counter()
    for k, _ in enumerate(feed_back(engine, spec, seq, batch=1)):
        now = time.perf_counter()
        if k >= WARMUP_STEPS:
            times.append(now - start)
        start = now
    median = statistics.median(times)
    return {"steps": iterations, "median_ms": 1e3 * median, "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
            "steps_per_second": 1.0 / median, "case_seconds": median * spec.slices_per_case}


def bundle_counts(bundle: Bundle, case_dir: Path | None, backend: str, precision: str,
                  threads: int, iterations: int = 0) -> dict[str, dict[str, Any]]:
    """Per view: dense counts from the graph; effective counts and spike rates when a case is
    given; with ``iterations``, the deployed graph's step latency (:func:`step_latency`)."""
    out: dict[str, dict[str, Any]] = {}
    image = None
    if case_dir is not None:
        image = load_model_space(case_dir, bundle.preprocess).image
    for view in bundle.views:
        spec = bundle.view(view)
        slices = spec.slices_per_case
        static = static_counts(bundle.model_file(view, "onnx", "fp32").path)
        if image is None:
            dense = float(static["macs_per_slice"] * slices)
            out[view] = {"slices": slices, "dense_macs": dense, "effective_macs": None, "effective_acs": None,
                         "membrane_updates": None, "activation_sparsity": None}
        else:
            engine = open_engine(bundle, view, backend, precision, threads, counting=True)
            res = run_view(engine, spec, image, view)
            out[view] = view_operations(spec, res)
            out[view]["static_dense_macs"] = float(static["macs_per_slice"] * slices)
        if iterations:
            deployed = open_engine(bundle, view, backend, precision, threads, counting=False)
            out[view]["latency"] = step_latency(deployed, spec, iterations)
    return out


def latency_lines(counts: dict[str, dict[str, Any]], views: list[str]) -> list[str]:
    """The latency rows of the table; the ensemble's case time is the views' sum (run one after another)."""
    lat = [counts[v]["latency"] for v in views]
    steps = lat[0]["steps"]
    return [f"{'ms per step, median':<34}" + "".join(f"{x['median_ms']:>12.3g}" for x in lat),
            f"{'ms per step, min - max':<34}" + "".join(f"{x['min_ms']:>6.3g}-{x['max_ms']:<5.3g}" for x in lat),
            f"{'steps per second':<34}" + "".join(f"{x['steps_per_second']:>12.3g}" for x in lat),
            f"{'s per case (steps x median)':<34}" + "".join(f"{x['case_seconds']:>12.3g}" for x in lat)
            + f"{sum(x['case_seconds'] for x in lat):>12.3g}",
            f"{'':<34}(latency: {steps} steps after {WARMUP_STEPS} warm-up, one slice a step, random input)"]


def _ensemble(counts: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    keys = ("dense_macs", "effective_macs", "effective_acs", "membrane_updates")
    return {k: (None if any(c[k] is None for c in counts.values()) else sum(c[k] for c in counts.values()))
            for k in keys}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _fmt_energy(e: dict[str, Any] | None) -> str:
    """'-' unknown, 'n/a' nothing of the network runs there, '*' only part of it does."""
    if e is not None and e.get("basis") == "not applicable":
        return "n/a"
    if e is None or e.get("joules") is None:
        return "-"
    if e.get("note"):
        return "n/a" if e["joules"] == 0 else f"{e['joules']:.3g}*"
    return f"{e['joules']:.3g}"


def ratio(a: float, b: float) -> str:
    """``a`` as a multiple of ``b``, e.g. ``2.00x``: never a signed percentage, whose sign readers
    take either way."""
    return f"{a / b:.3g}x"


def profile_table(bundles: dict[str, tuple[Bundle, dict]], precision: str, hardware: str,
                  extra: dict[str, dict[str, Any]] | None = None, backend: str = "", threads: int = 0) -> str:
    lines = []
    views = None
    for label, (bundle, counts) in bundles.items():
        views = list(counts)
        head = f"{'':<34}" + "".join(f"{v:>12}" for v in views) + f"{'ensemble':>12}"
        lines.append(f"{label}: {bundle.architecture} ({bundle.root})")
        lines.append(head)
        ens = _ensemble(counts)
        if all("air_slices_skipped" in counts[v] for v in views):
            lines.append(f"{'slices run, all passes (+ air)':<34}" + "".join(
                f"{counts[v]['slices']:>7} +{counts[v]['air_slices_skipped']:>3}" for v in views))
        for key, name in (("dense_macs", "dense MACs per case"), ("effective_macs", "effective MACs (analog in)"),
                          ("effective_acs", "effective ACs (spikes in)"),
                          ("membrane_updates", "membrane updates (NeuroBench)")):
            lines.append(f"{name:<34}" + "".join(f"{_fmt(counts[v][key]):>12}" for v in views) + f"{_fmt(ens[key]):>12}")
        sp = [counts[v].get("activation_sparsity") for v in views]
        lines.append(f"{'activation sparsity':<34}" + "".join(f"{_fmt(s):>12}" for s in sp))
        if all("latency" in counts[v] for v in views):
            lines += latency_lines(counts, views)
        have_eff = all(c["effective_macs"] is not None for c in counts.values())
        table = energy_table(counts if have_eff else {v: {**c, "effective_macs": 0.0, "effective_acs": 0.0}
                                                      for v, c in counts.items()},
                             {v: bundle.view(v) for v in views}, precision, hardware, extra)
        for name, row in table.items():
            event = row["execution"] == "event-driven"
            per = [None if (event and not have_eff) else row["per_view"][v] for v in views]
            partial = any(p and p.get("note") for p in per)
            total = None if (event and not have_eff) else {"joules": row["joules_per_case"],
                                                            "note": "partial" if partial else None}
            lines.append(f"{'energy J, ' + name:<34}" + "".join(f"{_fmt_energy(e):>12}" for e in per)
                         + f"{_fmt_energy(total):>12}")
        lines.append("")
    if not any(c["effective_macs"] is not None for _, counts in bundles.values() for c in counts.values()):
        lines.append("'-': spikes, effective operations and event-driven energy are counted on a case: "
                     "add --case CASE_FOLDER")
    if len(bundles) == 2:
        (la, (_, ca)), (lb, (_, cb)) = bundles.items()
        ea, eb = _ensemble(ca), _ensemble(cb)
        ops_a = (ea["effective_macs"] or 0) + (ea["effective_acs"] or 0) if ea["effective_macs"] is not None else None
        if ops_a is not None and eb["dense_macs"]:
            lines.append(f"{la} synaptic operations (MACs + ACs): {ratio(ops_a, eb['dense_macs'])} the {lb}'s dense "
                         f"MACs (the paper's Table 3 measure: 0.13x on BraTS 2023)")
        if eb["dense_macs"]:
            lines.append(f"{la} dense MACs: {ratio(ea['dense_macs'], eb['dense_macs'])} the {lb}'s (what a CPU "
                         f"executing the dense graph pays)")
    if any("latency" in c for _, counts in bundles.values() for c in counts.values()):
        lines.append(f"latency measured on {cpu_model()}, {threads} threads, {backend} {precision}")
    lines.append("* on-chip part only: analog-input layers (MACs) cannot run on that chip; n/a: none of the network can")
    lines.append("energies on CPUs assume full utilisation at the stated power (a floor); host has no power counter here")
    return "\n".join(lines)


def profile_json(bundles: dict[str, tuple[Bundle, dict]], precision: str, hardware: str,
                 extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the table shows, as data: per bundle the counts per view and for the ensemble and the
    energy per profile; with a twin, the two ratios."""
    out: dict[str, Any] = {"precision": precision, "cpu": cpu_model(), "bundles": {}}
    for label, (bundle, counts) in bundles.items():
        counted = all(c["effective_macs"] is not None for c in counts.values())
        energy = energy_table(counts if counted else {v: {**c, "effective_macs": 0.0, "effective_acs": 0.0}
                                                      for v, c in counts.items()},
                              {v: bundle.view(v) for v in counts}, precision, hardware, extra)
        if not counted:  # event-driven energy needs the spikes of a case (--case): left out, not zero
            energy = {k: row for k, row in energy.items() if row["execution"] == "dense"}
        out["bundles"][label] = {"path": str(bundle.root), "architecture": bundle.architecture, "views": counts,
                                 "ensemble": _ensemble(counts), "counted_on_a_case": counted, "energy": energy}
    if len(bundles) == 2:
        (la, (_, ca)), (lb, (_, cb)) = bundles.items()
        ea, eb = _ensemble(ca), _ensemble(cb)
        ops_a = (ea["effective_macs"] or 0) + (ea["effective_acs"] or 0) if ea["effective_macs"] is not None else None
        out["ratios"] = {f"{la}_dense_macs_over_{lb}_dense_macs": ea["dense_macs"] / eb["dense_macs"],
                         f"{la}_synaptic_ops_over_{lb}_dense_macs": None if ops_a is None else ops_a / eb["dense_macs"]}
    return out


def run_profile(bundle_path: Path, case_dir: Path | None, twin: Path | None, hardware: str, backend: str,
                precision: str, threads: int, profiles_file: Path | None = None, as_json: bool = False,
                iterations: int = 0) -> str:
    """The table (or, ``as_json``, the same as JSON); ``profiles_file`` adds hardware profiles;
    ``iterations`` steps are timed per view (0: no latency)."""
    if iterations < 0:
        raise InputError(None, f"--iterations must be 0 (no latency) or more, got {iterations}")
    extra = load_profiles_file(profiles_file) if profiles_file is not None else None
    profiles(hardware, extra)  # validate names early
    items: dict[str, tuple[Bundle, dict]] = {}
    for label, path in (("model", bundle_path), ("twin", twin)):
        if path is None:
            continue
        b = load_bundle(path)
        items[label] = (b, bundle_counts(b, case_dir, backend, precision, threads, iterations))
    if twin is not None and set(items["model"][1]) != set(items["twin"][1]):
        raise InputError(twin, "the twin bundle has other views than the model bundle")
    if as_json:
        return json.dumps(profile_json(items, precision, hardware, extra), indent=2)
    return profile_table(items, precision, hardware, extra, backend, threads)
