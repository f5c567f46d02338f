"""SAR oil-spill data: the class tables, procedural Sentinel-1-like scenes, and readers for the
public oil-spill datasets, all handing trainers the same (raw, valid, labels) triple.

Real oil-spill data is request-only, so demos and tests run on procedural VV scenes that carry
what makes the task hard: speckle, wind-driven clutter, look-alikes (low-wind areas, biogenic
films) that are dark but shaped differently from oil, bright ships and land.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from scipy import ndimage

from core.checkpoint import ClassInfo
from core.data.folder import (IGNORE_INDEX, IMAGE_SUFFIXES, check_labelled, list_pairs, read_class_indices,
                              read_class_table, write_class_table)
from core.data.procedural import PATH_STEP, fractal_field, noise_field, trace_paths, wander
from core.data.sar_scaling import SarScaling, SceneScaler
from core.raster import RasterError, hex_to_rgba, open_raster, read_array, read_window, write_geotiff

SAR_CLASSES = [ClassInfo(0, "sea", "#000000"), ClassInfo(1, "oil", "#00ffff"), ClassInfo(2, "look-alike", "#ff0000"),
               ClassInfo(3, "ship", "#994c00"), ClassInfo(4, "land", "#009900")]
BINARY_CLASSES = [ClassInfo(0, "sea", "#000000"), ClassInfo(1, "oil", "#00ffff")]
SAR_BANDS = ["VV"]
SAR_CRS = "EPSG:32634"  # UTM 34N: the Ionian Sea, where many OSD scenes lie
SEA, OIL, LOOK_ALIKE, SHIP, LAND = range(5)
LABEL_NODATA = 255
SAR_KINDS = ("linear", "db", "amplitude")
# 8-bit amplitude products: DN 1..255 spans this dB range linearly, 0 stays free for nodata.
AMPLITUDE_DB_RANGE = (-35.0, 5.0)
# Mean VV sea backscatter of a scene: C-band (CMOD5.N) sigma0 for 3-10 m/s wind, the window in which oil
# slicks show, at 20-45 degrees incidence spans about -25 dB (light wind, far range) to -8 dB (near range).
SEA_MEAN_DB = (-25.0, -8.0)
SEA_TREND_DB = 10.0             # at most this many dB between the darkest and brightest side of a scene's sea
SMOOTHED_SPECKLE_SHARE = 0.4    # scenes with multi-looked (smoothed) speckle
UPSAMPLED_SPECKLE_SHARE = 0.35  # scenes with few-look speckle upsampled from a coarser grid; the rest: independent
# 8-bit display products (JPEG / PNG quick-looks, as in sar_oilspill) often clip bright sea: up to 9% of a real
# crop's pixels sit at 255 there. A saturated crop clips this share of its brightest pixels (uniform in the range).
SATURATED_SHARE = (0.01, 0.15)


# --- procedural scenes ---------------------------------------------------------------------------

def make_sar_scene(height: int, width: int, seed: int, land: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """sigma0 float32 (H, W), linear VV backscatter, and labels uint8 (H, W) in 0..4.

    Land (in about half of the scenes when `land`) is drawn from its own random stream, so a
    scene without land is the same sea as with it.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Scene size must be positive, got {height}x{width}.")
    rng = np.random.default_rng(seed)
    shape = (height, width)
    area = max(height * width / 256 ** 2, 0.25)  # small scenes still get something to find

    sea_db = _sea_surface(rng, shape)
    look_alike_damping, look_alike = _look_alikes(rng, shape)
    oil_damping, oil, heads = _oil_slicks(rng, shape, area)
    ship_contrast, ship, sidelobes = _ships(rng, shape, area, heads)
    land_rng = np.random.default_rng([seed, LAND])
    has_land = land and land_rng.random() < 0.5
    land_mask, land_db = _land(land_rng, shape, float(sea_db.mean())) if has_land else (np.zeros(shape, bool), None)

    labels = np.full(shape, SEA, np.uint8)
    db = sea_db - np.maximum(oil_damping, look_alike_damping)
    db = np.where(ship, sea_db + ship_contrast, db)
    for value, mask in ((LOOK_ALIKE, look_alike), (OIL, oil), (SHIP, ship)):
        labels[mask] = value
    power = 10 ** (db / 10) + sidelobes
    if has_land:
        labels[land_mask] = LAND
        power = np.where(land_mask, 10 ** (land_db / 10), power)
    noise_floor = 10 ** (rng.uniform(-32, -27) / 10)  # thermal noise (NESZ) fills the darkest slicks
    return ((power + noise_floor) * _speckle(rng, shape)).astype(np.float32), labels


