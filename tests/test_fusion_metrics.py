"""Fusion metrics (core.metrics.fusion) and `evaluate-fusion` (training.fusion_eval).

The spec's reference values are for TNO pair 01, which is not available here, so every metric is checked
on hand-made images against answers derived independently (closed forms worked out in the comments).
"""
from __future__ import annotations

import argparse
import csv
import math
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from core.metrics import fusion as fm
from training import fusion_eval

RNG_SEED = 7


def checkerboard(n: int, low: float, high: float) -> np.ndarray:
    return np.where(np.add.outer(np.arange(n), np.arange(n)) % 2 == 0, low, high).astype(np.float64)


def vertical_step(rows: int, cols: int, at: int, low: float = 0.0, high: float = 100.0) -> np.ndarray:
    image = np.full((rows, cols), low)
    image[:, at:] = high
    return image


def textured(shape=(48, 48), seed=RNG_SEED) -> np.ndarray:
    """Integer grey image with structure at several scales (all metrics defined on it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    smooth = 60 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.clip(np.round(128 + smooth + rng.normal(0, 20, shape)), 0, 255)


# --- single-image metrics ---------------------------------------------------------------------------

def test_entropy_closed_forms():
    assert fm.entropy(np.full((8, 8), 77.0)) == 0.0
    assert fm.entropy(checkerboard(8, 0, 255)) == pytest.approx(1.0, abs=1e-12)    # 2 equiprobable levels
    four = np.tile([0.0, 85.0, 170.0, 255.0], (4, 2))
    assert fm.entropy(four) == pytest.approx(2.0, abs=1e-12)
    everything = np.arange(256.0).reshape(16, 16)
    assert fm.entropy(everything) == pytest.approx(8.0, abs=1e-12)
    # grey values are rounded to integer levels before counting
    assert fm.entropy(checkerboard(8, 0.4, 0.6)) == pytest.approx(1.0, abs=1e-12)
    assert fm.entropy(checkerboard(8, 0.1, 0.4)) == 0.0


def test_standard_deviation_is_the_population_one():
    assert fm.standard_deviation(np.array([[0.0, 2.0], [0.0, 2.0]])) == pytest.approx(1.0)   # sample SD: 1.1547
    assert fm.standard_deviation(checkerboard(6, 10, 30)) == pytest.approx(10.0)


def test_spatial_frequency_ramp_and_checkerboard():
    ramp = np.tile(3.0 * np.arange(6), (5, 1))            # column differences 3, row differences 0
    assert fm.spatial_frequency(ramp) == pytest.approx(3.0)
    assert fm.spatial_frequency(ramp.T) == pytest.approx(3.0)
    assert fm.spatial_frequency(checkerboard(6, 0, 10)) == pytest.approx(10 * math.sqrt(2))   # every step is 10


def test_average_gradient_uses_central_differences_inside_and_one_sided_at_borders():
    ramp = np.tile(2.0 * np.arange(7), (4, 1))
    assert fm.average_gradient(ramp) == pytest.approx(2 / math.sqrt(2))
    square = np.tile(np.arange(4.0) ** 2, (3, 1))         # 0 1 4 9 -> gx = 1, (4-0)/2, (9-1)/2, 5
    assert fm.average_gradient(square) == pytest.approx(np.mean([1, 2, 4, 5]) / math.sqrt(2))
    assert fm.average_gradient(square.T) == pytest.approx(np.mean([1, 2, 4, 5]) / math.sqrt(2))


def test_edge_intensity_constant_image_with_zero_padding():
    # Sobel of a constant v with zeros outside: border pixels 4v, corners 3v in x and in y, inside 0.
    rows, cols, v = 8, 10, 10.0
    expected = (4 * v * 2 * ((rows - 2) + (cols - 2)) + 4 * 3 * math.sqrt(2) * v) / (rows * cols)
    assert fm.edge_intensity(np.full((rows, cols), v)) == pytest.approx(expected)
    image = textured()
    assert fm.edge_intensity(3 * image) == pytest.approx(3 * fm.edge_intensity(image))


# --- pair metrics -----------------------------------------------------------------------------------

def test_mutual_information_in_bits():
    a = checkerboard(8, 0, 255)
    constant = np.full((8, 8), 100.0)
    assert fm.mutual_information(a, constant, a) == pytest.approx(1.0, abs=1e-12)     # 1 bit + 0
    four = np.tile([0.0, 85.0, 170.0, 255.0], (4, 2))
    assert fm.mutual_information(four, np.zeros_like(four), four) == pytest.approx(2.0, abs=1e-12)
    image = textured()
    assert fm.mutual_information(image, image, image) == pytest.approx(2 * fm.entropy(image), rel=1e-12)
    columns = np.tile([0.0, 255.0], (8, 4))                # varies along x; F below varies along y
    assert fm.mutual_information(columns, columns, columns.T) == pytest.approx(0.0, abs=1e-12)


def orthogonal_pair():
    """A varies along x, B along y: zero covariance, both variance 50^2."""
    a = 100 + 50 * np.tile([1.0, -1.0], (6, 4))
    b = 100 + 50 * np.tile([[1.0], [-1.0]], (3, 8))
    return a, b


def test_scd_closed_forms_and_signs():
    a, b = orthogonal_pair()
    # F = (A + B) / 2: corr((A - B) / 2, A) = s^2 / (s * sqrt(2) s) = 1 / sqrt(2), twice.
    assert fm.scd(a, b, (a + b) / 2) == pytest.approx(math.sqrt(2))
    assert fm.scd(a, b, a + b) == pytest.approx(2.0)                                  # corr(A, A) + corr(B, B)
    # F = A - B: corr(A - 2B, A) = 1 / sqrt(5); corr(-B, B) = -1.
    assert fm.scd(a, b, a - b) == pytest.approx(1 / math.sqrt(5) - 1)
    assert fm.scd(a, b, a - b) < 0


def test_vif_identity_contrast_and_flat_conventions():
    a = textured()
    assert fm.vif(a, a, a) == pytest.approx(2.0, abs=1e-6)
    assert fm.vif(a, a, a + 10) == pytest.approx(2.0, abs=1e-6)                       # offsets carry no information
    assert fm.vif(a, a, 2 * a) > 2.0 > fm.vif(a, a, a / 2)                          # VIF rewards added contrast
    assert fm.vif(a, a, np.zeros_like(a)) == 0.0                                      # nothing of A survives
    zeros = np.zeros_like(a)
    assert fm.vif(zeros, zeros, a) == 2.0                                             # flat reference counts as 1
    with pytest.raises(ValueError, match="41"):
        fm.vif(a[:40], a[:40], a[:40])


def test_vif_checkerboard_closed_form():
    # A = checkerboard {a, b}, F = k A. Scale 1: every Gaussian window puts weight P on its centre's parity
    # (P = E^2 + O^2 from the 1-D kernel's even / odd offset sums), so the local variance is everywhere
    # s2 = P (1 - P) (a - b)^2, F's is k^2 s2 and the gain is k: VIFp = log10(1 + k^2 s2 / 2) / log10(1 + s2 / 2)
    # (sigma_n^2 = 2). Scales 2-4 blur and keep every other pixel of a checkerboard: a constant, no variance.
    offsets = np.arange(17) - 8
    kernel = np.exp(-offsets ** 2 / (2 * (17 / 5) ** 2))
    kernel /= kernel.sum()
    even, odd = kernel[offsets % 2 == 0].sum(), kernel[offsets % 2 == 1].sum()
    a, b = 100.0, 104.0
    s2 = (even ** 2 + odd ** 2) * (1 - even ** 2 - odd ** 2) * (a - b) ** 2
    image = checkerboard(64, a, b)
    for k in (2.0, 0.5):
        expected = 2 * math.log10(1 + k * k * s2 / 2) / math.log10(1 + s2 / 2)
        assert fm.vif(image, image, k * image) == pytest.approx(expected, rel=1e-8)


def reference_qabf(a, b, f):
    """CDDFuse's Qabf written out pixel by pixel from its definition (zero padding, its Sobel kernels)."""
    def edges(image):
        padded = np.pad(image, 1)
        strength, angle = np.zeros(image.shape), np.zeros(image.shape)
        for i, j in np.ndindex(image.shape):
            w = padded[i:i + 3, j:j + 3]
            gx = float(np.dot(w[:, 0] - w[:, 2], [1, 2, 1]))     # convolve2d with [[-1, 0, 1], ...] flips it
            gy = float(np.dot(w[2] - w[0], [1, 2, 1]))
            strength[i, j] = math.hypot(gx, gy)
            angle[i, j] = math.pi / 2 if gx == 0 else math.atan(gy / gx)
        return strength, angle

    def preserved(gs, as_, gf, af):
        ratio = gf / gs if gs > gf else gs / gf if gs < gf else gf
        orientation = 1 - abs(as_ - af) / (math.pi / 2)
        return 0.9994 / (1 + math.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + math.exp(-22 * (orientation - 0.8)))

    (ga, aa), (gb, ab), (gf, af) = edges(a), edges(b), edges(f)
    total = sum(preserved(ga[p], aa[p], gf[p], af[p]) * ga[p] + preserved(gb[p], ab[p], gf[p], af[p]) * gb[p]
                for p in np.ndindex(a.shape))
    return total / np.sum(ga + gb)


