"""The fidelity benchmark's gap to the twin, with its paired bootstrap interval over the cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spikeseg.benchmarks.fidelity import gap_table
from spikeseg.benchmarks.paired_gap import paired_gap, points


def test_interval_matches_scipys_percentile_bootstrap_of_the_mean_difference() -> None:
    rng = np.random.default_rng(1)
    twin = rng.uniform(0.4, 0.9, 30)
    model = twin - rng.normal(0.03, 0.05, 30)
    gap = paired_gap(twin, model)
    ref = stats.bootstrap((twin - model,), np.mean, confidence_level=0.95, n_resamples=10000,
                          method="percentile", random_state=0)
    assert gap.mean == pytest.approx(float(np.mean(twin - model)))
    tolerance = 0.15 * ref.standard_error  # two Monte Carlo draws of the same percentiles
    assert gap.low == pytest.approx(ref.confidence_interval.low, abs=tolerance)
    assert gap.high == pytest.approx(ref.confidence_interval.high, abs=tolerance)
    assert (gap.behind, gap.cases) == (int(np.sum(twin > model)), 30)


def test_cases_stay_paired_so_a_constant_gap_is_certain_however_the_cases_vary() -> None:
    """Unpaired resampling would spread this interval over the cases' own range (0.1-0.9)."""
    twin = np.array([0.1, 0.9, 0.5, 0.3])
    gap = paired_gap(twin, twin - 0.05)
    assert (gap.low, gap.high) == pytest.approx((0.05, 0.05))
    assert gap.behind == 4
    mixed = paired_gap([0.6, 0.7, 0.5, 0.8], [0.5, 0.75, 0.5, 0.6])
    assert mixed.low <= mixed.mean <= mixed.high and mixed.behind == 2
    assert paired_gap([0.6, 0.7], [0.5, 0.75], seed=3) == paired_gap([0.6, 0.7], [0.5, 0.75], seed=3)


def test_cases_undefined_for_either_model_are_left_out_as_the_mean_leaves_them_out() -> None:
    nan = float("nan")
    gap = paired_gap([0.8, nan, 0.6, 0.5], [0.7, 0.0, nan, 0.4])
    assert (gap.cases, gap.behind) == (2, 2) and gap.mean == pytest.approx(0.1)
    assert points(paired_gap([nan], [nan])) == "undefined"
    assert points(gap) == "10.0 [10.0, 10.0] (2/2)"


def test_unpaired_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-empty list of cases"):
        paired_gap([0.5, 0.6], [0.5])
    with pytest.raises(ValueError, match="same non-empty list of cases"):
        paired_gap([], [])


def test_gap_table_rows_are_each_models_ensemble_against_the_twins_on_the_same_cases() -> None:
    def per_case(et: list[float], tc: list[float], wt: list[float]) -> dict:
        return {"ensemble_dice_per_case": {"dice_ET": et, "dice_TC": tc, "dice_WT": wt}}

    extras = {"twin": per_case([0.6, 0.8], [0.8, 0.8], [0.9, 0.92]),
              "snn-warm": per_case([0.5, 0.7], [0.8, 0.9], [0.9, 0.9])}
    lines = gap_table(extras)
    assert "over the 2 cases" in lines[1]
    assert lines[-1] == "| snn-warm | 10.0 [10.0, 10.0] (2/2) | -5.0 [-10.0, 0.0] (0/2) | 1.0 [0.0, 2.0] (1/2) |"
    assert gap_table({"snn-warm": extras["snn-warm"]}) == []  # no twin, no gaps


def test_a_region_absent_from_both_masks_is_left_out_of_the_mean_not_scored_perfect() -> None:
    """The official BraTS rule, as ``runtime.metrics`` and ``spikeseg bench`` apply it: scoring
    it 1.0 would lift the mean of the model that predicted nothing for a case without ET."""
    from types import SimpleNamespace

    from spikeseg.benchmarks.fidelity import score_cases
    from spikeseg.runtime.labels import BRATS2021, labels_to_regions

    def case(label: np.ndarray) -> SimpleNamespace:
        return SimpleNamespace(label=label, files=SimpleNamespace(convention=BRATS2021), spacing=(1.0, 1.0, 1.0))

    with_et = np.zeros((8, 8, 8), np.uint8)
    with_et[2:6, 2:6, 2:6] = BRATS2021.ed
    with_et[3:5, 3:5, 3:5] = BRATS2021.et
    without_et = np.where(with_et == BRATS2021.et, BRATS2021.ncr, with_et).astype(np.uint8)
    truth = [labels_to_regions(lab, BRATS2021).astype(np.float32) for lab in (with_et, without_et)]
    half_et = truth[0].copy()
    half_et[0, 3] = 0.0  # half the ET voxels missed: Dice 2/3
    scores = score_cases([half_et, truth[1]], [case(with_et), case(without_et)])
    assert scores["dice_ET"][0] == pytest.approx(2 / 3)
    assert np.isnan(scores["dice_ET"][1]) and np.isnan(scores["hd95_ET"][1])
    assert scores["dice_WT"] == [1.0, 1.0]
    assert float(np.nanmean(scores["dice_ET"])) == pytest.approx(2 / 3)


