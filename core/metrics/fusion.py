"""Infrared/visible image-fusion metrics with the conventions of CDDFuse's ``utils/Evaluator.py``.

A = infrared, B = visible, F = fused: 2-D grey images of values 0..255 (float64; see `to_gray`).
Published IVIF tables (CDDFuse, DDFM, ...) come from that evaluator and the MATLAB scripts it ports,
so its definitions are kept, quirks included, to make our numbers comparable with theirs:

- EN, MI: grey values rounded to integers (clipped to 0..255), 256 bins (256 x 256 joint for MI),
  in bits. CDDFuse's MI (sklearn's mutual_info_score, one bin per distinct value, nats) equals ours
  times ln 2 on integer images.
- SD: population standard deviation. SF = sqrt(RF^2 + CF^2) from neighbour differences.
  AG: mean sqrt((gx^2 + gy^2) / 2) with np.gradient's differences (central inside, one-sided at borders).
- EI (not in CDDFuse's evaluator; as the usual MMIF toolboxes): mean Sobel magnitude, zero padding.
- Qabf (Xydeas-Petrovic, L = 1): zero-padded Sobel, orientation arctan(gy / gx) with pi/2 where gx = 0,
  and, like CDDFuse and the MATLAB analysis_Qabf.m, strength ratio gF (not 1) where gA == gF.
  So F = A = B scores Qg * Qa < 1 (0.9753 on strong edges), never 1.
- Nabf: B. K. Shreyamsha Kumar's modified artefact measure (his objective_fusion_perform_fn.m):
  Sobel / 8 with mirrored borders, weights g^1.5 where g >= 2 else 0.001, only pixels where F's edge
  is stronger than both sources'.
- SSIM: skimage's structural_similarity defaults (7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample
  covariance, 3-pixel border cropped) with data_range explicit: CDDFuse passed none, which old skimage
  took as 2 for float images and new skimage refuses.
- VIF: pixel-domain VIFp at 4 scales (Gaussian N = 17, 9, 5, 3, sigma = N / 5, sigma_n^2 = 2, 'valid'
  convolutions, factor-2 decimation); a flat reference counts as perfectly preserved (1).
- MSE averaged over the two sources; PSNR = 10 log10(max(F)^2 / MSE) (peak = max of F, not 255);
  CC = mean of the two Pearson r; SCD = corr(F - B, A) + corr(F - A, B).

Undefined values (a constant image in CC/SCD, zero MSE in PSNR) come out as NaN or inf, as in CDDFuse.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage
from scipy.signal import convolve2d

METRICS = ("EN", "SD", "SF", "AG", "EI", "MI", "SCD", "VIF", "Qabf", "Nabf", "SSIM", "MSE", "PSNR", "CC")

GREY_LEVELS = 256
# OpenCV's COLOR_RGB2GRAY on uint8: 0.299, 0.587, 0.114 as 14-bit fixed point, rounded half up.
RGB_TO_GRAY_FIXED = (4899, 9617, 1868)
RGB_TO_GRAY_SHIFT = 2 ** 14

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])

VIF_WINDOWS = (17, 9, 5, 3)
VIF_NOISE_VARIANCE = 2.0
VIF_EPS = 1e-10
VIF_MIN_SIZE = 41   # smallest side for which the coarsest scale still has a 'valid' pixel

QABF_G = (0.9994, -15.0, 0.5)   # Gamma, kappa, sigma of the strength sigmoid
QABF_A = (0.9879, -22.0, 0.8)   # and of the orientation sigmoid

NABF_G = (0.9999, -19.0, 0.5)   # Kumar's Nrg, -kg, sigmag
NABF_A = (0.9995, -22.0, 0.5)   # Nra, -ka, sigmaa
NABF_STRONG_EDGE, NABF_EXPONENT, NABF_MIN_WEIGHT = 2.0, 1.5, 0.001

SSIM_WINDOW, SSIM_K1, SSIM_K2 = 7, 0.01, 0.03


def _images(*images) -> list[np.ndarray]:
    """The images as float64, checked to be 2-D and of one shape."""
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    if any(a.ndim != 2 for a in arrays) or len({a.shape for a in arrays}) != 1:
        raise ValueError(f"fusion metrics need 2-D grey images of one shape, got {[a.shape for a in arrays]}")
    return arrays


def _grey_levels(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, GREY_LEVELS - 1).astype(np.intp).ravel()


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(x * y) / np.sqrt(np.sum(x * x) * np.sum(y * y)))


def to_gray(array) -> np.ndarray:
    """(bands, H, W) or (H, W) -> (H, W) float64 grey.

    One band (or grey + alpha) is returned as it is. RGB(A) becomes 0.299 R + 0.587 G + 0.114 B computed
    as OpenCV's COLOR_RGB2GRAY does on uint8 (coefficients 4899, 9617, 1868 / 2^14, rounded half up), so
    8-bit inputs give exactly cv2.imread + cvtColor grey. CDDFuse's own loader converts float32 and rounds
    half to even, which differs by one grey level on 0.19 % of 8-bit RGB triples.
    """
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[0] in (1, 2):
        return a[0]
    if a.ndim == 3 and a.shape[0] in (3, 4):
        weighted = sum(w * band for w, band in zip(RGB_TO_GRAY_FIXED, a[:3]))
        return np.floor(weighted / RGB_TO_GRAY_SHIFT + 0.5)
    raise ValueError(f"expected (H, W) or (bands, H, W) with 1 to 4 bands, got shape {a.shape}")


def entropy(F) -> float:
    """EN: Shannon entropy (bits) of the 256-bin grey histogram."""
    (F,) = _images(F)
    p = np.bincount(_grey_levels(F), minlength=GREY_LEVELS) / F.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def standard_deviation(F) -> float:
    """SD: population standard deviation of the grey values."""
    (F,) = _images(F)
    return float(np.std(F))


def spatial_frequency(F) -> float:
    """SF: sqrt(mean squared horizontal + mean squared vertical neighbour difference)."""
    (F,) = _images(F)
    return float(np.sqrt(np.mean(np.diff(F, axis=1) ** 2) + np.mean(np.diff(F, axis=0) ** 2)))


def average_gradient(F) -> float:
    """AG: mean of sqrt((gx^2 + gy^2) / 2), np.gradient differences."""
    (F,) = _images(F)
    gy, gx = np.gradient(F)
    return float(np.mean(np.sqrt((gx ** 2 + gy ** 2) / 2)))


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gx, gy) of the 3 x 3 Sobel operator, zero padding, CDDFuse's signs."""
    return convolve2d(image, SOBEL_X, mode="same"), convolve2d(image, SOBEL_Y, mode="same")