def _speckle(rng, shape):
    """Intensity speckle, unit mean, in one of three forms. Most products people detect oil on are resampled
    (GRD medium resolution, quick-look JPEGs such as the public oil-spill crops), so speckle is often spatially
    correlated: multi-looked (smooth sea) or upsampled from few looks (blotchy, high-contrast sea). Without
    those, smoothness or blotchiness alone would tell land from sea, and real sea would be called land."""
    form = rng.random()
    if form < UPSAMPLED_SPECKLE_SHARE:   # few looks at a coarser pixel, interpolated to this grid
        factor = rng.uniform(1.5, 3.0)
        looks = rng.uniform(1, 3)
        coarse = rng.gamma(looks, 1 / looks, (int(shape[0] / factor) + 2, int(shape[1] / factor) + 2))
        return ndimage.zoom(coarse, factor, order=1)[:shape[0], :shape[1]]
    looks = rng.uniform(3, 5)
    speckle = rng.gamma(looks, 1 / looks, shape)
    if form < UPSAMPLED_SPECKLE_SHARE + SMOOTHED_SPECKLE_SHARE:   # multi-looked: correlation length in px
        speckle = ndimage.gaussian_filter(speckle, rng.uniform(0.6, 2.5))
    return speckle


def _sea_surface(rng, shape):
    """Sea clutter in dB: a mean set by the wind speed, modulated by wind cells and wind streaks,
    with a trend of up to +-5 dB across the scene in any direction: incidence angle across range and wind
    fronts in coarse products (the real crops in ../shared/data/sar_oilspill brighten by several dB from one
    side to the other; with a gentle trend the model called their bright side land)."""
    height, width = shape
    yy, xx = np.indices(shape, dtype=np.float32)
    mean = rng.uniform(*SEA_MEAN_DB)
    cells = rng.uniform(0.8, 3.0) * fractal_field(rng, shape, rng.uniform(60, 150), 3)
    direction = rng.uniform(0, np.pi)
    across = xx * np.cos(direction) + yy * np.sin(direction)
    streaks = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * across / rng.uniform(15, 40)
                                             + 2 * noise_field(rng, shape, 30))
    heading = rng.uniform(0, 2 * np.pi)
    along = (xx * np.cos(heading) + yy * np.sin(heading)) / max(height, width)
    ramp = rng.uniform(0, SEA_TREND_DB) * (along - along.mean())
    return (mean + cells + streaks + ramp).astype(np.float32)


def _look_alikes(rng, shape):
    """Low-wind areas (large, blobby) and biogenic films (smaller patches): dark, but damping
    only 2-5 dB and fading out over several pixels, unlike the sharp edges of oil."""
    damping = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    for present, scale, strength, cover in ((0.5, rng.uniform(50, 110), rng.uniform(2.5, 5), rng.uniform(0.03, 0.15)),
                                            (0.4, rng.uniform(18, 35), rng.uniform(2, 4), rng.uniform(0.02, 0.08))):
        field = fractal_field(rng, shape, scale, 3)
        if rng.random() >= present:
            continue
        threshold = np.quantile(field, 1 - cover)
        softness = rng.uniform(0.15, 0.35)  # in field std units: several px of transition
        weight = np.clip((field - threshold) / softness + 0.5, 0, 1)
        damping = np.maximum(damping, strength * weight * weight * (3 - 2 * weight))
        mask |= weight >= 0.5  # labelled where half the damping is reached
    return damping, mask