def test_qabf_matches_its_definition_with_flat_and_pure_vertical_gradients():
    rows = np.tile(np.array([0.0, 0, 50, 50, 120, 120, 30, 30, 0, 0])[:, None], (1, 9))   # gx = 0 inside
    cols = textured((10, 9), seed=5)
    fused = np.where(np.arange(9) < 4, rows, cols)                                        # equal to A on the left
    assert fm.qabf(rows, cols, fused) == pytest.approx(reference_qabf(rows, cols, fused), rel=1e-12)
    assert fm.qabf(rows, fused, cols) == pytest.approx(reference_qabf(rows, fused, cols), rel=1e-12)


def test_qabf_identical_images_keeps_cddfuse_strength_ratio():
    # F = A = B: orientation ratio 1 -> Qa = 0.9879 / (1 + e^-4.4). CDDFuse (like MATLAB analysis_Qabf) sets the
    # strength ratio to gF where gA == gF; every edge here is >= 100, so Qg = 0.9994 / (1 + e^(-15 (gF - 0.5)))
    # = 0.9994 exactly (a ratio of 1 would give 0.9994 / (1 + e^-7.5)). Qabf = Qg * Qa, weights cancel.
    expected = 0.9994 * 0.9879 / (1 + math.exp(-4.4))
    a = checkerboard(12, 100, 200)
    assert fm.qabf(a, a, a) == pytest.approx(expected, rel=1e-12)
    step = vertical_step(10, 12, 5, 100, 200)
    assert fm.qabf(step, step, step) == pytest.approx(expected, rel=1e-12)
    assert fm.qabf(step, np.zeros_like(step), step) == pytest.approx(expected, rel=1e-12)   # B has no edge weight