def edge_intensity(F) -> float:
    """EI: mean Sobel gradient magnitude (zero padding)."""
    (F,) = _images(F)
    return float(np.mean(np.hypot(*_sobel(F))))


def _mutual_information_bits(x: np.ndarray, y: np.ndarray) -> float:
    joint = np.bincount(_grey_levels(x) * GREY_LEVELS + _grey_levels(y), minlength=GREY_LEVELS ** 2)
    joint = joint.reshape(GREY_LEVELS, GREY_LEVELS) / x.size
    independent = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    seen = joint > 0
    return float(np.sum(joint[seen] * np.log2(joint[seen] / independent[seen])))


def mutual_information(A, B, F) -> float:
    """MI: MI(F, A) + MI(F, B) in bits, from 256 x 256 joint grey histograms."""
    A, B, F = _images(A, B, F)
    return _mutual_information_bits(F, A) + _mutual_information_bits(F, B)


def scd(A, B, F) -> float:
    """SCD: sum of the correlations of differences, corr(F - B, A) + corr(F - A, B)."""
    A, B, F = _images(A, B, F)
    return _pearson(F - B, A) + _pearson(F - A, B)


def _gaussian_blur_valid(image: np.ndarray, size: int) -> np.ndarray:
    """'valid' convolution with MATLAB's fspecial('gaussian', size, size / 5), applied separably."""
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-x * x / (2 * (size / 5) ** 2))
    kernel /= kernel.sum()
    return convolve2d(convolve2d(image, kernel[None, :], mode="valid"), kernel[:, None], mode="valid")