def test_the_report_says_how_many_region_case_pairs_the_means_left_out(phantom_root) -> None:
    from argparse import Namespace

    from spikeseg.benchmarks.fidelity import report

    row = {"dice_ET": 0.5, "dice_TC": 0.7, "dice_WT": 0.9, "hd95_ET": 3.0, "hd95_TC": 4.0, "hd95_WT": 2.0,
           "nll": 0.003, "ece": 0.001}
    rows = [{"model": "twin", "view": v, **row, "undefined_regions": n}
            for v, n in (("sagittal", 1), ("coronal", 0), ("axial", 2), ("ensemble", 1))]
    extras = {"twin": {"ops_per_case_axial": {"dense_macs": 1e9},
                       "ensemble_dice_per_case": {f"dice_{r}": [0.5, 0.7] for r in ("ET", "TC", "WT")}}}
    args = Namespace(train="train", test=str(phantom_root), preset="tiny", spacing="2", seed=0, one_way=False)
    text = report(rows, extras, {"twin": 60.0}, 1.3, args)
    assert "(left out of the means, the official rule): 4 region-case pairs over all rows." in text


def test_the_levers_table_pools_seeds_and_adopts_a_lever_only_by_the_rule(tmp_path) -> None:
    """Two seeds of four cases: a lever 5 ET points closer to the twin with TC and WT as the
    recipe's is adopted; one closer on ET but 10 WT points further (beyond the recipe's interval)
    is not; the pooled gap is the mean over all seed-case pairs."""
    import json

    from spikeseg.benchmarks.fidelity_levers import main

    rng = np.random.default_rng(0)
    outs = []
    for seed in range(2):
        twin = {f"dice_{r}": rng.uniform(0.5, 0.9, 4) for r in ("ET", "TC", "WT")}
        recipe = {k: v - 0.08 + rng.normal(0, 0.005, 4) for k, v in twin.items()}
        good = {k: v + (0.05 if k == "dice_ET" else 0.0) for k, v in recipe.items()}
        bad = {k: v + (0.06 if k == "dice_ET" else -0.10 if k == "dice_WT" else 0.0) for k, v in recipe.items()}
        extras = {name: {"ensemble_dice_per_case": {k: list(map(float, v)) for k, v in d.items()}}
                  for name, d in (("twin", twin), ("snn-warm", recipe), ("snn-warm-subtract", good),
                                  ("snn-warm-qcfs", bad))}
        out = tmp_path / f"seed{seed}"
        out.mkdir()
        (out / "ops.json").write_text(json.dumps(extras))
        outs.append((out, twin, recipe))
    assert main([str(o) for o, _, _ in outs] + ["--out", str(tmp_path / "levers")]) == 0
    text = (tmp_path / "levers" / "results.md").read_text()
    pooled_et = np.mean(np.concatenate([t["dice_ET"] - r["dice_ET"] for _, t, r in outs]))
    recipe_row = next(line for line in text.splitlines() if line.startswith("| snn-warm |"))
    assert f"{100 * pooled_et:.1f} [" in recipe_row
    assert "- `snn-warm-subtract` (--reset subtract): adopted" in text
    assert "- `snn-warm-qcfs` (twin --twin-activation qcfs): not adopted" in text and "WT gap above" in text
    assert "**The rule picks: `snn-warm-subtract` (--reset subtract)**" in text
    with pytest.raises(SystemExit):  # an earlier table is not replaced without --overwrite
        main([str(o) for o, _, _ in outs] + ["--out", str(tmp_path / "levers")])
    # two budgets in one table: the default changes only where the rule picks the lever at both
    seeds = [str(o) for o, _, _ in outs]
    assert main(["--budget", "small", *seeds, "--budget", "large", *seeds, "--out", str(tmp_path / "both")]) == 0
    both = (tmp_path / "both" / "results.md").read_text()
    assert "| large | snn-warm-subtract |" in both and "(picked at every budget)**" in both
    worse = tmp_path / "worse"
    worse.mkdir()
    extras = json.loads((outs[0][0] / "ops.json").read_text())
    extras["snn-warm-subtract"]["ensemble_dice_per_case"]["dice_ET"] = [
        v - 0.2 for v in extras["snn-warm"]["ensemble_dice_per_case"]["dice_ET"]]
    (worse / "ops.json").write_text(json.dumps(extras))
    assert main(["--budget", "small", *seeds, "--budget", "large", str(worse), "--out", str(tmp_path / "split")]) == 0
    split = (tmp_path / "split" / "results.md").read_text()
    assert "**The rule picks: none, the flags stay off; the budgets disagree (small: snn-warm-subtract, large: none)**" in split