def test_nabf_zero_without_stronger_edges():
    a = textured()
    assert fm.nabf(a, a, a) == 0.0
    assert fm.nabf(a, textured(seed=3), a) == 0.0                                     # gF == gA: not stronger
    rows = cols = 16
    a, b = vertical_step(rows, cols, 8), vertical_step(rows, cols, 8).T
    assert fm.nabf(a, b, (a + b) / 2) == 0.0                                          # |(vA + vB) / 2| <= max


def test_nabf_doubled_edge_closed_form():
    # A = B = vertical 0/100 step; Kumar's Sobel / 8 (mirrored border) gives 50 on the 2 columns beside the
    # step and 0 elsewhere. F = 2A doubles them: ratio 1/2 -> Qg = 0.9999 / 2; same orientation -> angle
    # term 1 -> Qa = 0.9995 / (1 + e^-11); Q = sqrt(Qg Qa). Weights: 50^1.5 on edges, 0.001 elsewhere.
    rows, cols = 12, 16
    a = vertical_step(rows, cols, 8)
    q = math.sqrt(0.9999 / 2 * 0.9995 / (1 + math.exp(-11)))
    edge_weight = 2 * rows * 50 ** 1.5
    expected = (1 - q) * edge_weight / (edge_weight + 0.001 * rows * (cols - 2))
    assert fm.nabf(a, a, 2 * a) == pytest.approx(expected, rel=1e-12)


