"""``spikeseg profile``: operations, spike rates and energy per hardware profile, per view and for
the ensemble, in the shape of the paper's Table 3; with ``--twin`` the SNN-vs-twin reduction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spikeseg.runtime.bundle import Bundle, load_bundle
from spikeseg.runtime.energy import energy_table, load_profiles_file, profiles
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.inference import open_engine, run_view
from spikeseg.runtime.opcount import static_counts, view_operations
from spikeseg.runtime.preprocess import load_model_space


def bundle_counts(bundle: Bundle, case_dir: Path | None, backend: str, precision: str,
                  threads: int) -> dict[str, dict[str, Any]]:
    """Per view: dense counts from the graph; effective counts and spike rates when a case is given."""
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
            continue
        engine = open_engine(bundle, view, backend, precision, threads, counting=True)
        res = run_view(engine, spec, image, view)
        out[view] = view_operations(spec, res)
        out[view]["static_dense_macs"] = float(static["macs_per_slice"] * slices)
    return out


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
                  extra: dict[str, dict[str, Any]] | None = None) -> str:
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
    lines.append("* on-chip part only: analog-input layers (MACs) cannot run on that chip; n/a: none of the network can")
    lines.append("energies on CPUs assume full utilisation at the stated power (a floor); host has no power counter here")
    return "\n".join(lines)


def profile_json(bundles: dict[str, tuple[Bundle, dict]], precision: str, hardware: str,
                 extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What the table shows, as data: per bundle the counts per view and for the ensemble and the
    energy per profile; with a twin, the two ratios."""
    out: dict[str, Any] = {"precision": precision, "bundles": {}}
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
                precision: str, threads: int, profiles_file: Path | None = None, as_json: bool = False) -> str:
    """The table (or, ``as_json``, the same as JSON); ``profiles_file`` adds hardware profiles."""
    extra = load_profiles_file(profiles_file) if profiles_file is not None else None
    profiles(hardware, extra)  # validate names early
    items: dict[str, tuple[Bundle, dict]] = {}
    for label, path in (("model", bundle_path), ("twin", twin)):
        if path is None:
            continue
        b = load_bundle(path)
        items[label] = (b, bundle_counts(b, case_dir, backend, precision, threads))
    if twin is not None and set(items["model"][1]) != set(items["twin"][1]):
        raise InputError(twin, "the twin bundle has other views than the model bundle")
    if as_json:
        return json.dumps(profile_json(items, precision, hardware, extra), indent=2)
    return profile_table(items, precision, hardware, extra)
