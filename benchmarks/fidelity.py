"""Does the Spiking U-Seg-Net learn as well as its twin? One run, equal wall-clock budget, same cases.

``python -m spikeseg.benchmarks.fidelity --train DIR --test DIR --out DIR --minutes M`` trains, per view
(sagittal, coronal, axial), with the same budget of M minutes per view model:

- ``snn``        the Spiking U-Seg-Net with the default recipe (``spikeseg train`` defaults);
- ``snn-reset``  the same with the membrane reset every slice: does the state earn its keep?
- ``twin``       the ReLU U-Seg-Net (per slice, stateless);
- ``twin-clstm`` the ReLU U-Seg-Net + ConvLSTM (inter-slice context, the paper's best baseline);
- ``snn-warm``   a twin trained for ``--warm-share`` of the budget, then the SNN converted from
                 it (threshold balancing, ``--convert balance``) and trained for the rest (the
                 twin's time counted in the SNN's budget);
- ``snn-warm-reset`` the same with the membrane reset every slice (converted and fine-tuned
                 that way): does the state earn its keep in the recipe?
- ``snn-warm-copy`` the same with the twin's weights copied as they are (``--convert copy``);
- ``snn-distill`` the same, the SNN also matching the twin's probabilities (``--distill 1``);
- ``snn-warm-subtract`` ``snn-warm`` with the membrane reset by subtraction (``--reset subtract``);
- ``snn-warm-qcfs`` ``snn-warm`` converted from a twin whose last epochs ran QCFS
                 (``--twin-activation qcfs``), and ``snn-warm-qcfs-subtract`` both levers;
- ``snn-warm-twin``, ``snn-warm-twin-qcfs`` the warm-started models' twins, scored as twins.

and scores each view and the three-view ensemble (voxel-wise mean, as the runtime fuses; the
stateful models run both ways as the runtime runs them, unless ``--one-way``) on
held-out cases at their native resolution: Dice and HD95 per ET/TC/WT, NLL (does the
ensemble beat its best view?), ECE, and operations per case (effective MACs + ACs of the SNN
counted as NeuroBench does, dense MACs of the twins), and each model's ensemble gap to the
twin's with a paired bootstrap interval over the cases (``paired_gap``: with 4 held-out cases an
ET gap moves by several points with the choice of cases; pass a larger ``--test`` folder to
narrow it). Writes ``results.md`` and ``results.csv`` (``ops.json`` holds the per-case ensemble
Dice); training runs stay in ``OUT/runs`` (``metrics.csv``, ``activity.csv``). Finished training
runs are kept, so ``--overwrite`` with the same options and another ``--test`` folder only
scores them again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikeseg.benchmarks.paired_gap import gap_rows
from spikeseg.cli import main as cli
from spikeseg.export.graphs import layer_table
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.case_io import find_cases, load_case
from spikeseg.runtime.ensemble import fuse
from spikeseg.runtime.labels import REGIONS, labels_to_regions
from spikeseg.runtime.metrics import ece, nll, region_scores, undefined_regions
from spikeseg.runtime.preprocess import VIEWS, model_space, to_native_space
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training.predict import predict_view
from spikeseg.training.run_folder import RunFolder, load_run

MODELS: dict[str, tuple[str, list[str]]] = {
    "snn": ("spiking-useg", []),
    "snn-reset": ("spiking-useg", ["--state-reset"]),
    "twin": ("useg", []),
    "twin-clstm": ("useg-clstm", []),
    "snn-warm": ("spiking-useg", []),
    "snn-warm-reset": ("spiking-useg", ["--state-reset"]),
    "snn-warm-copy": ("spiking-useg", ["--convert", "copy"]),
    "snn-distill": ("spiking-useg", ["--distill", "1"]),
    "snn-warm-subtract": ("spiking-useg", ["--reset", "subtract"]),
    "snn-warm-qcfs": ("spiking-useg", []),
    "snn-warm-qcfs-subtract": ("spiking-useg", ["--reset", "subtract"]),
    "snn-warm-twin": ("useg", []),
    "snn-warm-twin-qcfs": ("useg", ["--twin-activation", "qcfs"]),
}
#: Models started from a twin trained for ``--warm-share`` of their budget, and that twin (one
#: per view, shared: its time is counted in each of them; scored as a row of its own when named).
TEACHERS = {"snn-warm": "snn-warm-twin", "snn-warm-reset": "snn-warm-twin", "snn-warm-copy": "snn-warm-twin",
            "snn-distill": "snn-warm-twin", "snn-warm-subtract": "snn-warm-twin",
            "snn-warm-qcfs": "snn-warm-twin-qcfs", "snn-warm-qcfs-subtract": "snn-warm-twin-qcfs"}


def train_model(name: str, train_dir: Path, runs: Path, minutes: float, common: list[str],
                warm_share: float, views: tuple[str, ...] = tuple(VIEWS)) -> float:
    """Train one model's views (views already finished in ``runs`` are kept, so an
    interrupted benchmark resumes); returns the training seconds the runs recorded."""
    arch, extra = MODELS[name]
    spent = 0.0
    for view in views:
        run = runs / name / view
        budget, init = minutes * (warm_share if name in TEACHERS.values() else 1.0), []
        if name in TEACHERS:
            twin_run = runs / TEACHERS[name] / view
            if not RunFolder(twin_run).finished():
                _train(train_dir, twin_run, MODELS[TEACHERS[name]][0], view, minutes * warm_share,
                       common + MODELS[TEACHERS[name]][1])
            spent += _seconds(twin_run)
            budget, init = minutes * (1 - warm_share), ["--init-from", str(twin_run)]
        if not RunFolder(run).finished():
            _train(train_dir, run, arch, view, budget, common + extra + init)
        spent += _seconds(run)
    return spent


def _seconds(run: Path) -> float:
    return float(RunFolder(run).summary()["seconds"])


def _train(train_dir: Path, run: Path, arch: str, view: str, minutes: float, args: list[str]) -> None:
    rc = cli(["train", "--data", str(train_dir), "--out", str(run), "--arch", arch, "--view", view,
              "--epochs", "100000", "--max-minutes", f"{minutes:.3f}", "--quiet", "--resume", *args])
    if rc != 0:
        raise SystemExit(f"training {run} failed (exit {rc})")


def case_ops(model, image: np.ndarray, view: str, reset: bool, both_ways: bool) -> dict[str, float]:
    """Operations for one case over every pass made: effective MACs (analog input), ACs (spike
    input), dense MACs."""
    from spikeseg.runtime.preprocess import to_view

    seq = torch.from_numpy(np.ascontiguousarray(to_view(image, view), dtype=np.float32))
    passes = [seq, seq.flip(0)] if both_ways and model.stateful and not reset else [seq]
    layers = model.connection_layers()
    # dense MACs as the bundle states them (what OpenVINO counts in the graph)
    dense_slice = sum(layer.dense_macs_per_slice for layer in layer_table(model, *seq.shape[-2:]))
    macs = acs = 0.0
    with torch.no_grad():
        for sequence in passes:
            state = model.init_state(1, *seq.shape[-2:])
            for k in range(sequence.shape[0]):
                if reset:
                    state = [torch.zeros_like(s) for s in state]
                _, state, ops, _, _ = model.step_counted(sequence[k][None], state)
                for (_, _, spikes), o in zip(layers, ops):
                    if spikes:
                        acs += float(o.sum())
                    else:
                        macs += float(o.sum())
    return {"effective_macs": macs, "effective_acs": acs, "dense_macs": dense_slice * seq.shape[0] * len(passes)}


def evaluate(runs: Path, names: list[str], test_dir: Path, both_ways: bool = True,
             views: tuple[str, ...] = tuple(VIEWS), device: str | torch.device = "cpu",
             ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``both_ways``: stateful models run as the runtime runs them by default, their slices front
    to back and back to front, the two passes averaged. ``views``: the ensemble's views (one view:
    the "ensemble" row is that view). ``device``: where the models predict (counted operations
    are counted on the CPU)."""
    cases = [load_case(c) for c in find_cases(test_dir)]
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    counted = "axial" if "axial" in views else views[0]
    for name in names:
        probs: dict[str, list[np.ndarray]] = {v: [] for v in views}
        ops = None
        for view in views:
            model, run, params = load_run(runs / name / view)
            model.to(device)
            reset = run.settings.slices.state_reset
            for i, case in enumerate(cases):
                prepared = model_space(case, params)
                image, space = prepared.image, prepared.space
                p = predict_view(model, image, view, device, reset_every_step=reset, both_ways=both_ways)
                probs[view].append(to_native_space(p, space))
                if ops is None and view == counted and i == 0:
                    ops = case_ops(model.cpu(), image, view, reset, both_ways)
                    model.to(device)
        for view in (*views, "ensemble"):
            per_case = probs[view] if view != "ensemble" else [fuse([probs[v][i] for v in views])
                                                               for i in range(len(cases))]
            per_metric = score_cases(per_case, cases)
            rows.append({"model": name, "view": view, **{k: float(np.nanmean(v)) for k, v in per_metric.items()},
                         "undefined_regions": undefined_regions(per_metric)})
            if view == "ensemble":
                extras[name] = {"ops_per_case_axial": ops,
                                "ensemble_dice_per_case": {f"dice_{r}": per_metric[f"dice_{r}"] for r in REGIONS}}
    return rows, extras


