"""Random fields and meandering centrelines, the raw material of the procedural scenes (optical
and SAR): smooth noise at a chosen scale, multi-octave (fractal) noise, and paths that wander
without looping back, rasterised to per-pixel distances."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

PATH_STEP = 0.7  # px between centreline samples: dense enough to leave no gaps


def noise_field(rng, shape, scale):
    """Unit-variance random field with blobs about `scale` px across, whatever the image size."""
    if scale < 4:
        white = rng.standard_normal(shape, dtype=np.float32)
        if scale < 0.5:
            return white
        radius = int(4 * scale + 0.5)
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / scale) ** 2)
        kernel /= kernel.sum()
        return ndimage.gaussian_filter(white, scale) / np.float32((kernel ** 2).sum())
    rows, cols = _blob_weights(shape[0], scale), _blob_weights(shape[1], scale)
    lattice = rng.standard_normal((rows.shape[1], cols.shape[1]), dtype=np.float32)
    return rows @ lattice @ cols.T


def _blob_weights(length, scale):
    """Gaussian bumps on a lattice `scale` apart; unit-norm rows give the field unit variance."""
    nodes = np.arange(-3, length / scale + 3) * scale
    weights = np.exp(-0.5 * ((np.arange(length)[:, None] - nodes[None]) / scale) ** 2)
    return (weights / np.linalg.norm(weights, axis=1, keepdims=True)).astype(np.float32)


def fractal_field(rng, shape, scale, octaves, roughness=0.5):
    """Multi-octave noise, unit variance: natural surfaces vary at every scale."""
    total = sum(roughness ** o * noise_field(rng, shape, scale / 2 ** o) for o in range(octaves))
    return total / np.float32(np.sqrt(sum(roughness ** (2 * o) for o in range(octaves))))


def wander(rng, shape, swing, wavelength, start=None, heading=None, length=None):
    """Centreline whose heading sways by about `swing` rad over `wavelength` px, so it meanders
    without looping back; by default it enters from a random border point heading inwards."""
    height, width = shape
    if start is None:
        edge = rng.integers(0, 4)
        along = rng.uniform(0, 1)
        start = [(0, along * width), (height - 1, along * width),
                 (along * height, 0), (along * height, width - 1)][edge]
        target = rng.uniform(0.25, 0.75, 2) * (height, width)
        heading = np.arctan2(target[0] - start[0], target[1] - start[1])
    steps = max(2, int((length or 2 * (height + width)) / PATH_STEP))
    sway = noise_field(rng, (1, steps), wavelength / PATH_STEP)[0]
    headings = heading + swing * (sway - sway[0])
    ys = start[0] + np.cumsum(np.sin(headings)) * PATH_STEP
    xs = start[1] + np.cumsum(np.cos(headings)) * PATH_STEP
    return ys, xs, headings


def points_inside(shape, ys, xs):
    """Which path points fall on a pixel of the image."""
    return (ys > -0.5) & (ys < shape[0] - 0.5) & (xs > -0.5) & (xs < shape[1] - 0.5)


def trace_paths(shape, paths):
    """Rasterise centrelines; per pixel, distance to the nearest one and its half-width, arc length, index."""
    centre = np.zeros(shape, bool)
    half = np.zeros(shape, np.float32)
    along = np.zeros(shape, np.float32)
    which = np.zeros(shape, np.int32)
    for index, (ys, xs, half_width) in enumerate(paths):
        keep = points_inside(shape, ys, xs)
        iy, ix = np.round(ys[keep]).astype(int), np.round(xs[keep]).astype(int)
        centre[iy, ix] = True
        half[iy, ix] = np.broadcast_to(half_width, ys.shape)[keep]
        along[iy, ix] = np.flatnonzero(keep) * PATH_STEP
        which[iy, ix] = index
    if not centre.any():
        return np.full(shape, np.inf, np.float32), half, along, which
    distance, (near_y, near_x) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return (distance.astype(np.float32), half[near_y, near_x], along[near_y, near_x],
            which[near_y, near_x])
