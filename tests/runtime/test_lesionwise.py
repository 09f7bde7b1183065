"""BraTS 2023 lesion-wise metrics on hand-built masks whose answers follow from the published
rules by hand (github.com/rachitsaluja/BraTS-2023-Metrics, eval.py), not from our code."""

from __future__ import annotations

import numpy as np
import pytest

from spikeseg.runtime.lesionwise import lesion_wise

#: the BraTS 2023 lesion-wise penalty, pinned as the number the challenge publishes (not imported
#: from the code under test, which could drift with it)
P = 374.0


def cube(shape, corner, size) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(c, c + size) for c in corner)] = True
    return m


SHAPE = (60, 60, 60)
A = cube(SHAPE, (5, 5, 5), 4)      # 64 voxels
B = cube(SHAPE, (40, 40, 40), 5)   # 125 voxels
FAR = cube(SHAPE, (5, 45, 5), 4)   # nowhere near a reference lesion


def test_found_missed_and_false_positive_lesions() -> None:
    """Two lesions, one found exactly, one missed, one false positive: Dice (1 + 0 + 0) / 3,
    HD95 (0 + 374 + 374) / 3. A voxel-wise Dice would say 2*64/(128+125) = 0.51."""
    s = lesion_wise(A | FAR, A | B, (1, 1, 1))
    assert (s.true_positives, s.false_negatives, s.false_positives) == (1, 1, 1)
    assert s.dice == pytest.approx(1 / 3) and s.hd95 == pytest.approx(2 * P / 3)


def test_small_lesions_are_left_out_by_volume_in_mm3() -> None:
    """A missed 27-voxel lesion is at most 50 mm^3 at 1 mm (left out: Dice 1) but 216 mm^3 at
    2 mm (scored: Dice 1/2)."""
    small = cube(SHAPE, (30, 5, 30), 3)
    assert lesion_wise(A, A | small, (1, 1, 1)).dice == pytest.approx(1.0)
    s = lesion_wise(A, A | small, (2, 2, 2))
    assert s.dice == pytest.approx(0.5) and s.false_negatives == 1


def test_nearby_reference_lesions_are_one_lesion() -> None:
    """Two cubes 2 voxels apart merge under 3 dilations: one lesion of 128 voxels, half found:
    Dice 2*64/(64+128). Apart by 10 voxels they stay two lesions: (1 + 0) / 2."""
    near = cube(SHAPE, (5, 11, 5), 4)
    assert lesion_wise(A, A | near, (1, 1, 1)).dice == pytest.approx(2 * 64 / (64 + 128))
    apart = cube(SHAPE, (5, 19, 5), 4)
    assert lesion_wise(A, A | apart, (1, 1, 1)).dice == pytest.approx(0.5)


def test_a_prediction_beside_a_lesion_is_a_poor_match_not_a_false_positive() -> None:
    """Predicted 2 voxels beside the lesion, no overlap: matched through the dilation (Dice 0,
    no false positive); with dilation 1 it is too far: missed lesion plus a false positive."""
    beside = cube(SHAPE, (11, 5, 5), 4)
    s = lesion_wise(beside, A, (1, 1, 1), dilation=3)
    assert (s.dice, s.false_positives, s.true_positives) == (0.0, 0, 1) and 0 < s.hd95 < P
    s = lesion_wise(beside, A, (1, 1, 1), dilation=1)
    assert s.dice == 0.0 and (s.false_negatives, s.false_positives) == (1, 1) and s.hd95 == pytest.approx(P)


def test_empty_cases() -> None:
    empty = np.zeros(SHAPE, bool)
    assert (lesion_wise(empty, empty, (1, 1, 1)).dice, lesion_wise(empty, empty, (1, 1, 1)).hd95) == (1.0, 0.0)
    s = lesion_wise(FAR, empty, (1, 1, 1))
    assert (s.dice, s.hd95, s.false_positives) == (0.0, P, 1)
    s = lesion_wise(empty, A, (1, 1, 1))
    assert (s.dice, s.hd95, s.false_negatives) == (0.0, P, 1)


def test_components_join_diagonally() -> None:
    """26-connectivity: two cubes touching at one corner are one predicted component, so one
    false positive, not two."""
    corner = cube(SHAPE, (9, 49, 9), 4)
    assert lesion_wise(FAR | corner, A, (1, 1, 1)).false_positives == 1