def _oil_slicks(rng, shape, area):
    """Elongated, curving slicks that widen as they drift from where they were released, and thin
    long streaks behind ships; fractal edges, 6-10 dB damping. Returns the ship-head positions."""
    height, width = shape
    paths, heads = [], []
    for _ in range(rng.poisson(1.0 * area)):
        length = rng.uniform(40, 220)
        ys, xs, _ = wander(rng, shape, swing=rng.uniform(0.2, 0.8), wavelength=rng.uniform(40, 120),
                           start=(rng.uniform(0, height), rng.uniform(0, width)),
                           heading=rng.uniform(0, 2 * np.pi), length=length)
        along = np.linspace(0, 1, len(ys))
        head, tail = rng.uniform(1, 4), rng.uniform(6, 25)
        half = (head + (tail - head) * along ** rng.uniform(0.5, 1.0)) \
            * (1 + 0.3 * noise_field(rng, (1, len(ys)), 25 / PATH_STEP)[0])
        paths.append((ys, xs, np.maximum(half, 0.8), rng.uniform(6, 10)))
    for _ in range(rng.poisson(0.7 * area)):
        heading = rng.uniform(0, 2 * np.pi)
        ys, xs, _ = wander(rng, shape, swing=rng.uniform(0.03, 0.2), wavelength=rng.uniform(80, 200),
                           start=(rng.uniform(0, height), rng.uniform(0, width)), heading=heading,
                           length=rng.uniform(80, 300))
        half = rng.uniform(0.8, 2.0) * np.linspace(1, rng.uniform(1.5, 3), len(ys))  # spreads behind the ship
        paths.append((ys, xs, half, rng.uniform(6, 10)))
        if rng.random() < 0.7:
            heads.append((ys[0], xs[0], heading))
    damping = np.zeros(shape, np.float32)
    if paths:
        rough = fractal_field(rng, shape, 8, 3)
        thickness = 1 + 0.15 * fractal_field(rng, shape, 20, 2)
        for ys, xs, half, strength in paths:
            distance, near_half, _, _ = trace_paths(shape, [(ys, xs, half)])
            edge = near_half * (1 + 0.35 * rough)
            weight = np.clip((edge - distance) / 1.5 + 0.5, 0, 1)  # sharp, 1-2 px edge
            core = np.clip(1 - distance / np.maximum(edge, 1e-3), 0, 1)
            damping = np.maximum(damping, strength * weight * (0.75 + 0.25 * core) * thickness)
    return damping, damping >= 3.0, heads


def _ships(rng, shape, area, heads):
    """Small bright hulls (+15..25 dB over the sea), some at the head of an oil trail, with the
    cross-shaped sidelobes strong point targets leave along range and azimuth."""
    height, width = shape
    placements = [(y, x, heading) for y, x, heading in heads]
    placements += [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, 2 * np.pi))
                   for _ in range(rng.poisson(1.5 * area))]
    contrast = np.zeros(shape, np.float32)
    ship = np.zeros(shape, bool)
    sidelobes = np.zeros(shape, np.float32)
    for cy, cx, heading in placements:
        iy, ix = int(round(cy)), int(round(cx))
        if not (0 <= iy < height and 0 <= ix < width):
            continue
        length, beam, gain = rng.uniform(3, 9), rng.uniform(1, 2.5), rng.uniform(15, 25)
        reach = int(length / 2) + 2
        top, left = max(0, iy - reach), max(0, ix - reach)
        window = np.s_[top:min(height, iy + reach + 1), left:min(width, ix + reach + 1)]
        wy, wx = np.indices(ship[window].shape, dtype=np.float32)
        dy, dx = wy + top - cy, wx + left - cx
        hull = (np.abs(dx * np.cos(heading) + dy * np.sin(heading)) <= length / 2) \
            & (np.abs(dy * np.cos(heading) - dx * np.sin(heading)) <= beam / 2)
        hull[iy - top, ix - left] = True
        ship[window] |= hull
        contrast[window] = np.where(hull, gain, contrast[window])
        if gain > 20:
            peak = 10 ** ((-20 + gain - 13) / 10)  # first sidelobe ~13 dB below the peak
            offsets = np.arange(-12, 13)
            lobe = peak * np.exp(-np.abs(offsets) / 3)
            rows, cols = iy + offsets, ix + offsets
            keep_r, keep_c = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
            sidelobes[rows[keep_r], ix] += lobe[keep_r]
            sidelobes[iy, cols[keep_c]] += lobe[keep_c]
    sidelobes[ship] = 0
    return contrast, ship, sidelobes


