"""Bi-temporal change-detection data: the A/B/label folder layout, masks, procedural pairs, patches.

    ROOT/A/NAME       image at time A (any raster GDAL reads)
    ROOT/B/NAME       image at time B, same size and bands
    ROOT/label/NAME   change mask: 0/1 or 0/255 (LEVIR, DSIFN, ChangeFormer); label nodata = ignore

Procedural pairs start from a procedural scene (core.data.scenes.make_scene) at time A. Time B
shows real change - buildings that appeared (new roofs with cast shadows on soil or grass) or
were demolished (bare soil or rubble where the roof was, its shadow gone) - under a different
acquisition: seasonal vegetation colour, exposure, white balance, haze, tone curve and sensor
noise. The mask is 1 exactly on the footprints of appeared and demolished buildings; nothing
else that differs counts as change, so a detector has to learn to ignore it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from scipy import ndimage

from core.data.folder import check_labelled
from core.data.images import images_by_stem, to_unit, unit_range
from core.data.scenes import (BUILDING, ROAD, SCENE_CRS, SOIL, VEGETATION, WATER, make_scene, scene_bands,
                              scene_transform, shifted)
from core.raster import RasterError, open_raster, read_window, write_geotiff

CHANGE_FOLDERS = ("A", "B", "label")
CHANGE_CLASSES = [{"value": 0, "name": "no change", "color": "#000000"},
                  {"value": 1, "name": "change", "color": "#ff0000"}]
MASK_IGNORE = 255
LABEL_COLORMAP = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)}   # black / red (GeoTIFF palettes have no alpha)
_MASK_ROWS = 1024     # rows per read when scanning a mask for its maximum

# (red, green, blue, nir) digital numbers of new roofs (time B), before the acquisition's radiometry.
_NEW_ROOF_COLOURS = np.array([[172, 84, 62, 150], [196, 112, 78, 160], [90, 92, 100, 90], [140, 146, 154, 140],
                              [214, 212, 206, 206], [60, 66, 74, 62], [128, 90, 70, 118]], np.float32)
_BARE_SOIL = np.array([[170, 142, 108, 190], [146, 116, 88, 170], [188, 168, 136, 205]], np.float32)
_DEBRIS = np.array([[150, 148, 144, 146], [96, 92, 88, 94], [184, 170, 150, 176]], np.float32)
_HAZE = np.array([172, 182, 196, 152], np.float32)
_DEFAULT_SHADOW_RATIO = np.array([0.5, 0.53, 0.6, 0.45], np.float32)   # shadowed / lit, per band
_SHADOW_REACH = (3, 5)        # px from a footprint where the shadow-direction estimate samples
_MIN_CONTRAST = 45.0          # RGB distance a new surface keeps from what it replaces


# --- folder layout and masks --------------------------------------------------------------------

def list_change_triplets(root: str | os.PathLike, skip_unlabelled: bool = False) -> list[tuple[Path, Path, Path]]:
    """(A, B, label) paths matched by name stem, sorted by name; errors name the folder at fault. Pairs without
    a label are an error, or with `skip_unlabelled` (evaluation) left out with a warning naming them."""
    root = Path(root)
    if not root.is_dir():
        raise RasterError(f"Change dataset '{root}' does not exist.")
    missing = [name for name in CHANGE_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise RasterError(f"Change dataset '{root}' has no folder {', '.join(f'{m}/' for m in missing)}: expected "
                          "A/, B/ and label/ holding the same file names.")
    folders = {name: images_by_stem(root / name) for name in CHANGE_FOLDERS}
    a_names = set(folders["A"])
    if not a_names:
        raise RasterError(f"Folder '{root / 'A'}' holds no image.")
    absent = sorted(a_names - set(folders["B"]))
    if absent:
        raise RasterError(f"Folder '{root / 'B'}' has no file for {len(absent)} image(s) of A/: "
                          f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}.")
    unlabelled = sorted(a_names - set(folders["label"]))
    a_names -= set(unlabelled)
    check_labelled(f"Change dataset '{root}'", f"label in {root / 'label'}", [folders["A"][n].name for n in unlabelled],
                   len(a_names), skip_unlabelled)
    return [(folders["A"][n], folders["B"][n], folders["label"][n]) for n in sorted(a_names)]


def read_change_mask(path: str | os.PathLike) -> np.ndarray:
    """Change mask int64 (H, W): 1 change, 0 no change, 255 ignore (the label's nodata).

    0/1 masks: change = value > 0; any other (0/255, LEVIR, DSIFN): change = value >= 128.
    """
    with open_raster(path) as src:
        values, valid = read_window(src, Window(0, 0, src.width, src.height), [1])
    zero_one = not valid.any() or values[0][valid].max() <= 1
    return to_change(values[0], valid, zero_one)


def to_change(values: np.ndarray, valid: np.ndarray, zero_one: bool) -> np.ndarray:
    """Raw mask values -> 0 / 1 / MASK_IGNORE (int64), by the rule of read_change_mask."""
    change = values > 0 if zero_one else values >= 128
    return np.where(valid, change, MASK_IGNORE).astype(np.int64)


def mask_is_zero_one(src) -> bool:
    """True when a mask's valid values are all <= 1 (read in row blocks: memory bounded)."""
    top = -np.inf
    for row in range(0, src.height, _MASK_ROWS):
        values, valid = read_window(src, Window(0, row, src.width, min(_MASK_ROWS, src.height - row)), [1])
        if valid.any():
            top = max(top, float(values[0][valid].max()))
    return top <= 1


# --- procedural pairs ---------------------------------------------------------------------------

def make_change_pair(height: int, width: int, seed: int, nir: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image A uint8 (C, H, W), image B uint8 (C, H, W), change mask uint8 (H, W) in {0, 1}).

    C = 3 (RGB) or 4 (RGB + NIR); the RGB bands and the mask are the same with and without NIR.
    Pixel values are 1..255 so that 0 stays free to mark nodata.
    """
    scene, labels = make_scene(height, width, seed, nir=True)
    rng = np.random.default_rng([seed, 0xCD])    # its own stream: the scene never depends on it
    a = scene.astype(np.float32)
    shape = labels.shape
    luminance = a[:3].mean(0)
    buildings, count = ndimage.label(labels == BUILDING)
    shadow_dir = _shadow_direction(luminance, labels, buildings, count, rng)
    shadow_ratio = _shadow_ratio(a, labels, buildings, count, shadow_dir)

    b = _seasonal_vegetation(rng, a, labels)
    mask = np.zeros(shape, bool)
    mask |= _demolish(rng, a, b, labels, buildings, count, shadow_dir, shadow_ratio)
    mask |= _construct(rng, b, labels, luminance, shadow_dir, shadow_ratio)
    b = _acquisition(rng, b)
    a_out = scene if nir else scene[:3]
    return a_out, b[:4 if nir else 3], mask.astype(np.uint8)


def write_change_pair(dir_a_path: str | os.PathLike, dir_b_path: str | os.PathLike, label_path: str | os.PathLike,
                      height: int, width: int, seed: int, nir: bool = False) -> None:
    """A, B and the 0/1 change label as GeoTIFFs on one grid (UTM 33N, 0.5 m, like the scenes)."""
    a, b, mask = make_change_pair(height, width, seed, nir)
    crs_wkt = rasterio.crs.CRS.from_string(SCENE_CRS).to_wkt()
    transform = scene_transform(height, width, seed)
    for path, image in ((dir_a_path, a), (dir_b_path, b)):
        write_geotiff(path, image, crs_wkt=crs_wkt, transform=transform, band_names=scene_bands(nir))
    write_geotiff(label_path, mask, crs_wkt=crs_wkt, transform=transform, colormap=LABEL_COLORMAP,
                  band_names=["change"])


def write_change_dataset(folder: str | os.PathLike, count: int, size: int, seed: int, nir: bool = False) -> Path:
    """`count` square pairs as folder/A, folder/B, folder/label /pair_NNNN.tif."""
    folder = Path(folder)
    for index, pair_seed in enumerate(np.random.SeedSequence(seed).generate_state(count)):
        name = f"pair_{index:04d}.tif"
        write_change_pair(*(folder / sub / name for sub in CHANGE_FOLDERS), size, size, int(pair_seed), nir)
    return folder


def _shadow_direction(luminance, labels, buildings, count, rng) -> np.ndarray:
    """Unit (dy, dx) along which shadows fall in image A: the direction in which the ground next to
    the buildings is darkest. Random when the scene has no building."""
    angles = np.arange(16) * np.pi / 8
    directions = np.stack([np.sin(angles), np.cos(angles)], 1)
    if count == 0:
        return directions[rng.integers(0, 16)]
    blocked = (labels == BUILDING) | (labels == WATER) | (labels == ROAD)
    score = np.zeros(len(directions))
    weight = np.zeros(len(directions))
    for index, window in enumerate(ndimage.find_objects(buildings)[:40]):
        footprint, ys, xs = _padded_footprint(buildings, index + 1, window, max(_SHADOW_REACH) + 1)
        means = np.full(len(directions), np.nan)
        for k, (dy, dx) in enumerate(directions):
            ring = np.zeros_like(footprint)
            for step in _SHADOW_REACH:
                ring |= shifted(footprint, int(round(step * dy)), int(round(step * dx)))
            ring &= ~footprint & ~blocked[ys, xs]
            if ring.sum() >= 4:
                means[k] = luminance[ys, xs][ring].mean()
        if np.isfinite(means).sum() >= 8:
            relative = means / np.nanmedian(means)
            score += np.nan_to_num(relative)
            weight += np.isfinite(relative)
    if not weight.any():
        return directions[rng.integers(0, 16)]
    return directions[np.argmin(np.where(weight > 0, score / np.maximum(weight, 1), np.inf))]


def _shadow_ratio(a, labels, buildings, count, shadow_dir) -> np.ndarray:
    """Per-band shadowed / lit brightness next to A's buildings (a default when it cannot be told)."""
    if count == 0:
        return _DEFAULT_SHADOW_RATIO
    blocked = (labels == BUILDING) | (labels == WATER) | (labels == ROAD)
    behind = np.zeros(labels.shape, bool)
    ahead = np.zeros(labels.shape, bool)
    for step in (2, 3):
        behind |= shifted(labels == BUILDING, int(round(step * shadow_dir[0])), int(round(step * shadow_dir[1])))
        ahead |= shifted(labels == BUILDING, -int(round(step * shadow_dir[0])), -int(round(step * shadow_dir[1])))
    shaded, lit = behind & ~blocked & ~ahead, ahead & ~blocked & ~behind
    if shaded.sum() < 20 or lit.sum() < 20:
        return _DEFAULT_SHADOW_RATIO
    ratio = np.median(a[:, shaded], axis=1) / np.maximum(np.median(a[:, lit], axis=1), 1)
    return np.clip(ratio, 0.3, 0.85).astype(np.float32)


def _seasonal_vegetation(rng, a, labels) -> np.ndarray:
    """B's vegetation greener or browner than A's (not change), varying smoothly across the scene."""
    strength = rng.uniform(0.3, 1.0)
    if rng.random() < 0.5:   # greener: more chlorophyll, higher NIR plateau
        factor = np.array([1 - 0.16 * strength, 1 + 0.12 * strength, 1 - 0.1 * strength, 1 + 0.15 * strength])
    else:                    # browner: senescent or dry, NIR drops
        factor = np.array([1 + 0.28 * strength, 1 + 0.06 * strength, 1 + 0.04 * strength, 1 - 0.22 * strength])
    variation = 1 + 0.35 * _smooth_noise(rng, labels.shape, 30)
    cover = ndimage.gaussian_filter((labels == VEGETATION).astype(np.float32), 1.0)
    change = (factor.astype(np.float32)[:, None, None] - 1) * variation * cover
    return a * (1 + change)


def _demolish(rng, a, b, labels, buildings, count, shadow_dir, shadow_ratio) -> np.ndarray:
    """Replace some of A's buildings by bare soil or rubble in B and lift their shadows; returns the footprints."""
    mask = np.zeros(labels.shape, bool)
    if count == 0:
        return mask
    removed = np.flatnonzero(rng.random(count) < rng.uniform(0.15, 0.45)) + 1
    soil = labels == SOIL
    ground = np.median(a[:, soil], axis=1) if soil.sum() > 50 else None
    others = (labels == BUILDING) | (labels == WATER) | (labels == ROAD)
    windows = ndimage.find_objects(buildings)
    for label in removed:
        window = windows[label - 1]
        footprint, ys, xs = _padded_footprint(buildings, label, window, 14)
        old = a[:3, ys, xs][:, footprint].mean(1)
        surface = _bare_surface(rng, footprint.shape, ground, old)
        patch = b[:, ys, xs]
        patch[:, footprint] = surface[:, footprint]
        # Its shadow is gone: lift the dark pixels just behind the footprint back to lit ground.
        reach = np.zeros_like(footprint)
        for step in range(1, 13):
            reach |= shifted(footprint, int(round(step * shadow_dir[0])), int(round(step * shadow_dir[1])))
        reach &= ~footprint & ~others[ys, xs]
        if reach.any():
            luminance = a[:3, ys, xs].mean(0)
            lit = ~footprint & ~reach & ~others[ys, xs]
            reference = np.median(luminance[lit]) if lit.sum() >= 10 else np.median(luminance[reach])
            shadow = reach & (luminance < 0.8 * reference)
            patch[:, shadow] = patch[:, shadow] / shadow_ratio[:, None]
        b[:, ys, xs] = patch
        mask[ys, xs] |= footprint
    return mask


def _bare_surface(rng, shape, ground, old) -> np.ndarray:
    """Bare soil (the scene's own soil colour when it has some) or rubble, mottled, unlike the old roof."""
    rubble = rng.random() < 0.5
    if rubble:
        colours = _DEBRIS[rng.permutation(len(_DEBRIS))]
        base = colours[0] * rng.normal(1, 0.05)
    else:
        base = (ground if ground is not None else _BARE_SOIL[rng.integers(0, len(_BARE_SOIL))]) * rng.normal(1, 0.05)
    if np.linalg.norm(base[:3] - old) < _MIN_CONTRAST:   # a brown roof on brown soil: make the site tell
        base = base * (0.72 if base[:3].mean() > old.mean() else 1.3)
    surface = base[:, None, None] * (1 + 0.08 * _smooth_noise(rng, shape, 4) + 0.05 * _white(rng, shape))
    if rubble:   # debris heaps: patches of other materials
        heaps = _smooth_noise(rng, shape, 1.5) > 0.6
        surface = np.where(heaps, colours[1][:, None, None] * (1 + 0.1 * _white(rng, shape)), surface)
    return surface.astype(np.float32)


def _construct(rng, b, labels, luminance, shadow_dir, shadow_ratio) -> np.ndarray:
    """New buildings on soil and open vegetation (not woods), often in rows like a new development,
    rendered into B with their cast shadows; returns their footprints."""
    height, width = labels.shape
    vegetation = labels == VEGETATION
    open_vegetation = vegetation & (ndimage.uniform_filter(luminance, 5) >
                                    0.85 * (np.median(luminance[vegetation]) if vegetation.any() else 0))
    allowed = (labels == SOIL) | open_vegetation
    allowed &= ~ndimage.binary_dilation((labels == BUILDING) | (labels == WATER) | (labels == ROAD), iterations=3)
    mask = np.zeros(labels.shape, bool)
    taken = np.zeros(labels.shape, bool)       # new footprints plus their clearance
    roofs = np.zeros(labels.shape, np.float32)
    wanted = rng.uniform(0.02, 0.08) * height * width
    candidates = np.argwhere(allowed)
    if not len(candidates):
        return mask
    previous = None
    for _ in range(int(80 + wanted / 10)):
        if mask.sum() >= wanted:
            break
        length, depth = rng.uniform(9, 28), rng.uniform(8, 18)
        depth = min(depth, length)
        if previous is not None and rng.random() < 0.7:      # next house of the row
            cy, cx, angle, prev_length = previous
            along = (prev_length + length) / 2 + rng.uniform(3, 7)
            side = rng.choice([-1, 1])
            cy, cx = cy + side * along * np.sin(angle), cx + side * along * np.cos(angle)
            angle = angle + rng.normal(0, 0.03)
        else:
            cy, cx = candidates[rng.integers(0, len(candidates))] + rng.uniform(-0.5, 0.5, 2)
            angle = rng.uniform(0, np.pi)
        coverage, window = _rectangle(cy, cx, length, depth, angle, labels.shape)
        footprint = coverage >= 0.5
        clearance, clear_window = _rectangle(cy, cx, length + 5, depth + 5, angle, labels.shape)
        if footprint.sum() < 0.4 * length * depth or not allowed[clear_window][clearance > 0].all() or \
                taken[clear_window][clearance > 0].any():
            previous = None
            continue
        previous = (cy, cx, angle, length)
        taken[clear_window] |= clearance > 0
        mask[window] |= footprint
        roof = _render_roof(rng, coverage.shape, length, depth, angle, cy - window[0].start, cx - window[1].start,
                            shadow_dir, b[:3][(slice(None), *window)][:, footprint].mean(1))
        patch = b[(slice(None), *window)]
        b[(slice(None), *window)] = patch * (1 - coverage) + roof * coverage
        roofs[window] = np.maximum(roofs[window], coverage * rng.uniform(3.5, 5.5) * (1 + depth / 30))
    if mask.any():
        shade = _cast_shadow(roofs, shadow_dir) * (1 - np.minimum(roofs, 1)) * (labels != BUILDING)
        b *= 1 - shade * (1 - shadow_ratio[:, None, None])
    return mask


def _render_roof(rng, shape, length, depth, angle, cy, cx, shadow_dir, ground) -> np.ndarray:
    """A gabled (two sloped halves and a ridge) or flat (rim, rooftop units) roof, slightly textured."""
    colour = None
    for _ in range(6):   # a roof that stands out from the ground it is built on
        colour = _NEW_ROOF_COLOURS[rng.integers(0, len(_NEW_ROOF_COLOURS))] * rng.normal(1, 0.05)
        if np.linalg.norm(colour[:3] - ground) >= _MIN_CONTRAST:
            break
    u, v = _roof_coordinates(shape, cy, cx, angle)
    if rng.random() < 0.55:
        across = np.array([np.cos(angle), -np.sin(angle)])          # +v as (dy, dx)
        toward_sun = -(across @ shadow_dir)
        shade = 1 + 0.22 * np.sign(v) * toward_sun + 0.08 * (np.abs(v) < 0.8)
    else:
        rim = np.minimum(length / 2 - np.abs(u), depth / 2 - np.abs(v)) < 1.2
        shade = 1 - 0.12 * rim
        for _ in range(rng.integers(0, 3)):
            unit_u, unit_v = rng.uniform(-0.3, 0.3, 2) * (length, depth)
            shade = shade + 0.18 * ((np.abs(u - unit_u) < 1.5) & (np.abs(v - unit_v) < 1.5))
    shade = shade + 0.04 * _smooth_noise(rng, shape, 1.0) + 0.03 * _white(rng, shape)
    return (colour[:, None, None] * shade).astype(np.float32)


def _acquisition(rng, b) -> np.ndarray:
    """Time B's exposure, white balance, haze, tone curve and sensor noise -> uint8 1..255."""
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 4)
    haze = rng.uniform(0, 0.1)
    b = b * (gain * (1 - haze)).astype(np.float32)[:, None, None] + (haze * _HAZE)[:, None, None]
    b = 255 * np.clip(b / 255, 0, 1) ** np.float32(rng.uniform(0.94, 1.06))
    b = b + np.float32(rng.uniform(1.5, 3)) * rng.standard_normal(b.shape, dtype=np.float32)
    return np.clip(np.round(b), 1, 255).astype(np.uint8)


