"""Unlabelled image folders (any raster GDAL reads: GeoTIFF, PNG, JPEG) as [0, 1] patches.

Used by the fusion prior's trainer and the fusion pipeline: 8-bit images are divided by 255,
other types are stretched between the 0.1th and 99.9th percentiles of a decimated read, so a
16-bit or float layer lands in [0, 1] without one hot pixel setting the scale. Patches are read
as windows, so memory does not depend on the image size.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from core.raster import RasterError, open_raster

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".webp")
IR_FOLDER, VISIBLE_FOLDER = "ir", "vi"  # fusion pairs: the RoadScene / CDDFuse layout, same file names in both
_DECIMATED_SIDE = 512
log = logging.getLogger(__name__)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image below `folder` (recursively), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise RasterError(f"Image folder '{folder}' does not exist.")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise RasterError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in '{folder}'.")
    return images


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by name stem (an error when two share a stem)."""
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in images:
            raise ValueError(f"Folder '{folder}' has two images named '{path.stem}': "
                             f"'{images[path.stem].name}' and '{path.name}'.")
        images[path.stem] = path
    return images


def list_fusion_pairs(pairs_dir) -> list[tuple[Path, Path]]:
    """(infrared, visible) image paths of PAIRS/ir and PAIRS/vi matched by name stem, sorted by name.

    Raises FileNotFoundError naming the folder when ir/ or vi/ is missing, ValueError when no names match.
    """
    folder = Path(pairs_dir)
    for sub in (IR_FOLDER, VISIBLE_FOLDER):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"'{folder}' has no '{sub}' folder: expected ir/ and vi/ with the same file names.")
    ir, vi = images_by_stem(folder / IR_FOLDER), images_by_stem(folder / VISIBLE_FOLDER)
    names = sorted(ir.keys() & vi.keys())
    if not names:
        raise ValueError(f"No image names in '{folder / IR_FOLDER}' ({len(ir)} images) match those in "
                         f"'{folder / VISIBLE_FOLDER}' ({len(vi)} images).")
    unmatched = len(ir) + len(vi) - 2 * len(names)
    if unmatched:
        log.warning("%d image(s) in '%s' have no counterpart in the other folder; skipped.", unmatched, folder)
    return [(ir[name], vi[name]) for name in names]


def unit_range(src, bands: list[int]) -> tuple[float, float]:
    """(low, high) raw values that map to 0 and 1 for this dataset (see the module docstring)."""
    if src.dtypes[0] == "uint8":
        return 0.0, 255.0
    scale = max(1, max(src.width, src.height) // _DECIMATED_SIDE)
    shape = (len(bands), max(1, src.height // scale), max(1, src.width // scale))
    data = src.read(bands, out_shape=shape, resampling=Resampling.nearest, masked=True).astype(np.float64)
    values = data.compressed() if np.ma.isMaskedArray(data) else data.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise RasterError(f"'{src.name}' holds no valid pixel.")
    low, high = np.percentile(values, [0.1, 99.9])
    return float(low), float(high if high > low else low + 1)


def to_unit(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((raw.astype(np.float32) - low) / (high - low), 0, 1)


class ImagePatchDataset(torch.utils.data.Dataset):
    """Random square patches (channels, size, size) in [0, 1], flipped at random; gray images are
    repeated to `channels` bands and RGB images keep their first `channels` bands."""

    def __init__(self, paths: list[Path], size: int, channels: int = 3, samples_per_image: int = 8):
        self.paths, self.size, self.channels, self.samples = paths, size, channels, samples_per_image
        self.ranges = []
        for path in paths:
            with open_raster(path) as src:
                if src.width < size or src.height < size:
                    raise RasterError(f"Image '{path}' ({src.width} x {src.height} px) is smaller than the "
                                      f"{size} px patches.")
                self.ranges.append(unit_range(src, list(range(1, min(src.count, channels) + 1))))

    def __len__(self) -> int:
        return len(self.paths) * self.samples

    def __getitem__(self, index: int) -> torch.Tensor:
        i = index // self.samples
        with open_raster(self.paths[i]) as src:
            bands = list(range(1, min(src.count, self.channels) + 1))
            top = int(torch.randint(0, src.height - self.size + 1, ()))
            left = int(torch.randint(0, src.width - self.size + 1, ()))
            patch = to_unit(src.read(bands, window=Window(left, top, self.size, self.size)), *self.ranges[i])
        patch = torch.from_numpy(np.repeat(patch, self.channels, axis=0) if len(bands) == 1 else patch)
        if torch.rand(()) < 0.5:
            patch = patch.flip(-1)
        return patch
