"""Which layer's binarisation costs the converted Spiking U-Seg-Net its accuracy?

``python -m spikeseg.benchmarks.binarisation --twin TWIN_RUN --data DIR --out DIR`` converts each
view's twin into the SNN exactly as ``spikeseg train --init-from TWIN_RUN`` starts it (threshold
balancing on the same calibration cases, the recipe's initial tau) and scores it before any
fine-tuning on the twin run's own validation cases (``splits.json``), one way, as the trainer
validates: every layer spiking; each layer alone analog (the twin's ReLU in its place over the
layer's spike scale, every other layer spiking); every layer analog, which is the twin again (a
check the table shows beside the twin's own score). A layer whose analog row gains most is
where one spike per neuron per slice loses most.

Why a benchmark: the converted-then-fine-tuned SNN trails its twin most on ET, and longer
fine-tuning does not close it (docs/results/fidelity-lab-record.md); this shows where in the
network the twin's ET is lost at the start.
Writes ``results.md`` and ``results.csv`` to ``--out``; its preprocessed cache goes to
``OUT/preprocessed``; the twin run is only read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import VIEWS, parse_views
from spikeseg.runtime.tables import refuse_existing_results, write_results
from spikeseg.training.config import TrainConfig
from spikeseg.training.conversion import analog_layers, spiking_layers
from spikeseg.training.data import CachedCase, preprocess_dataset
from spikeseg.training.predict import predict_views
from spikeseg.training.run_folder import load_run, twin_run_for
from spikeseg.training.loop import validation_scores
from spikeseg.training.trainer import CONVERSION_CASES, build_view_model
from spikeseg.training.run_folder import RunFolder


def twin_views(twin: Path) -> list[str]:
    """The views a twin run holds: its own, or those of a ``--view all`` folder."""
    if RunFolder(twin).is_run():
        return [RunFolder(twin).record().settings.view]
    views = [v for v in VIEWS if RunFolder(twin / v).is_run()]
    if not views:
        raise InputError(twin, "not a twin run: no config.json here nor in a view folder")
    return views


def _cases(run: Path, ids: list[str], cached: dict[str, CachedCase], data: Path) -> list[CachedCase]:
    missing = [i for i in ids if i not in cached]
    if missing:
        raise InputError(data, f"does not hold the cases {run} was trained on: missing {missing[:3]}")
    return [cached[i] for i in ids]


def view_rows(twin: Path, view: str, data: Path, cache: Path, readout_input: str,
              device: torch.device) -> list[dict[str, Any]]:
    """One row per analog layer set for one view: none, each layer alone, all; and the twin's own."""
    run = twin_run_for(twin, view)
    folder = RunFolder(run)
    twin_cfg = folder.record().settings
    if twin_cfg.arch != "useg":
        raise InputError(run, f"is a {twin_cfg.arch} run; converting needs a useg twin")
    splits = folder.splits()
    params = folder.preprocess()
    cached = {c.case_id: c for c in preprocess_dataset(data, cache / f"{params.spacing_mm[0]:g}mm", params,
                                                       progress=False)}
    calibration = _cases(run, splits["train"], cached, data)[:CONVERSION_CASES]
    val = [c.load() for c in _cases(run, splits["validation"], cached, data)]
    images, regions = [np.asarray(im) for im, _ in val], [r for _, r in val]
    cfg = TrainConfig.of(data=str(data), out=str(cache), arch="spiking-useg", view=view,
                         preset=twin_cfg.preset, spacing_mm=twin_cfg.spacing_mm, seed=twin_cfg.seed,
                         init_from=str(run), readout_input=readout_input, progress=False)
    built = build_view_model(cfg, calibration, device)
    model, scales = built.model.to(device), built.conversion["scales"]

    def scored(m) -> dict[str, float]:
        return validation_scores(zip(predict_views(m, images, view, device), regions))

    layers = list(spiking_layers(model))
    rows = []
    for label, names in [("none", []), *[(n, [n]) for n in layers], ("all", layers)]:
        with analog_layers(model, scales, names):
            rows.append({"view": view, "analog": label, **scored(model)})
    twin_model, _, _ = load_run(run)
    rows.append({"view": view, "analog": "(the twin, its own run)", **scored(twin_model.to(device))})
    return rows


def report(rows: list[dict[str, Any]], twin: Path, readout_input: str) -> str:
    lines = ["# Binarisation: the converted SNN before fine-tuning, one layer analog at a time", "",
             f"Twin {twin}; {readout_input} readout; scored one way on each twin run's validation cases "
             "(mean over cases). `analog` names the layers whose spikes are replaced by the twin's ReLU "
             "output; `none` is the converted SNN as fine-tuning starts it; `all` must equal the twin.", "",
             "| view | analog | Dice ET | Dice TC | Dice WT | mean Dice | NLL |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['view']} | {r['analog']} | {r['val_dice_ET']:.3f} | {r['val_dice_TC']:.3f} | "
                     f"{r['val_dice_WT']:.3f} | {r['val_dice_mean']:.3f} | {r['val_nll']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--twin", type=Path, required=True, help="a useg run: one view's folder or a --view all folder")
    p.add_argument("--data", type=Path, required=True, help="the labelled cases the twin was trained on")
    p.add_argument("--out", type=Path, required=True, help="folder for results.md, results.csv and the cache")
    p.add_argument("--views", help="comma list (default: every view the twin run holds)")
    p.add_argument("--readout-input", choices=["spikes", "membrane"], default="spikes",
                   help="the SNN's readout, as `spikeseg train --readout-input` (default spikes)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    torch.set_num_threads(2)
    device = torch.device("cpu")
    try:
        views = parse_views(a.views) if a.views else twin_views(a.twin)
        rows = [r for v in views for r in view_rows(a.twin, v, a.data, a.out / "preprocessed", a.readout_input,
                                                     device)]
    except InputError as e:
        raise SystemExit(f"error: {e}")
    write_results(a.out, report(rows, a.twin, a.readout_input), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