def _vifp(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Pixel-domain VIF of `distorted` against `reference` (Sheikh-Bovik vifp_mscale)."""
    numerator = denominator = 0.0
    for scale, size in enumerate(VIF_WINDOWS):
        blur = functools.partial(_gaussian_blur_valid, size=size)
        if scale > 0:
            reference, distorted = blur(reference)[::2, ::2], blur(distorted)[::2, ::2]
        mu_r, mu_d = blur(reference), blur(distorted)
        var_r = np.maximum(blur(reference * reference) - mu_r * mu_r, 0)
        var_d = np.maximum(blur(distorted * distorted) - mu_d * mu_d, 0)
        cov = blur(reference * distorted) - mu_r * mu_d

        gain = cov / (var_r + VIF_EPS)
        noise = var_d - gain * cov
        flat_r, flat_d = var_r < VIF_EPS, var_d < VIF_EPS
        gain[flat_r], noise[flat_r], var_r[flat_r] = 0, var_d[flat_r], 0
        gain[flat_d], noise[flat_d] = 0, 0
        negative = gain < 0
        noise[negative], gain[negative] = var_d[negative], 0
        noise = np.maximum(noise, VIF_EPS)

        numerator += np.sum(np.log10(1 + gain * gain * var_r / (noise + VIF_NOISE_VARIANCE)))
        denominator += np.sum(np.log10(1 + var_r / VIF_NOISE_VARIANCE))
    return float(numerator / denominator) if denominator > 0 else 1.0


def vif(A, B, F) -> float:
    """VIF: VIFp(A, F) + VIFp(B, F); images need at least 41 x 41 pixels."""
    A, B, F = _images(A, B, F)
    if min(F.shape) < VIF_MIN_SIZE:
        raise ValueError(f"VIF needs images of at least {VIF_MIN_SIZE} x {VIF_MIN_SIZE} pixels, got {F.shape}")
    return _vifp(A, F) + _vifp(B, F)


def _sigmoid(x: np.ndarray, gamma: float, kappa: float, sigma: float) -> np.ndarray:
    return gamma / (1 + np.exp(kappa * (x - sigma)))


def _qabf_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel strength and orientation arctan(gy / gx) (pi/2 where gx == 0)."""
    gx, gy = _sobel(image)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.hypot(gx, gy), np.where(gx == 0, np.pi / 2, np.arctan(gy / gx))


def _qabf_preservation(strength_s, angle_s, strength_f, angle_f) -> np.ndarray:
    """Q^{SF}: edge preservation of source S in F, CDDFuse's strength ratio (gF where gS == gF)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(strength_s > strength_f, strength_f / strength_s,
                         np.where(strength_s < strength_f, strength_s / strength_f, strength_f))
    orientation = 1 - np.abs(angle_s - angle_f) / (np.pi / 2)
    return _sigmoid(ratio, *QABF_G) * _sigmoid(orientation, *QABF_A)


def qabf(A, B, F) -> float:
    """Qabf: gradient-weighted edge preservation of A and B in F (Xydeas-Petrovic, L = 1)."""
    A, B, F = _images(A, B, F)
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = _qabf_edges(A), _qabf_edges(B), _qabf_edges(F)
    preserved = _qabf_preservation(g_a, a_a, g_f, a_f) * g_a + _qabf_preservation(g_b, a_b, g_f, a_f) * g_b
    total = np.sum(g_a + g_b)
    return float(np.sum(preserved) / total) if total > 0 else float("nan")


def _nabf_edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kumar's Sobel / 8 (mirrored border): strength and orientation arctan(gv / gh), 0 where flat."""
    gv = ndimage.correlate(image, SOBEL_X / 8, mode="mirror")
    gh = ndimage.correlate(image, -SOBEL_Y / 8, mode="mirror")
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
    return np.hypot(gv, gh), angle


def _nabf_preservation(strength_s, angle_s, strength_f, angle_f) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((strength_s == 0) | (strength_f == 0), 0.0,
                         np.minimum(strength_s, strength_f) / np.maximum(strength_s, strength_f))
    orientation = np.abs(np.abs(angle_s - angle_f) - np.pi / 2) * 2 / np.pi
    return np.sqrt(_sigmoid(ratio, *NABF_G) * _sigmoid(orientation, *NABF_A))


def nabf(A, B, F) -> float:
    """Nabf: Kumar's modified fusion-artefact measure (edges of F stronger than both sources')."""
    A, B, F = _images(A, B, F)
    (g_a, a_a), (g_b, a_b), (g_f, a_f) = _nabf_edges(A), _nabf_edges(B), _nabf_edges(F)
    w_a, w_b = (np.where(g >= NABF_STRONG_EDGE, g ** NABF_EXPONENT, NABF_MIN_WEIGHT) for g in (g_a, g_b))
    artefact = (g_f > g_a) & (g_f > g_b)
    lost = (1 - _nabf_preservation(g_a, a_a, g_f, a_f)) * w_a + (1 - _nabf_preservation(g_b, a_b, g_f, a_f)) * w_b
    return float(np.sum(lost[artefact]) / np.sum(w_a + w_b))


def _ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """skimage.metrics.structural_similarity with its defaults (uniform 7 x 7, sample covariance)."""
    def mean(image):
        return ndimage.uniform_filter(image, size=SSIM_WINDOW)

    cov_norm = SSIM_WINDOW ** 2 / (SSIM_WINDOW ** 2 - 1)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov = cov_norm * (mean(x * y) - mu_x * mu_y)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean())