def _land(rng, shape, sea_mean_db):
    """A coast along one edge with a fractal shoreline (and the odd island); land is brighter than
    the sea beside it (by 1-6 dB at least) and textured: fields, relief lit from the radar side,
    built-up bright spots."""
    height, width = shape
    yy, xx = np.indices(shape, dtype=np.float32)
    edge = rng.integers(0, 4)
    inland = [yy, height - 1 - yy, xx, width - 1 - xx][edge]
    extent = height if edge < 2 else width
    shoreline = inland + rng.uniform(0.08, 0.2) * extent * fractal_field(rng, shape, rng.uniform(40, 90), 4)
    land = shoreline < rng.uniform(0.12, 0.4) * extent
    relief = fractal_field(rng, shape, 40, 4)
    facing = np.clip(np.gradient(relief, axis=1) * 8, -4, 4)  # slopes towards the radar are brighter
    built = (fractal_field(rng, shape, 12, 2) > 1.8) * rng.uniform(6, 10)
    land_db = (max(rng.uniform(-11, -5), sea_mean_db + rng.uniform(1, 6)) + 2.5 * fractal_field(rng, shape, 30, 3) + 1.5 * noise_field(rng, shape, 1.5)
               + facing + built)
    return land, land_db.astype(np.float32)


# --- scene files ---------------------------------------------------------------------------------

def sar_scene_transform(height: int, width: int, seed: int, resolution: float = 10.0) -> tuple[float, ...]:
    """Affine placing the scene somewhere over the Ionian Sea in UTM 34N, from its own stream."""
    rng = np.random.default_rng([seed, 34])
    x0 = float(np.floor(rng.uniform(300_000, 700_000 - width * resolution)))
    y0 = float(np.floor(rng.uniform(4_000_000 + height * resolution, 4_400_000)))
    return (float(resolution), 0.0, x0, 0.0, -float(resolution), y0)


