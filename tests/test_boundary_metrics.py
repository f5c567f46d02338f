"""Boundary metrics (band, boundary IoU, Margolin's WFm) on small hand-made class maps, values worked out by hand."""
import math

import numpy as np
import pytest
from scipy import ndimage

from core.metrics.boundary import (
    BoundaryMetrics,
    boundary_aware_scores,
    boundary_band,
    boundary_iou,
    boundary_wfm,
    class_boundary_masks,
    weighted_f_measure,
)

# Margolin's 7x7 Gaussian, sigma 5, along one axis (unnormalised): exp(-x^2 / 50) for x = -3..3
GAUSS = np.exp(-np.arange(-3, 4) ** 2 / 50.0)
FP_WEIGHT_1PX = 2 - 0.5 ** (1 / 5)   # a false positive 1 px from the truth: 2 - exp(ln 0.5 * d / 5) = 1.1294


def f1(precision, recall):
    return 2 * precision * recall / (precision + recall)


def step(rows, cols, first_col_of_class_1):
    """Class 0 left of a vertical transition, class 1 from first_col_of_class_1 on."""
    class_map = np.zeros((rows, cols), np.int64)
    class_map[:, first_col_of_class_1:] = 1
    return class_map


def square(size, top, left, side):
    class_map = np.zeros((size, size), np.int64)
    class_map[top:top + side, left:left + side] = 1
    return class_map


def columns(mask):
    """Sorted columns a full-height vertical band covers (asserting it is full height)."""
    covered = mask.any(0)
    assert (mask[:, covered]).all()
    return list(np.flatnonzero(covered))


def test_perfect_prediction_scores_one_everywhere():
    truth = np.zeros((12, 12), np.int64)
    truth[2:6, 2:6] = 1
    truth[7:, 6:] = 2
    result = boundary_aware_scores(truth.copy(), truth, ["background", "square", "block"])
    assert len(result) == 3 + 2 * 3 + 3 * (3 + 2 * 3)   # scores(): 3 + 2 per class; per width: 3 + 2 per class
    assert all(value == 1.0 for value in result.values()), result


def test_band_of_a_straight_transition_grows_with_width():
    truth = step(6, 8, 4)   # transition between columns 3 and 4; the image border is no transition
    assert columns(boundary_band(truth, 1)) == [3, 4]          # both sides of the transition
    assert columns(boundary_band(truth, 3)) == [2, 3, 4, 5]    # + 1 px each side (3x3 box)
    assert columns(boundary_band(truth, 5)) == [1, 2, 3, 4, 5, 6]
    background, foreground = class_boundary_masks(truth, 2, 3)
    assert columns(background) == [2, 3] and columns(foreground) == [4, 5]   # (3 + 1) / 2 px per class


def test_band_is_the_specs_sobel_band_where_sobel_is_well_behaved():
    truth = square(10, 2, 3, 4)
    sobel = np.hypot(ndimage.sobel(truth.astype(float), 0, mode="mirror"),
                     ndimage.sobel(truth.astype(float), 1, mode="mirror")) != 0
    for width in (1, 3, 5):
        expected = ndimage.binary_dilation(sobel, np.ones((width, width), bool))
        np.testing.assert_array_equal(boundary_band(truth, width), expected)


def test_band_does_not_depend_on_how_classes_are_numbered():
    # Sobel of the class ids at the centre of  1 0 2 / 1 0 0 / 1 0 2  is 0 ((2+0+2) - (1+2+1) = 0 both ways),
    # though its neighbours differ; numbering class 2 as 3 makes it (3+0+3) - 4 = 2: an edge. Ours: edge both ways.
    patch = np.array([[1, 0, 2], [1, 0, 0], [1, 0, 2]])
    renumbered = np.array([0, 1, 3])[patch]
    assert boundary_band(patch, 1)[1, 1] and boundary_band(renumbered, 1)[1, 1]
    rng = np.random.default_rng(0)
    random_map = ndimage.zoom(rng.integers(0, 4, (6, 6)), 4, order=0)
    permuted = np.array([2, 0, 3, 1])[random_map]
    for width in (1, 3, 5):
        np.testing.assert_array_equal(boundary_band(random_map, width), boundary_band(permuted, width))


def test_a_one_pixel_object_keeps_a_band_of_its_own_class():
    truth = np.zeros((7, 7), np.int64)
    truth[3, 3] = 1   # Sobel is 0 at the pixel itself (symmetric neighbourhood), so [code] loses it
    assert class_boundary_masks(truth, 2, 1)[1].sum() == 1
    assert boundary_band(truth, 1).sum() == 9


@pytest.mark.parametrize("width", [0, 2, 4, -1])
def test_band_width_must_be_odd_and_positive(width):
    with pytest.raises(ValueError):
        boundary_band(step(4, 4, 2), width)
    with pytest.raises(ValueError):
        BoundaryMetrics(["a", "b"], widths=(width,))