# --- small geometry and noise helpers -------------------------------------------------------------

def _padded_footprint(components, label, window, pad):
    """A component's mask in its bounding box grown by `pad` px (clipped), and the box's slices."""
    height, width = components.shape
    ys = slice(max(0, window[0].start - pad), min(height, window[0].stop + pad))
    xs = slice(max(0, window[1].start - pad), min(width, window[1].stop + pad))
    return components[ys, xs] == label, ys, xs


def _roof_coordinates(shape, cy, cx, angle):
    yy, xx = np.indices(shape, dtype=np.float32)
    dy, dx = yy - cy, xx - cx
    return dx * np.cos(angle) + dy * np.sin(angle), dy * np.cos(angle) - dx * np.sin(angle)


def _rectangle(cy, cx, length, depth, angle, shape):
    """Anti-aliased coverage (0..1) of a rotated rectangle in its bounding window, clipped to the image
    (buildings may be cut by the image border, as in tiles of a larger scene)."""
    reach = int(np.ceil(np.hypot(length, depth) / 2)) + 2
    top, left = max(0, int(np.floor(cy)) - reach), max(0, int(np.floor(cx)) - reach)
    bottom, right = min(shape[0], int(np.floor(cy)) + reach + 1), min(shape[1], int(np.floor(cx)) + reach + 1)
    if bottom <= top or right <= left:
        return np.zeros((0, 0), np.float32), np.s_[0:0, 0:0]
    u, v = _roof_coordinates((bottom - top, right - left), cy - top, cx - left, angle)
    inside = np.minimum(length / 2 - np.abs(u), depth / 2 - np.abs(v))
    return np.clip(inside + 0.5, 0, 1), np.s_[top:bottom, left:right]