def ssim(A, B, F, data_range: float = 255.0) -> float:
    """SSIM: ssim(F, A) + ssim(F, B) over a `data_range` grey scale."""
    A, B, F = _images(A, B, F)
    if min(F.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {F.shape}")
    return _ssim_pair(F, A, data_range) + _ssim_pair(F, B, data_range)


def mse(A, B, F) -> float:
    """MSE: mean of MSE(F, A) and MSE(F, B)."""
    A, B, F = _images(A, B, F)
    return float((np.mean((A - F) ** 2) + np.mean((B - F) ** 2)) / 2)


def psnr(A, B, F) -> float:
    """PSNR: 10 log10(max(F)^2 / MSE) in dB (inf when F equals both sources)."""
    A, B, F = _images(A, B, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10 * np.log10(np.max(F) ** 2 / mse(A, B, F)))


def cc(A, B, F) -> float:
    """CC: mean of the Pearson correlations r(A, F) and r(B, F)."""
    A, B, F = _images(A, B, F)
    return (_pearson(A, F) + _pearson(B, F)) / 2


def fusion_metrics(A, B, F, data_range: float = 255.0) -> dict[str, float]:
    """All metrics of `METRICS`, in that order (data_range only affects SSIM)."""
    A, B, F = _images(A, B, F)
    return {
        "EN": entropy(F), "SD": standard_deviation(F), "SF": spatial_frequency(F), "AG": average_gradient(F),
        "EI": edge_intensity(F), "MI": mutual_information(A, B, F), "SCD": scd(A, B, F), "VIF": vif(A, B, F),
        "Qabf": qabf(A, B, F), "Nabf": nabf(A, B, F), "SSIM": ssim(A, B, F, data_range),
        "MSE": mse(A, B, F), "PSNR": psnr(A, B, F), "CC": cc(A, B, F),
    }