def sar_nodata_columns(width: int, seed: int) -> int:
    """Columns of no data at the left edge, as at a Sentinel-1 swath border (a third of the scenes)."""
    rng = np.random.default_rng([seed, 5])
    if width < 8 or rng.random() >= 1 / 3:
        return 0
    return int(rng.integers(2, max(3, width // 12)))


def write_sar_scene(image_path: str | os.PathLike, label_path: str | os.PathLike, height: int, width: int,
                    seed: int, kind: str = "linear", resolution: float = 10.0) -> None:
    """Write a procedural VV scene as linear sigma0 (float32), dB (float32) or 8-bit amplitude
    (dB stretch, 0 = nodata), and its label raster with the SAR_CLASSES palette."""
    if kind not in SAR_KINDS:
        raise ValueError(f"Unknown SAR scene kind '{kind}'; choose one of {', '.join(SAR_KINDS)}.")
    sigma0, labels = make_sar_scene(height, width, seed)
    db = 10 * np.log10(sigma0)
    if kind == "linear":
        image, nodata = sigma0, float("nan")
    elif kind == "db":
        image, nodata = db.astype(np.float32), float("nan")
    else:
        low, high = AMPLITUDE_DB_RANGE
        image, nodata = np.clip(np.round(1 + 254 * (db - low) / (high - low)), 1, 255).astype(np.uint8), 0
    strip = sar_nodata_columns(width, seed)
    image[:, :strip] = nodata
    labels[:, :strip] = LABEL_NODATA
    colormap = {c.value: hex_to_rgba(c.color) for c in SAR_CLASSES}
    colormap[LABEL_NODATA] = (0, 0, 0, 0)
    crs_wkt = rasterio.crs.CRS.from_string(SAR_CRS).to_wkt()
    transform = sar_scene_transform(height, width, seed, resolution)
    write_geotiff(image_path, image, crs_wkt=crs_wkt, transform=transform, nodata=nodata, band_names=SAR_BANDS)
    write_geotiff(label_path, labels, crs_wkt=crs_wkt, transform=transform, nodata=LABEL_NODATA,
                  colormap=colormap, band_names=["class"])


def write_sar_dataset(folder: str | os.PathLike, count: int, size: int, seed: int, kind: str = "linear") -> Path:
    """`count` square scenes in the folder dataset layout (images/, masks/, classes.json)."""
    folder = Path(folder)
    for index, scene_seed in enumerate(np.random.SeedSequence(seed).generate_state(count)):
        name = f"scene_{index:04d}.tif"
        write_sar_scene(folder / "images" / name, folder / "masks" / name, size, size, int(scene_seed), kind)
    folder.mkdir(parents=True, exist_ok=True)
    write_class_table(folder, [asdict(c) for c in SAR_CLASSES], SAR_BANDS)
    return folder


def write_land_mask(label_path: str | os.PathLike, output_gpkg: str | os.PathLike) -> Path:
    """Land polygons of a label raster as a GeoPackage (the LAND_MASK input of scene detection)."""
    from core.vector import polygonize
    return polygonize(label_path, output_gpkg, SAR_CLASSES, only_values=[LAND])


# --- dataset readers -----------------------------------------------------------------------------

@dataclass
class SarSample:
    image: Path
    mask: Path          # the image itself for side-by-side files
    soft: Path | None = None


@dataclass
class SarDataset:
    """Samples of one split with their class table; `layout` says how files are read.

    oil_is_white: for binary masks (SOS), which mask value marks oil.
    """
    samples: list[SarSample]
    classes: list[ClassInfo]
    layout: str
    oil_is_white: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """(raw float32 (H, W), valid bool (H, W), labels int64 class indices with -100 for
        ignore / nodata, dtype of the raw image)."""
        sample = self.samples[i]
        if self.layout == "side-by-side":
            with _opened(sample.image) as src:
                half = src.width // 2
                if src.width != 2 * src.height:
                    raise RasterError(f"'{sample.image}' should hold the SAR image and its mask side by side "
                                      f"(twice as wide as tall) but is {src.width}x{src.height}.")
                raw, valid = _grey(src, Window(0, 0, half, src.height))
                mask, _ = _grey(src, Window(half, 0, half, src.height))
                dtype = src.dtypes[0]
            labels = (mask < 128).astype(np.int64)  # black = oil
        else:
            with _opened(sample.image) as src:
                window = Window(0, 0, src.width, src.height)
                if self.layout == "folder":
                    raw, valid = read_window(src, window, [1])
                    raw = raw[0]
                else:
                    raw, valid = _grey(src, window)
                dtype = src.dtypes[0]
            if self.layout == "sos":
                with _opened(sample.mask) as msk:
                    mask, _ = _grey(msk, Window(0, 0, msk.width, msk.height))
                labels = ((mask >= 128) == self.oil_is_white).astype(np.int64)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    labels = read_class_indices(sample.mask, self.classes)
                labels[labels < 0] = IGNORE_INDEX
            if labels.shape != raw.shape:
                raise RasterError(f"Image '{sample.image}' is {raw.shape[1]}x{raw.shape[0]} but its mask "
                                  f"'{sample.mask}' is {labels.shape[1]}x{labels.shape[0]}.")
        labels[~valid] = IGNORE_INDEX
        return raw, valid, labels, dtype

    def read_soft(self, i: int) -> np.ndarray | None:
        """Per-class probabilities (C, H, W) float32 of a generated pair, or None."""
        path = self.samples[i].soft
        if path is None:
            return None
        soft, _ = read_array(path)
        if soft.shape[0] != len(self.classes):
            raise RasterError(f"Soft labels '{path}' have {soft.shape[0]} band(s) but the dataset has "
                              f"{len(self.classes)} classes.")
        return np.nan_to_num(soft, nan=0.0)


def open_sar_dataset(root: str | os.PathLike, split: str = "train", skip_unlabelled: bool = False) -> SarDataset:
    """Open a SAR oil-spill dataset, recognising our folder format, OSD, SOS and side-by-side files.

    The split folder (root/<split>) is tried first, then root itself, so both a dataset root and
    a split folder can be given. Images without a label are an error, or with `skip_unlabelled`
    (evaluation) left out with a warning naming them.
    """
    root = Path(root)
    if not root.is_dir():
        raise RasterError(f"SAR dataset folder '{root}' does not exist.")
    for base in [root / split, root] if (root / split).is_dir() else [root]:
        if (base / "classes.json").is_file():
            return _open_folder(base, skip_unlabelled)
        if (base / "images").is_dir() and (base / "labels_1D").is_dir():
            return _open_osd(base, skip_unlabelled)
        sets = [base] if _is_sos_set(base) else [d for d in sorted(base.iterdir()) if d.is_dir() and _is_sos_set(d)]
        if sets:
            return _open_sos(base, sets, skip_unlabelled)
        images = _image_files(base)
        if images and _is_side_by_side(images[0]):
            return SarDataset([SarSample(p, p) for p in images], list(BINARY_CLASSES), "side-by-side")
    raise RasterError(
        f"Cannot recognise the SAR dataset in '{root}' (split '{split}'). Expected one of: classes.json + images/ "
        "+ masks/ (folder format); images/ + labels_1D/ (OSD); <set>/<id>_sat.jpg + <id>_mask.png or <set>/sat/ + "
        "<set>/gt/ (SOS); or images with the SAR left and the mask right (side by side).")


def _open_folder(base: Path, skip_unlabelled: bool) -> SarDataset:
    classes, _ = read_class_table(base)
    soft_dir = base / "soft"
    soft = {p.stem: p for p in soft_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff")} \
        if soft_dir.is_dir() else {}
    pairs = list_pairs(base, skip_unlabelled)
    return SarDataset([SarSample(image, mask, soft.get(image.stem)) for image, mask in pairs],
                      classes, "folder")


def _open_osd(base: Path, skip_unlabelled: bool) -> SarDataset:
    labels = {p.stem: p for p in _image_files(base / "labels_1D")}
    images = _image_files(base / "images")
    unmatched = [p.name for p in images if p.stem not in labels]
    images = [p for p in images if p.stem in labels]
    check_labelled(f"OSD dataset '{base}'", "label in labels_1D/", unmatched, len(images), skip_unlabelled)
    if not images:
        raise RasterError(f"OSD dataset '{base}' has no images in images/.")
    return SarDataset([SarSample(p, labels[p.stem]) for p in images], list(SAR_CLASSES), "osd")


def _is_sos_set(folder: Path) -> bool:
    return any(folder.glob("*_sat.*")) or ((folder / "sat").is_dir() and (folder / "gt").is_dir())


def _open_sos(base: Path, sets: list[Path], skip_unlabelled: bool) -> SarDataset:
    samples, unmatched = [], []
    for folder in sets:
        if (folder / "sat").is_dir():
            images = _image_files(folder / "sat")
            masks = {_sos_id(p): p for p in _image_files(folder / "gt")}
        else:
            images = [p for p in _image_files(folder) if p.stem.endswith("_sat")]
            masks = {_sos_id(p): p for p in _image_files(folder) if p.stem.endswith("_mask")}
        unmatched += [str(p.relative_to(base)) for p in images if _sos_id(p) not in masks]
        samples += [SarSample(p, masks[_sos_id(p)]) for p in images if _sos_id(p) in masks]
    check_labelled(f"SOS dataset '{base}'", "mask", unmatched, len(samples), skip_unlabelled)
    if not samples:
        raise RasterError(f"SOS dataset '{base}' has no images.")
    return SarDataset(samples, list(BINARY_CLASSES), "sos", oil_is_white=_oil_is_white(samples))


def _sos_id(path: Path) -> str:
    for suffix in ("_sat", "_mask", "_gt"):
        if path.stem.endswith(suffix):
            return path.stem[:-len(suffix)]
    return path.stem


def _oil_is_white(samples: list[SarSample], max_masks: int = 256) -> bool:
    """Oil covers less of the sea than clean water: the minority mask value over (up to
    `max_masks` evenly spread) masks is oil."""
    white = total = 0
    for sample in samples[::max(1, len(samples) // max_masks)]:
        with _opened(sample.mask) as msk:
            mask, _ = _grey(msk, Window(0, 0, msk.width, msk.height))
        white += int((mask >= 128).sum())
        total += mask.size
    return white <= total - white


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_side_by_side(path: Path) -> bool:
    with _opened(path) as src:
        return src.width == 2 * src.height


def _opened(path: Path):
    """Open a raster; plain JPEG/PNG datasets carry no georeferencing and need not warn about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return open_raster(path)


def _grey(src, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """One grey channel: JPEG SAR images are often stored as (nearly) equal RGB channels."""
    data, valid = read_window(src, window, range(1, min(src.count, 3) + 1))
    return data.mean(0), valid


# --- torch datasets ------------------------------------------------------------------------------

def scaled_sample(dataset: SarDataset, i: int, scaling: SarScaling) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float32 (H, W) in [-1, 1] stretched over the whole image, labels int64 (H, W), soft
    float32 (C, H, W), zeros when the sample has none)."""
    raw, valid, labels, dtype = dataset.read(i)
    x = SceneScaler.fit(raw, valid, dtype, scaling)(raw, valid)
    soft = dataset.read_soft(i)
    if soft is None:
        soft = np.zeros((len(dataset.classes), *labels.shape), np.float32)
    return x, labels, soft


def _crop(x, labels, soft, size: int, top: int = 0, left: int = 0):
    """A size x size window; images smaller than that are padded (x 0, labels ignored, soft 0)."""
    x, labels, soft = (x[top:top + size, left:left + size], labels[top:top + size, left:left + size],
                       soft[:, top:top + size, left:left + size])
    ph, pw = size - labels.shape[0], size - labels.shape[1]
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw)))
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        soft = np.pad(soft, ((0, 0), (0, ph), (0, pw)))
    return x, labels, soft


def _tensors(x, labels, soft):
    return (torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32)))


def saturate(x: np.ndarray, share: float) -> np.ndarray:
    """A stretched image (in [-1, 1]) as it would be stretched had its brightest `share` of pixels been clipped
    to one value first, as an 8-bit product clips bright sea: they become a flat +1, the rest spreads over the
    range again (the lower stretch percentile is unchanged, the upper one is now the clip value)."""
    top = float(np.percentile(x, 100 * (1 - share)))
    if top <= -1.0:
        return x
    return ((np.minimum(x, top) + 1.0) * (2.0 / (top + 1.0)) - 1.0).astype(np.float32)


class SarCropDataset(torch.utils.data.Dataset):
    """Crops of real (or generated) SAR images: (x (1, crop, crop) in [-1, 1], labels, soft).

    Each image is stretched by its own percentiles before cropping, as a whole scene is in QGIS. In training,
    a `saturation` share of the images is shown as a saturated 8-bit product would be (`saturate`, a clipped
    share drawn from SATURATED_SHARE): a model that never saw clipped sea calls it land.
    """

    def __init__(self, dataset: SarDataset, scaling: SarScaling, crop: int, samples_per_image: int = 4,
                 train: bool = True, saturation: float = 0.0):
        self.dataset, self.scaling, self.crop, self.train = dataset, scaling, crop, train
        self.samples_per_image = samples_per_image if train else 1
        self.saturation = saturation if train else 0.0

    def __len__(self) -> int:
        return len(self.dataset) * self.samples_per_image

    def __getitem__(self, index: int):
        x, labels, soft = scaled_sample(self.dataset, index % len(self.dataset), self.scaling)
        if self.saturation and float(torch.rand(())) < self.saturation:
            low, high = SATURATED_SHARE
            x = saturate(x, low + (high - low) * float(torch.rand(())))
        top = left = 0
        if self.train:
            top = _randint(max(labels.shape[0] - self.crop, 0) + 1)
            left = _randint(max(labels.shape[1] - self.crop, 0) + 1)
        x, labels, soft = _crop(x, labels, soft, self.crop, top, left)
        if self.train:
            k = _randint(4)
            x, labels, soft = np.rot90(x, k), np.rot90(labels, k), np.rot90(soft, k, (1, 2))
            if _randint(2):
                x, labels, soft = x[:, ::-1], labels[:, ::-1], soft[:, :, ::-1]
        return _tensors(x, labels, soft)


class MosaicDataset(torch.utils.data.Dataset):
    """tiles x tiles mosaics of randomly chosen generated tiles (image, labels and soft labels
    together): the paper's 512 px training inputs from 256 px generated pairs.

    One epoch uses each tile about once: length defaults to len(dataset) // tiles**2.
    """

    def __init__(self, dataset: SarDataset, scaling: SarScaling, tiles: int = 2, length: int | None = None):
        self.dataset, self.scaling, self.tiles = dataset, scaling, tiles
        self.tile = min(dataset.read(0)[2].shape)
        self.length = length or max(1, len(dataset) // tiles ** 2)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.compose([_randint(len(self.dataset)) for _ in range(self.tiles ** 2)])

    def compose(self, picks: list[int]):
        """The mosaic of samples `picks`, row by row from the top-left."""
        size = self.tile * self.tiles
        x = np.zeros((size, size), np.float32)
        labels = np.full((size, size), IGNORE_INDEX, np.int64)
        soft = np.zeros((len(self.dataset.classes), size, size), np.float32)
        for k, i in enumerate(picks):
            row, col = divmod(k, self.tiles)
            window = np.s_[row * self.tile:(row + 1) * self.tile, col * self.tile:(col + 1) * self.tile]
            x[window], labels[window], soft[(slice(None), *window)] = _crop(
                *scaled_sample(self.dataset, i, self.scaling), self.tile)
        return _tensors(x, labels, soft)


def _randint(high: int) -> int:
    """torch's generator, which DataLoader seeds differently in every worker."""
    return int(torch.randint(high, ()))