def _cast_shadow(heights, direction) -> np.ndarray:
    """Soft shadow (0..1) of raised surfaces `heights` px tall (shadow length) falling along `direction`."""
    shadow = np.zeros(heights.shape, np.float32)
    for step in range(1, int(np.ceil(heights.max())) + 1):
        caster = shifted(heights, int(round(step * direction[0])), int(round(step * direction[1])))
        shadow = np.maximum(shadow, np.clip(caster - step + 1, 0, 1))
    return ndimage.gaussian_filter(shadow, 0.5)


def _smooth_noise(rng, shape, scale) -> np.ndarray:
    """Roughly unit-variance noise with blobs about `scale` px across."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale)
    return field / max(float(field.std()), 1e-6)


def _white(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# --- patches for training --------------------------------------------------------------------------

class ChangePatchDataset(torch.utils.data.Dataset):
    """(a float32 (C, p, p) in [0, 1], b float32 (C, p, p), mask int64 (p, p) in {0, 1, 255}) patches.

    8-bit images are divided by 255, other types stretched by core.data.images.unit_range per file.
    train=True: random windows with the same random rotation/flip for a, b and mask.
    train=False: fixed tiles covering every image once (samples_per_image is ignored); where the last
    tile of a row or column is shifted back inside the image, the pixels a previous tile already
    covered are 255 so each pixel counts once. Images smaller than the patch are zero-padded (mask 255).
    Pixels that are nodata in A, B or the label are 255 in the mask and 0 in the images.
    """

    def __init__(self, triplets, patch_size: int, samples_per_image: int = 4, train: bool = True):
        self.triplets = [tuple(Path(p) for p in t) for t in triplets]
        if not self.triplets:
            raise RasterError("No (A, B, label) triplets to read patches from.")
        self.patch, self.train = int(patch_size), train
        self.samples_per_image = max(1, int(samples_per_image))
        self.bands: int | None = None
        self.band_names: list[str] = []
        self.sizes, self.ranges, self.zero_one = [], [], []
        for a, b, label in self.triplets:
            with open_raster(a) as sa, open_raster(b) as sb, open_raster(label) as sl:
                if sa.count != sb.count:
                    raise RasterError(f"Image '{a}' has {sa.count} band(s) but '{b}' has {sb.count}: times A and B "
                                      "must have the same bands.")
                if self.bands is None:
                    self.bands = sa.count
                    self.band_names = [d or f"band {i + 1}" for i, d in enumerate(sa.descriptions)]
                elif sa.count != self.bands:
                    raise RasterError(f"Image '{a}' has {sa.count} band(s); the first image of the set has "
                                      f"{self.bands}.")
                sizes = {(s.width, s.height) for s in (sa, sb, sl)}
                if len(sizes) > 1:
                    raise RasterError(f"'{a.name}' is {sa.width}x{sa.height} px in A/, {sb.width}x{sb.height} in B/ "
                                      f"and {sl.width}x{sl.height} in label/: they must match.")
                bands = list(range(1, sa.count + 1))
                self.ranges.append((unit_range(sa, bands), unit_range(sb, bands)))
                self.zero_one.append(mask_is_zero_one(sl))
                self.sizes.append((sa.height, sa.width))
        self.tiles = [] if train else [
            (i, row, col) for i, (h, w) in enumerate(self.sizes)
            for row in _tile_starts(h, self.patch) for col in _tile_starts(w, self.patch)]

    def __len__(self) -> int:
        return len(self.triplets) * self.samples_per_image if self.train else len(self.tiles)

    def __getitem__(self, index: int):
        if self.train:
            i = index % len(self.triplets)
            height, width = self.sizes[i]
            h, w = min(self.patch, height), min(self.patch, width)
            (top, skip_rows), (left, skip_cols) = (_randint(height - h + 1), 0), (_randint(width - w + 1), 0)
        else:
            i, (top, skip_rows), (left, skip_cols) = self.tiles[index]
            height, width = self.sizes[i]
            h, w = min(self.patch, height), min(self.patch, width)
        window = Window(left, top, w, h)
        a_path, b_path, label_path = self.triplets[i]
        with open_raster(a_path) as sa, open_raster(b_path) as sb, open_raster(label_path) as sl:
            bands = list(range(1, sa.count + 1))
            a_raw, a_valid = read_window(sa, window, bands)
            b_raw, b_valid = read_window(sb, window, bands)
            values, l_valid = read_window(sl, window, [1])
        valid = a_valid & b_valid
        a = np.where(valid, to_unit(a_raw, *self.ranges[i][0]), 0).astype(np.float32)
        b = np.where(valid, to_unit(b_raw, *self.ranges[i][1]), 0).astype(np.float32)
        mask = to_change(values[0], l_valid & valid, self.zero_one[i])
        mask[:skip_rows] = MASK_IGNORE
        mask[:, :skip_cols] = MASK_IGNORE
        a, b, mask = _pad(a, self.patch), _pad(b, self.patch), _pad(mask, self.patch, MASK_IGNORE)
        if self.train:
            k = _randint(4)
            a, b, mask = np.rot90(a, k, (1, 2)), np.rot90(b, k, (1, 2)), np.rot90(mask, k)
            if _randint(2):
                a, b, mask = a[:, :, ::-1], b[:, :, ::-1], mask[:, ::-1]
        return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in (a, b, mask))

    def unit_ranges(self) -> tuple[float, float]:
        """(lowest low, highest high) of every image's [0, 1] stretch: the card's normalisation."""
        lows = [r[0] for pair in self.ranges for r in pair]
        highs = [r[1] for pair in self.ranges for r in pair]
        return float(min(lows)), float(max(highs))


def _tile_starts(length: int, patch: int) -> list[tuple[int, int]]:
    """(start, pixels at the start that the previous tile already covered) of tiles covering `length`."""
    if length <= patch:
        return [(0, 0)]
    starts = [(s, 0) for s in range(0, length - patch + 1, patch)]
    last = starts[-1][0] + patch
    if last < length:
        starts.append((length - patch, last - (length - patch)))
    return starts


def _pad(array: np.ndarray, patch: int, value=0) -> np.ndarray:
    ph, pw = patch - array.shape[-2], patch - array.shape[-1]
    if not (ph or pw):
        return array
    return np.pad(array, [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)], constant_values=value)


def _randint(high: int) -> int:
    """torch's generator, which DataLoader seeds differently in every worker."""
    return int(torch.randint(high, ()))