def test_ssim_closed_forms_and_data_range():
    a = textured()
    assert fm.ssim(a, a, a) == pytest.approx(2.0, rel=1e-12)
    # constant images: no structure term left, luminance term (2 mu_f mu_a + C1) / (mu_f^2 + mu_a^2 + C1)
    src, fused = np.full((16, 16), 100.0), np.full((16, 16), 50.0)
    for data_range in (255.0, 2.0):
        c1 = (0.01 * data_range) ** 2
        expected = 2 * (2 * 50 * 100 + c1) / (50 ** 2 + 100 ** 2 + c1)
        assert fm.ssim(src, src, fused, data_range=data_range) == pytest.approx(expected, rel=1e-8)


def test_ssim_period_seven_stripes_pin_window_covariance_and_crop():
    # X = columns repeating a 7-value pattern p, Y = k X. Every full 7 x 7 window holds 7 copies of p: mean
    # mean(p), sample variance 49/48 var(p), cov(X, Y) = k var(X), so SSIM is the same at every centre the
    # 3-px crop keeps (windows sticking out of the image would differ).
    p, k = np.array([10.0, 200.0, 40.0, 90.0, 160.0, 0.0, 120.0]), 0.5
    x = np.tile(p[np.arange(20) % 7], (20, 1))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu, var = p.mean(), p.var() * 49 / 48
    expected = (2 * k * mu * mu + c1) / ((1 + k * k) * mu * mu + c1) * (2 * k * var + c2) / ((1 + k * k) * var + c2)
    assert fm.ssim(x, x, k * x) == pytest.approx(2 * expected, rel=1e-12)          # ssim(F, A) + ssim(F, B)


def test_mse_psnr_use_mean_over_sources_and_peak_of_fused():
    a = np.tile(10.0 + np.arange(8), (4, 1))
    f, b = a + 10, a + 30
    assert fm.mse(a, b, f) == pytest.approx((10 ** 2 + 20 ** 2) / 2)
    assert fm.psnr(a, b, f) == pytest.approx(10 * math.log10(27.0 ** 2 / 250))      # max(F) = 17 + 10
    assert fm.psnr(a, a, a) == math.inf


def test_cc_closed_forms():
    a = textured()
    assert fm.cc(a, a, 2 * a + 3) == pytest.approx(1.0)
    assert fm.cc(a, 255 - a, a) == pytest.approx(0.0, abs=1e-12)                   # (1 + -1) / 2
    assert fm.cc(a, a, 255 - a) == pytest.approx(-1.0)


SYMMETRIC = ("MI", "SCD", "VIF", "Qabf", "Nabf", "SSIM", "MSE", "PSNR", "CC")


def test_swapping_sources_leaves_symmetric_metrics_unchanged_and_order_is_metrics():
    a, b = textured(seed=1), textured(seed=2)[::-1]
    f = np.round(0.6 * a + 0.4 * b)
    forward, swapped = fm.fusion_metrics(a, b, f), fm.fusion_metrics(b, a, f)
    assert tuple(forward) == fm.METRICS
    for name in SYMMETRIC:
        assert swapped[name] == pytest.approx(forward[name], rel=1e-12), name
    assert forward["VIF"] == fm.vif(a, b, f) and forward["Nabf"] == fm.nabf(a, b, f)
    assert forward["SSIM"] == fm.ssim(a, b, f, data_range=255.0)
    assert fm.fusion_metrics(a, b, f, data_range=2.0)["SSIM"] == fm.ssim(a, b, f, data_range=2.0)
    with pytest.raises(ValueError, match="shape"):
        fm.fusion_metrics(a, b, f[:-1])


# --- grey conversion --------------------------------------------------------------------------------

def opencv_gray(r, g, b):
    """OpenCV's uint8 COLOR_RGB2GRAY in integer arithmetic: (4899 R + 9617 G + 1868 B + 2^13) >> 14."""
    return (4899 * r + 9617 * g + 1868 * b + 8192) >> 14