def score_cases(probs: list[np.ndarray], cases) -> dict[str, list[float]]:
    """Each metric per case, in the order of ``cases`` (paired across models for the gap table).
    A region empty in both prediction and reference scores NaN (Dice and HD95 undefined) and is
    left out of the means, the official BraTS rule ``runtime.metrics`` and ``spikeseg bench`` follow."""
    out: dict[str, list[float]] = {}
    for prob, case in zip(probs, cases):
        ref = labels_to_regions(case.label, case.files.convention).astype(bool)
        for k, v in region_scores(prob, ref, case.spacing).items():
            out.setdefault(k, []).append(v)
        out.setdefault("nll", []).append(nll(prob, ref))
        out.setdefault("ece", []).append(ece(prob, ref))
    return out


def report(rows: list[dict[str, Any]], extras: dict[str, Any], seconds: dict[str, float],
           minutes: float, args: argparse.Namespace) -> str:
    views = getattr(args, "views", ",".join(VIEWS))
    lines = [f"# Fidelity: Spiking U-Seg-Net vs twins, equal budget ({minutes:g} min per view model)", "",
             f"Train {args.train}, test {args.test} ({len(find_cases(args.test))} held-out cases), "
             f"preset {args.preset}, {args.spacing} mm grid, seed {args.seed}, views {views} (the ensemble is "
             f"their mean), device {getattr(args, 'device_used', 'cpu')}. Dice/HD95 at native resolution. "
             + ("Stateful models ran their slices front to back only (--one-way)." if args.one_way else
                "Stateful models ran their slices both ways, the two passes averaged (the runtime's default).")
             + f" Regions empty in both prediction and reference (left out of the means, the official rule): "
               f"{sum(r['undefined_regions'] for r in rows)} region-case pairs over all rows.", "",
             "| model | view | Dice ET | Dice TC | Dice WT | HD95 ET | HD95 TC | HD95 WT | NLL | ECE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['view']} | {r['dice_ET']:.3f} | {r['dice_TC']:.3f} | {r['dice_WT']:.3f} | "
                     f"{r['hd95_ET']:.1f} | {r['hd95_TC']:.1f} | {r['hd95_WT']:.1f} | {r['nll']:.4f} | {r['ece']:.4f} |")
    lines += ["", "| model | train s (all views) | ensemble NLL vs best view | ops per case (one view) |",
              "|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        best = min(r["nll"] for r in mine if r["view"] != "ensemble")
        ens = next(r["nll"] for r in mine if r["view"] == "ensemble")
        o = extras[name]["ops_per_case_axial"]
        ops = (f"{o['effective_macs']:.2e} MAC + {o['effective_acs']:.2e} AC (dense {o['dense_macs']:.2e})"
               if MODELS[name][0] == "spiking-useg" else f"{o['dense_macs']:.2e} MAC (dense)")
        lines.append(f"| {name} | {seconds.get(name, float('nan')):.0f} | {100 * (ens - best) / best:+.0f} % | {ops} |")
    return "\n".join(lines + gap_table(extras)) + "\n"


def gap_table(extras: dict[str, Any]) -> list[str]:
    """Each model's three-view ensemble against the twin's on the same cases, in Dice points,
    with the paired bootstrap interval over the cases: is the gap larger than the cases move it?"""
    if "twin" not in extras:
        return []
    twin = extras["twin"]["ensemble_dice_per_case"]
    n = len(twin["dice_WT"])
    header = (f"Gap to the twin (three-view ensembles, twin minus model, Dice points; 95 % paired bootstrap "
              f"interval over the {n} cases; cases where the model is behind):")
    pairs = [(name, twin, e["ensemble_dice_per_case"]) for name, e in extras.items() if name != "twin"]
    return ["", header, "", *gap_rows(pairs, REGIONS)]


def add_budget_arguments(p: argparse.ArgumentParser, minutes: float, preset: str, spacing: str, per: str) -> None:
    """What every equal-budget model comparison asks: cases, output, budget, size, grid, seed, and
    whether earlier results may be replaced."""
    p.add_argument("--train", type=Path, required=True, help="labelled training cases")
    p.add_argument("--test", type=Path, required=True, help="labelled held-out cases")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=minutes, help=f"training budget per {per} (default {minutes:g})")
    p.add_argument("--preset", default=preset, help=f"tiny, small or paper (default {preset})")
    p.add_argument("--spacing", default=spacing, help=f"model grid spacing in mm (default {spacing})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-args", default="", help="extra `spikeseg train` options for every model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --out (its finished training runs are kept)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_budget_arguments(p, minutes=1.3, preset="tiny", spacing="2", per="view model")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--warm-share", type=float, default=0.5,
                   help="share of the warm-started models' budget spent training their twin (default 0.5; "
                        "0.75 from about 4x the default --minutes, where the twin needs the time; at the "
                        "default budget 0.75 leaves the SNN too few epochs: docs/results/fidelity-lab-record.md)")
    p.add_argument("--one-way", action="store_true",
                   help="score stateful models front to back only (the paper's inference; `spikeseg export "
                        "--one-way`), not both ways averaged (the runtime's default)")
    p.add_argument("--views", default=",".join(VIEWS),
                   help="comma list of the views to train and fuse (default all three; the GPU check runs axial)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train and predict (default: CUDA when visible)")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    torch.set_num_threads(2)
    names = [n for n in a.models.split(",") if n]
    unknown = set(names) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}")
    views = tuple(v for v in a.views.split(",") if v)
    if not views or set(views) - set(VIEWS):
        p.error(f"--views {a.views!r}: a comma list from {','.join(VIEWS)}")
    from spikeseg.training.devices import resolve_device

    device = resolve_device(a.device)
    a.device_used = str(device)
    common = ["--preset", a.preset, "--spacing", a.spacing, "--seed", str(a.seed), "--device", device.type,
              *a.train_args.split()]
    runs = a.out / "runs"
    seconds = {}
    for name in names:
        print(f"== training {name} ({a.minutes:g} min per view, {len(views)} views, {device})", flush=True)
        seconds[name] = train_model(name, a.train, runs, a.minutes, common, a.warm_share, views)
    print("== evaluating", flush=True)
    rows, extras = evaluate(runs, names, a.test, both_ways=not a.one_way, views=views, device=device)
    write_text(a.out / "ops.json", json.dumps(extras, indent=2))
    write_results(a.out, report(rows, extras, seconds, a.minutes, a), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
