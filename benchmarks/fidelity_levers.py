"""The fidelity levers over several seeds, at one budget or several: one table, and the recipe's
default chosen by a rule.

``python -m spikeseg.benchmarks.fidelity_levers SEED0_OUT SEED1_OUT SEED2_OUT --out DIR`` reads the
``ops.json`` of :mod:`spikeseg.benchmarks.fidelity` runs (same cases, one seed each) and writes
``DIR/results.md``: per model, the three-view ensemble's Dice, its gap to the twin per seed and
over all seeds (a paired bootstrap interval over every seed-case pair), and the gap to the twin
it was converted from. Then the rule: a lever becomes the default only if it lowers the mean ET
gap against ``--baseline`` (the recipe) without raising the TC or WT gap beyond the baseline's
interval; otherwise the flags stay off.

With ``--budget LABEL OUT [OUT ...]`` given more than once (each budget's seeds), the rows of
every budget share one table, the rule is applied at each, and a lever becomes the default only
if the rule picks it at every budget.
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
from spikeseg.training.run_folder import RunFolder

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
    folders = [RunFolder(d) for out in outs if (out / "runs" / model).is_dir()
               for d in sorted((out / "runs" / model).iterdir())]
    n = [int(f.summary()["epochs_run"]) for f in folders if f.finished()]
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


def budget_rows(label: str, runs: list[dict[str, Any]], outs: list[Path]) -> tuple[list[str], dict[str, dict[str, Gap]]]:
    """One budget's rows of the table (a ``label`` column first when there are several budgets),
    and each model's pooled gaps to the twin."""
    models = [n for n in runs[0] if all(n in r for r in runs)]
    lead = f"| {label} " if label else ""
    rows, gaps = [], {}
    for name in models:
        dice = " / ".join(f"{np.nanmean([np.nanmean(r[name][f'dice_{g}']) for r in runs]):.3f}" for g in REGIONS)
        epochs = epochs_run(outs, name)
        if name == REFERENCE:
            rows.append(f"{lead}| {name} | {epochs} | {dice} |" + " |" * (2 * len(REGIONS) + 1))
            continue
        gaps[name] = {g: pooled_gap(runs, REFERENCE, name, g) for g in REGIONS}
        per_seed = [" / ".join(f"{100 * paired_gap(r[REFERENCE][f'dice_{g}'], r[name][f'dice_{g}']).mean:.1f}"
                               for r in runs) for g in REGIONS]
        teacher = TEACHERS.get(name)
        own = (points(pooled_gap(runs, teacher, name, "ET")) if teacher in models else "")
        rows.append(f"{lead}| {name} | {epochs} | {dice} | " + " | ".join(per_seed) + " | "
                    + " | ".join(points(gaps[name][g]) for g in REGIONS) + f" | {own} |")
    return rows, gaps


def report(budgets: list[tuple[str, list[Path]]], baseline: str) -> str:
    several = len(budgets) > 1
    loaded = [(label, load_runs(outs), outs) for label, outs in budgets]
    lines = [f"# Fidelity levers over {' and '.join(str(len(r)) for _, r, _ in loaded)} seeds"
             + (f" at {len(budgets)} budgets" if several else ""), ""]
    for label, runs, outs in loaded:
        cases = len(runs[0][REFERENCE]["dice_WT"])
        lines.append((f"{label}: " if label else "Runs: ") + f"{', '.join(str(o) for o in outs)} ({cases} held-out "
                     f"cases each, {len(runs) * cases} seed-case pairs).")
    lines += ["", "Three-view ensembles; gaps in Dice points, twin minus model: per seed, then over all seed-case "
                  "pairs with a 95 % paired bootstrap interval and the pairs where the model is behind.", "",
              ("| budget " if several else "") + "| model | epochs per view | Dice ET / TC / WT (mean over seeds) | "
              + " | ".join(f"gap {r} per seed" for r in REGIONS)
              + " | " + " | ".join(f"gap {r}, all seeds" for r in REGIONS) + " | ET gap to its own twin |",
              ("|---" if several else "") + "|---|---|---|" + "---|" * (2 * len(REGIONS) + 1)]
    picks, rules = [], []
    for label, runs, outs in loaded:
        rows, gaps = budget_rows(label if several else "", runs, outs)
        lines += rows
        if baseline in gaps:
            chosen, why = choose_default(gaps, baseline)
            picks.append(chosen)
            rules += (["", f"At {label}:", ""] if several else []) + why
    if picks:
        final = picks[0] if all(p == picks[0] for p in picks) else None
        said = [f"{label}: {p or 'none'}" for (label, _, _), p in zip(loaded, picks)]
        held = ("" if not several else " (picked at every budget)" if final
                else f"; the budgets disagree ({', '.join(said)})")
        lines += ["", f"Rule (against `{baseline}`, the recipe): a lever becomes the default only if it lowers the "
                      f"mean ET gap without raising the TC or WT gap above the baseline's interval"
                  + (", at every budget." if several else "."), "", *rules, "",
                  f"**The rule picks: {'`' + final + '` (' + LEVERS[final] + ')' if final else 'none, the flags stay off'}"
                  f"{held}**"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="*", help="fidelity benchmark output folders, one per seed (one budget)")
    p.add_argument("--budget", nargs="+", action="append", metavar=("LABEL", "OUT"), default=[],
                   help="a budget's label and its seeds' output folders; give it once per budget (instead of RUNS)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baseline", default="snn-warm", help="the recipe's row (default snn-warm)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier results.md in --out")
    a = p.parse_args(argv)
    if bool(a.runs) == bool(a.budget) or any(len(b) < 2 for b in a.budget):
        p.error("give the seeds' output folders, or --budget LABEL OUT [OUT ...] once per budget")
    budgets = [("", a.runs)] if a.runs else [(b[0], [Path(o) for o in b[1:]]) for b in a.budget]
    refuse_existing_results(a.out / "results.md", a.overwrite)
    text = report(budgets, a.baseline)
    write_text(a.out / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
