"""The fidelity levers over several seeds: one table, and the recipe's default chosen by a rule.

``python -m spikeseg.benchmarks.fidelity_levers SEED0_OUT SEED1_OUT SEED2_OUT --out DIR`` reads the
``ops.json`` of :mod:`spikeseg.benchmarks.fidelity` runs (same cases, one seed each) and writes
``DIR/results.md``: per model, the three-view ensemble's Dice, its gap to the twin per seed and
over all seeds (a paired bootstrap interval over every seed-case pair), and the gap to the twin
it was converted from. Then the rule: a lever becomes the default only if it lowers the mean ET
gap against ``--baseline`` (the recipe) without raising the TC or WT gap beyond the baseline's
interval; otherwise the flags stay off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.benchmarks.fidelity import TEACHERS
from spikeseg.benchmarks.paired_gap import Gap, paired_gap, points
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.tables import refuse_existing_results

#: the levers the rule may adopt, and the flags each one means
LEVERS = {"snn-warm-subtract": "--reset subtract", "snn-warm-qcfs": "twin --twin-activation qcfs",
          "snn-warm-qcfs-subtract": "--reset subtract, twin --twin-activation qcfs"}
REFERENCE = "twin"


def load_runs(outs: list[Path]) -> list[dict[str, dict[str, list[float]]]]:
    """Per seed: model -> ``dice_<region>`` -> per-case ensemble Dice (the cases in one order)."""
    runs = []
    for out in outs:
        extras = json.loads((out / "ops.json").read_text())
        runs.append({name: e["ensemble_dice_per_case"] for name, e in extras.items()})
    names = [set(r) for r in runs]
    if not names or REFERENCE not in set.intersection(*names):
        raise SystemExit(f"every run needs the {REFERENCE!r} row (fidelity --models twin,...)")
    return runs


def epochs_run(outs: list[Path], model: str) -> str:
    """The epochs each of ``model``'s view runs got in its budget, over every seed: ``min-max``."""
    n = [int(json.loads(f.read_text())["epochs_run"]) for out in outs
         for f in sorted((out / "runs" / model).glob("*/summary.json"))]
    return f"{min(n)}-{max(n)}" if n else "-"


def pooled_gap(runs: list[dict[str, Any]], reference: str, model: str, region: str) -> Gap:
    """Reference minus model over every (seed, case) pair, the pairs kept within their seed."""
    ref = np.concatenate([r[reference][f"dice_{region}"] for r in runs])
    mod = np.concatenate([r[model][f"dice_{region}"] for r in runs])
    return paired_gap(ref, mod)


def choose_default(gaps: dict[str, dict[str, Gap]], baseline: str) -> tuple[str | None, list[str]]:
    """The rule, with a line per lever saying why it was or was not adopted."""
    base = gaps[baseline]
    why, adopted = [], []
    for lever in [n for n in LEVERS if n in gaps]:
        g = gaps[lever]
        lower_et = g["ET"].mean < base["ET"].mean
        raised = [r for r in ("TC", "WT") if g[r].mean > base[r].high]
        ok = lower_et and not raised
        reason = (f"ET gap {100 * g['ET'].mean:.1f} vs {100 * base['ET'].mean:.1f} points"
                  + ("" if lower_et else " (not lower)")
                  + (f"; {', '.join(raised)} gap above the baseline's interval" if raised else ""))
        why.append(f"- `{lever}` ({LEVERS[lever]}): {'adopted' if ok else 'not adopted'}: {reason}")
        if ok:
            adopted.append((g["ET"].mean, lever))
    return (min(adopted)[1] if adopted else None), why


def report(runs: list[dict[str, Any]], outs: list[Path], baseline: str) -> str:
    models = [n for n in runs[0] if all(n in r for r in runs)]
    cases = len(runs[0][REFERENCE]["dice_WT"])
    lines = [f"# Fidelity levers over {len(runs)} seeds", "",
             f"Runs: {', '.join(str(o) for o in outs)} ({cases} held-out cases each). Three-view ensembles; "
             f"gaps in Dice points, twin minus model: per seed, then over all {len(runs) * cases} seed-case "
             f"pairs with a 95 % paired bootstrap interval and the pairs where the model is behind.", "",
             "| model | epochs per view | Dice ET / TC / WT (mean over seeds) | "
             + " | ".join(f"gap {r} per seed" for r in REGIONS)
             + " | " + " | ".join(f"gap {r}, all seeds" for r in REGIONS) + " | ET gap to its own twin |",
             "|---|---|---|" + "---|" * (2 * len(REGIONS) + 1)]
    gaps: dict[str, dict[str, Gap]] = {}
    for name in models:
        dice = " / ".join(f"{np.nanmean([np.nanmean(r[name][f'dice_{g}']) for r in runs]):.3f}" for g in REGIONS)
        epochs = epochs_run(outs, name)
        if name == REFERENCE:
            lines.append(f"| {name} | {epochs} | {dice} |" + " |" * (2 * len(REGIONS) + 1))
            continue
        gaps[name] = {g: pooled_gap(runs, REFERENCE, name, g) for g in REGIONS}
        per_seed = [" / ".join(f"{100 * paired_gap(r[REFERENCE][f'dice_{g}'], r[name][f'dice_{g}']).mean:.1f}"
                               for r in runs) for g in REGIONS]
        teacher = TEACHERS.get(name)
        own = (points(pooled_gap(runs, teacher, name, "ET")) if teacher in models else "")
        lines.append(f"| {name} | {epochs} | {dice} | " + " | ".join(per_seed) + " | "
                     + " | ".join(points(gaps[name][g]) for g in REGIONS) + f" | {own} |")
    if baseline in gaps:
        chosen, why = choose_default(gaps, baseline)
        lines += ["", f"Rule (against `{baseline}`, the recipe): a lever becomes the default only if it lowers the "
                      f"mean ET gap without raising the TC or WT gap above the baseline's interval.", "", *why, "",
                  f"**The rule picks: {'`' + chosen + '` (' + LEVERS[chosen] + ')' if chosen else 'none (the flags stay off)'}**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="fidelity benchmark output folders, one per seed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baseline", default="snn-warm", help="the recipe's row (default snn-warm)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier results.md in --out")
    a = p.parse_args(argv)
    refuse_existing_results(a.out / "results.md", a.overwrite)
    text = report(load_runs(a.runs), a.runs, a.baseline)
    write_text(a.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