def test_to_gray_rounds_like_opencv_uint8():
    gray = np.array([[12.3, 4.0]])
    np.testing.assert_array_equal(fm.to_gray(gray), gray)
    np.testing.assert_array_equal(fm.to_gray(gray[None]), gray)                      # one band: itself
    # 0.299 R + 0.587 G + 0.114 B = 36.5, 60.499, 79.502: the 14-bit fixed point gives 37, 61, 79.
    triples = np.array([[0, 28, 176], [0, 65, 196], [0, 130, 28], [255, 255, 255], [255, 0, 0]])
    rgb = triples.T[:, None, :].astype(np.float64)                                  # (3, 1, 5)
    np.testing.assert_array_equal(fm.to_gray(rgb)[0], [37, 61, 79, 255, 76])
    rng = np.random.default_rng(RNG_SEED)
    r, g, b = rng.integers(0, 256, (3, 64, 64))
    expected = opencv_gray(r, g, b)
    np.testing.assert_array_equal(fm.to_gray(np.stack([r, g, b])), expected)
    np.testing.assert_array_equal(fm.to_gray(np.stack([r, g, b, np.zeros_like(r)])), expected)   # alpha ignored
    with pytest.raises(ValueError):
        fm.to_gray(np.zeros((5, 4, 4)))


# --- a real pair --------------------------------------------------------------------------------------

def test_real_roadscene_pair_average_beats_noise():
    from tests.conftest import shared_data
    ir_path, vi_path = fusion_eval.list_fusion_pairs(shared_data("irvis_roadscene"))[0]
    ir, vi = fusion_eval.read_gray(ir_path), fusion_eval.read_gray(vi_path)
    fused = np.round((ir + vi) / 2)
    noise = np.random.default_rng(RNG_SEED).integers(0, 256, ir.shape).astype(np.float64)
    good, bad = fm.fusion_metrics(ir, vi, fused), fm.fusion_metrics(ir, vi, noise)
    assert all(math.isfinite(v) for v in good.values())
    ranges = {"EN": (3, 8), "SD": (5, 128), "SF": (1, 100), "AG": (0.5, 50), "EI": (2, 500), "MI": (0.5, 16),
              "SCD": (0, 2), "VIF": (0.1, 2), "Qabf": (0.05, 1), "Nabf": (0, 0.5), "SSIM": (0.5, 2),
              "MSE": (1, 10000), "PSNR": (8, 40), "CC": (0.2, 1)}
    for name, (low, high) in ranges.items():
        assert low < good[name] < high, (name, good[name])
    assert good["MI"] > bad["MI"] and good["SSIM"] > bad["SSIM"]



# TNO pair 01, F = round((IR + VI) / 2): the reference values of specs/dig2dig.md (CDDFuse's evaluator)
TNO_REFERENCE = {"EN": 6.2484, "SD": 23.3161, "SF": 6.6722, "AG": 2.6036, "MI": 2.0991, "SCD": 1.7660,
                 "VIF": 0.5083, "Qabf": 0.3311, "CC": 0.3971, "MSE": 1682.66, "PSNR": 15.52}
TNO_SSIM = {2.0: 1.0232, 255.0: 1.5245}


def test_metrics_reproduce_the_reference_values_on_tno_pair_01():
    from tests.conftest import shared_data
    folder = shared_data("irvis_tno_ref")
    ir, vi = fusion_eval.read_gray(folder / "ir" / "01.png"), fusion_eval.read_gray(folder / "vi" / "01.png")
    assert ir.shape == vi.shape == (576, 768)
    fused = np.round((ir + vi) / 2)
    for data_range, expected in TNO_SSIM.items():
        values = fm.fusion_metrics(ir, vi, fused, data_range=data_range)
        assert values["SSIM"] == pytest.approx(expected, rel=1e-3), data_range
    for name, expected in TNO_REFERENCE.items():
        assert values[name] == pytest.approx(expected, rel=1e-3), name


# --- evaluate-fusion ------------------------------------------------------------------------------------

def write_image(path, array, driver, dtype="uint8"):
    array = np.asarray(array)
    array = array[None] if array.ndim == 2 else array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=array.shape[2], height=array.shape[1],
                           count=array.shape[0], dtype=dtype) as dst:
            dst.write(array.astype(dtype))