def test_square_shifted_by_one_pixel():
    truth = square(10, 3, 3, 4)   # rows 3..6, cols 3..6
    pred = square(10, 3, 4, 4)    # rows 3..6, cols 4..7
    result = boundary_aware_scores(pred, truth, ["background", "square"], widths=(1, 3))
    # square: TP 4 x 3 = 12, FP 4, FN 4 -> IoU 12/20, F1 24/32; background: TP 100 - 20 = 80, FP 4, FN 4
    assert result["IoU/square"] == pytest.approx(0.6)
    assert result["mIoU"] == pytest.approx((0.6 + 80 / 88) / 2)
    assert result["mF1"] == pytest.approx((0.75 + 160 / 168) / 2)
    # width 1, square: each map's ring of 12 (4x4 minus inner 2x2); overlap only rows 3 and 6, cols 4..6 -> 6
    #   -> 6 / (12 + 12 - 6) = 1/3. background: outer rings of 20 each; overlap rows 2 and 7, cols 3..7 -> 10
    #   -> 10 / 30 = 1/3
    assert result["bIoU@1/square"] == pytest.approx(1 / 3)
    assert result["bIoU@1/background"] == pytest.approx(1 / 3)
    # width 3: each band is the 8x8 block around its square, so the whole square is in it: 12 / 20;
    # background: 48 each, overlap rows 1..8 x cols 2..8 (56) minus both squares (20) = 36 -> 36 / 60
    assert result["bIoU@3"] == pytest.approx(0.6)
    np.testing.assert_allclose(boundary_iou(pred, truth, 2, 3), [0.6, 0.6])


def test_straight_boundary_shifted_by_one_pixel_by_band_width():
    truth, pred = step(10, 10, 5), step(10, 10, 6)
    # width 1: class 0 band is col 4 in truth, col 5 in pred -- disjoint. Every truth pixel is missed and the
    # error copied to every other pixel is 1, so its Gaussian mean is 1: TPw = 0 -> WFm 0.
    np.testing.assert_allclose(boundary_iou(pred, truth, 2, 1), [0, 0])
    np.testing.assert_allclose(boundary_wfm(pred, truth, 2, 1), [0, 0])
    # width 3, class 0: truth cols 3,4; pred cols 4,5. Col 3 missed (E=1), col 5 false (E=1, 1 px from truth).
    # Error copied from the nearest truth pixel: 1 on cols 0..3, 0 on cols 4..9; its Gaussian mean at col 3
    # (window cols 0..6, all inside) = (g3 + g2 + g1 + g0) / sum(g) = 0.5772 -> min(E, 0.5772) on col 3.
    # TPw = 20 - 10 * 0.5772; recall = TPw / 20; FPw = 10 * FP_WEIGHT_1PX; class 1 is the mirror image.
    missed = GAUSS[:4].sum() / GAUSS.sum()
    tp = 20 - 10 * missed
    wfm_3 = f1(tp / (tp + 10 * FP_WEIGHT_1PX), tp / 20)   # 0.6251
    np.testing.assert_allclose(boundary_iou(pred, truth, 2, 3), [1 / 3, 1 / 3])   # one shared column of 3
    np.testing.assert_allclose(boundary_wfm(pred, truth, 2, 3), [wfm_3, wfm_3])
    # width 5, class 0: truth cols 2..4, pred cols 3..5; window at col 2 is cols -1..5, col -1 outside the
    # image is left out: (g2 + g1 + g0) / (sum(g) - g3). Class 1 (truth cols 5..7, pred 6..8): window at col 5
    # is inside: the width-3 value 0.5772.
    missed_at_border = GAUSS[1:4].sum() / GAUSS[1:].sum()
    expected_5 = []
    for missed_weight in (missed_at_border, missed):
        tp = 30 - 10 * missed_weight
        expected_5.append(f1(tp / (tp + 10 * FP_WEIGHT_1PX), tp / 30))
    np.testing.assert_allclose(boundary_iou(pred, truth, 2, 5), [0.5, 0.5])   # 2 shared of 4 columns
    np.testing.assert_allclose(boundary_wfm(pred, truth, 2, 5), expected_5)   # 0.7515, 0.7395
    # a wider band tolerates more displacement (the trend of the paper's Table IX)
    result = boundary_aware_scores(pred, truth, ["left", "right"])
    assert result["WFm@1"] < result["WFm@3"] < result["WFm@5"]
    # bandWFm@1 compares the width-1 bands (truth cols 4,5; pred cols 5,6): the width-3 class-0 geometry
    assert result["bandWFm@1"] == pytest.approx(wfm_3)


