"""The training-budget benchmark's pieces (the benchmark itself is run, not tested: benchmarks/):
its grid is read as written and refused with the item named, and its table has one row per point."""

from __future__ import annotations

import pytest

from spikeseg.benchmarks.transfer_budget import markdown, parse_grid


def test_the_grid_is_read_as_cases_and_minutes() -> None:
    assert parse_grid("12:1.3,48:4") == [(12, 1.3), (48, 4.0)]


@pytest.mark.parametrize("spec", ["12", "12:x", "a:4", "12:1.3,,48:4"])
def test_a_bad_grid_point_is_refused_by_name(spec: str) -> None:
    with pytest.raises(SystemExit, match="CASES:MINUTES"):
        parse_grid(spec)


def test_the_table_has_a_row_per_point_with_both_test_sets() -> None:
    scores = {f"{s}_{r}": 0.5 for s in ("std", "heldout") for r in ("ET", "TC", "WT")}
    rows = [{"cases": 12, "minutes": 1.3, "epochs": 9, "val_wt": 0.7, **scores, "heldout_WT": 0.615},
            {"cases": 48, "minutes": 4.0, "epochs": 7, "val_wt": 0.8, **scores}]
    table = markdown(rows, "useg", "axial")
    lines = [line for line in table.splitlines() if line.startswith("| 12") or line.startswith("| 48")]
    assert len(lines) == 2 and lines[0].endswith("| 0.615 |") and "| 1.3 | 9 |" in lines[0]