@pytest.fixture
def fusion_folders(tmp_path):
    """pairs/ir, pairs/vi (RGB) as PNG and fused/ as GeoTIFF (b in 16 bits), plus the expected metrics."""
    rng = np.random.default_rng(RNG_SEED)
    for sub in ("pairs/ir", "pairs/vi", "fused"):
        (tmp_path / sub).mkdir(parents=True)
    expected = {}
    for name, seed in (("a", 1), ("b", 2)):
        ir = textured((48, 56), seed).astype(np.uint8)
        vi_rgb = rng.integers(0, 256, (3, 48, 56)).astype(np.uint8)
        vi_rgb[1] = textured((48, 56), seed + 10)
        vi = opencv_gray(*vi_rgb.astype(np.int64)).astype(np.float64)
        fused = np.round((ir + vi) / 2).astype(np.uint8)
        write_image(tmp_path / "pairs/ir" / f"{name}.png", ir, "PNG")
        write_image(tmp_path / "pairs/vi" / f"{name}.png", vi_rgb, "PNG")
        if name == "b":   # 16-bit: 257 v maps back to v exactly (257 * 255 = 65535)
            write_image(tmp_path / "fused" / f"{name}.tif", fused.astype(np.uint32) * 257, "GTiff", "uint16")
        else:
            write_image(tmp_path / "fused" / f"{name}.tif", fused, "GTiff")
        expected[name] = fm.fusion_metrics(ir.astype(np.float64), vi, fused.astype(np.float64))
    write_image(tmp_path / "pairs/ir" / "lonely.png", np.zeros((48, 56)), "PNG")   # no visible twin: skipped
    return tmp_path, expected


def test_evaluate_fusion_writes_rows_and_mean(fusion_folders):
    root, expected = fusion_folders
    output = root / "out" / "metrics.csv"
    means = fusion_eval.evaluate_fusion(root / "pairs", root / "fused", output)
    with open(output, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", *fm.METRICS]
    assert [row[0] for row in rows[1:]] == ["a", "b", "mean"]
    for row in rows[1:3]:
        for name, value in zip(fm.METRICS, row[1:]):
            assert float(value) == pytest.approx(expected[row[0]][name], rel=1e-12), (row[0], name)
    for name, value in zip(fm.METRICS, rows[3][1:]):
        mean = (expected["a"][name] + expected["b"][name]) / 2
        assert float(value) == pytest.approx(mean, rel=1e-12) and means[name] == pytest.approx(mean, rel=1e-12)
    assert list(means) == list(fm.METRICS)


def test_evaluate_fusion_cli_arguments(fusion_folders, capsys):
    root, expected = fusion_folders
    parser = argparse.ArgumentParser()
    fusion_eval.add_arguments(parser)
    args = parser.parse_args(["--pairs", str(root / "pairs"), "--fused", str(root / "fused"),
                              "--output", str(root / "m.csv"), "--data-range", "2"])
    fusion_eval.main(args)
    assert "SSIM" in capsys.readouterr().out
    with open(root / "m.csv", newline="") as handle:
        mean_row = list(csv.reader(handle))[-1]
    ssim_mean = float(mean_row[1 + fm.METRICS.index("SSIM")])
    assert ssim_mean != pytest.approx((expected["a"]["SSIM"] + expected["b"]["SSIM"]) / 2)   # data range 2


def test_evaluate_fusion_clear_errors(fusion_folders):
    root, _ = fusion_folders
    (root / "half/ir").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="half' has no 'vi' folder"):
        fusion_eval.list_fusion_pairs(root / "half")
    (root / "other/ir").mkdir(parents=True)
    (root / "other/vi").mkdir()
    write_image(root / "other/ir/x.png", np.zeros((8, 8)), "PNG")
    write_image(root / "other/vi/y.png", np.zeros((8, 8)), "PNG")
    with pytest.raises(ValueError, match="No image names"):
        fusion_eval.list_fusion_pairs(root / "other")
    (root / "fused/b.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 pairs \(e\.g\. b\)"):
        fusion_eval.evaluate_fusion(root / "pairs", root / "fused", root / "m.csv")
    write_image(root / "fused/b.png", np.zeros((40, 56)), "PNG")
    with pytest.raises(ValueError, match="b.png"):
        fusion_eval.evaluate_fusion(root / "pairs", root / "fused", root / "m.csv")
    assert not (root / "m.csv").exists()