def test_false_positives_cost_more_the_farther_they_are():
    truth = np.zeros((8, 8), bool)
    truth[3:5, 3:5] = True
    near, far = truth.copy(), truth.copy()
    near[3, 5] = True   # 1 px right of the truth
    far[3, 6] = True    # 2 px right of the truth
    # no truth pixel missed: recall 1, TPw 4; FPw = 2 - 0.5^(d/5); WFm = 2P / (1 + P), P = 4 / (4 + FPw)
    for candidate, distance in ((near, 1), (far, 2)):
        precision = 4 / (4 + 2 - 0.5 ** (distance / 5))
        assert weighted_f_measure(candidate, truth) == pytest.approx(f1(precision, 1.0))
    assert weighted_f_measure(far, truth) < weighted_f_measure(near, truth)


def test_an_isolated_miss_counts_only_its_share_of_the_neighbourhood():
    truth = np.ones((15, 15), bool)
    candidate = truth.copy()
    candidate[7, 7] = False
    # error 1 at one pixel, 0 around: its 7x7 Gaussian mean is the centre weight (1 / sum(g))^2 = 0.0238,
    # which replaces the error; recall = 1 - 0.0238 / 225, precision 1 (no false positive)
    recall = 1 - (1 / GAUSS.sum()) ** 2 / 225
    assert weighted_f_measure(candidate, truth) == pytest.approx(f1(1.0, recall))


def test_empty_masks():
    truth = np.zeros((6, 6), bool)
    truth[:, 0] = True   # touches the image border: zero padding would invent correct pixels outside
    empty = np.zeros_like(truth)
    assert weighted_f_measure(empty, truth) == 0.0
    assert weighted_f_measure(truth, empty) == 0.0
    assert math.isnan(weighted_f_measure(empty, empty))


def test_ignored_pixels_do_not_count():
    truth = step(12, 12, 6)
    truth[2:5, 1:4] = 255   # unlabelled patch inside class 0
    pred = step(12, 12, 6)
    pred[2:5, 1:4] = 1      # the prediction puts an object there
    result = boundary_aware_scores(pred, truth, ["a", "b"], ignore=255)
    assert all(value == 1.0 for value in result.values()), result
    labelled = truth.copy()
    labelled[2:5, 1:4] = 0  # had the patch been labelled, the object would be wrong everywhere
    result = boundary_aware_scores(pred, labelled, ["a", "b"])
    assert result["mIoU"] < 1 and result["bIoU@3"] < 1 and result["WFm@3"] < 1 and result["bandWFm@3"] < 1


def test_out_of_range_values_are_rejected_unless_ignored():
    truth = step(6, 6, 3)
    truth[0, 0] = 255
    with pytest.raises(ValueError):
        boundary_aware_scores(step(6, 6, 3), truth, ["a", "b"])
    with pytest.raises(ValueError):
        boundary_aware_scores(step(6, 6, 3).astype(float), step(6, 6, 3), ["a", "b"])
    assert boundary_aware_scores(step(6, 6, 3), truth, ["a", "b"], ignore=255)["mIoU"] == 1.0


def test_absent_classes_are_nan_predicted_only_classes_score_zero():
    truth = step(10, 10, 5)
    pred = step(10, 10, 5)
    pred[1:3, 1:3] = 2   # a class the truth does not have
    result = boundary_aware_scores(pred, truth, ["a", "b", "c", "d"], widths=(3,))
    for key in ("IoU/d", "F1/d", "bIoU@3/d", "WFm@3/d"):   # neither map has class d
        assert math.isnan(result[key]), key
    assert result["WFm@3/c"] == 0.0 and result["bIoU@3/c"] == 0.0 and result["IoU/c"] == 0.0
    assert result["WFm@3/b"] == 1.0   # class b is untouched
    # the mean is over the scored classes a, b, c; the 0 of c is kept, d is left out
    per_class = [result[f"WFm@3/{name}"] for name in "abc"]
    assert result["WFm@3"] == pytest.approx(sum(per_class) / 3)
    assert result["WFm@3"] < 1


def test_accumulation_sums_counts_and_averages_wfm_per_image():
    metrics = BoundaryMetrics(["left", "right"], widths=(1,))
    metrics.add(step(10, 10, 5), step(10, 10, 5))   # perfect
    metrics.add(step(10, 10, 6), step(10, 10, 5))   # shifted by one column
    result = metrics.result()
    # confusion summed: left TP 50 + 50, FP 0 + 10 -> 100/110; right TP 50 + 40, FN 10 -> 90/100
    assert result["mIoU"] == pytest.approx((100 / 110 + 90 / 100) / 2)
    # boundary counts summed: left I = 10 + 0, U = 10 + 20 -> 1/3 (a per-image mean would give 1/2)
    assert result["bIoU@1/left"] == pytest.approx(1 / 3)
    assert result["bIoU@1"] == pytest.approx(1 / 3)
    # WFm averaged per image: (1 + 0) / 2
    assert result["WFm@1/left"] == pytest.approx(0.5) and result["WFm@1"] == pytest.approx(0.5)
    missed = GAUSS[:4].sum() / GAUSS.sum()
    tp = 20 - 10 * missed
    assert result["bandWFm@1"] == pytest.approx((1 + f1(tp / (tp + 10 * FP_WEIGHT_1PX), tp / 20)) / 2)
