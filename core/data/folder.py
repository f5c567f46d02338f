"""The folder dataset format every trainer reads.

    dataset/images/<stem>.tif|.png    image (any band count, any dtype GDAL reads)
    dataset/masks/<stem>.tif|.png     class values, same size as the image
    dataset/classes.json              {"classes": [{"value", "name", "color"}], "bands": [...]}

Patches are cut with windowed reads, so images may be larger than memory allows.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from core.checkpoint import ClassInfo
from core.raster import RasterError, RasterInfo, open_raster, raster_info, read_array, read_window

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".bmp")
IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def check_labelled(dataset: str, label: str, unlabelled: list[str], labelled: int, skip_unlabelled: bool) -> None:
    """Images of `dataset` without a `label` (e.g. "mask in masks/"): an error for training, which needs them
    all; an evaluation (`skip_unlabelled`) leaves them out with a warning naming them, as long as one is left."""
    if not unlabelled:
        return
    names = ", ".join(unlabelled[:10]) + (f" and {len(unlabelled) - 10} more" if len(unlabelled) > 10 else "")
    if not skip_unlabelled:
        raise RasterError(f"{dataset}: no {label} for {names}.")
    if not labelled:
        raise RasterError(f"{dataset}: no image has a {label} ({names} have none): nothing to score.")
    log.warning("%s: skipping %d image(s) with no %s: %s.", dataset, len(unlabelled), label, names)


def list_pairs(root: str | os.PathLike, skip_unlabelled: bool = False) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by name stem; images without a mask: see check_labelled."""
    root = Path(root)
    images, masks = root / "images", root / "masks"
    if not root.is_dir():
        raise RasterError(f"Dataset folder '{root}' does not exist.")
    if not images.is_dir() or not masks.is_dir():
        raise RasterError(f"Dataset '{root}' needs the folders images/ and masks/.")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs, unmatched = [], []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        (pairs.append((image, by_stem[image.stem])) if image.stem in by_stem else unmatched.append(image.name))
    check_labelled(f"Dataset '{root}'", "mask in masks/", unmatched, len(pairs), skip_unlabelled)
    if not pairs:
        raise RasterError(f"Dataset '{root}' has no image/mask pairs.")
    return pairs


def read_class_table(root: str | os.PathLike) -> tuple[list[ClassInfo], list[str] | None]:
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise RasterError(f"Dataset '{root}' has no classes.json (list of value, name, colour).")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [ClassInfo(**c) for c in data["classes"]], data.get("bands")


def write_class_table(root: str | os.PathLike, classes: list[dict], bands) -> None:
    """classes.json: [{value, name, color}] and the band names, as every trainer reads it."""
    Path(root, "classes.json").write_text(json.dumps({"classes": classes, "bands": list(bands)}, indent=2),
                                          encoding="utf-8")


@dataclass
class FolderDataset:
    """A dataset folder as trainers see it: pairs, class table, band names, first image's info."""
    pairs: list[tuple[Path, Path]]
    classes: list[ClassInfo]
    bands: list[str]
    first: RasterInfo

    @classmethod
    def open(cls, root: str | os.PathLike) -> "FolderDataset":
        pairs = list_pairs(root)
        classes, bands = read_class_table(root)
        first = raster_info(pairs[0][0])
        return cls(pairs, classes, list(bands or (f"band {i + 1}" for i in range(first.count))), first)


def read_class_indices(path: str | os.PathLike, classes: list[ClassInfo]) -> np.ndarray:
    """Class raster -> class indices (the order of `classes`); nodata and unknown values -> -1."""
    data, valid = read_array(path, [1])
    lookup = np.full(65536, -1, np.int64)
    for i, c in enumerate(classes):
        lookup[c.value] = i
    values = np.clip(data[0], 0, 65535).astype(np.int64)
    return np.where(valid & (data[0] == values), lookup[values], -1)


def band_statistics(pairs: list[tuple[Path, Path]], max_images: int = 64) -> tuple[list[float], list[float]]:
    """Per-band mean and std of valid pixels, from up to `max_images` images."""
    total = sq = count = None
    for image, _ in pairs[:max_images]:
        with open_raster(image) as src:
            data, valid = read_window(src, Window(0, 0, src.width, src.height), range(1, src.count + 1))
        vals = data[:, valid].astype(np.float64)
        total = vals.sum(1) if total is None else total + vals.sum(1)
        sq = (vals ** 2).sum(1) if sq is None else sq + (vals ** 2).sum(1)
        count = vals.shape[1] if count is None else count + vals.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 1e-12))
    return mean.tolist(), std.tolist()


def band_ranges(pairs: list[tuple[Path, Path]], max_images: int = 64) -> tuple[list[float], list[float]]:
    """Per-band minimum and (maximum - minimum) of valid pixels: PatchDataset with these as
    mean/std yields images in [0, 1], what the diffusion models expect."""
    low = high = None
    for image, _ in pairs[:max_images]:
        with open_raster(image) as src:
            data, valid = read_window(src, Window(0, 0, src.width, src.height), range(1, src.count + 1))
        vals = data[:, valid]
        low = vals.min(1) if low is None else np.minimum(low, vals.min(1))
        high = vals.max(1) if high is None else np.maximum(high, vals.max(1))
    return low.tolist(), np.maximum(high - low, 1e-6).tolist()


class PatchDataset(torch.utils.data.Dataset):
    """Random (training) or fixed top-left (validation) patches of image/mask pairs.

    Mask values are mapped to class indices; values not in the class table and image
    nodata become IGNORE_INDEX so they never count in the loss or the metrics.
    """

    def __init__(self, pairs, classes: list[ClassInfo], mean, std, patch: int,
                 samples_per_image: int = 1, train: bool = True):
        self.pairs, self.patch, self.train = pairs, patch, train
        self.samples_per_image = samples_per_image if train else 1
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]
        self.lookup = np.full(65536, IGNORE_INDEX, dtype=np.int64)
        for i, c in enumerate(classes):
            self.lookup[c.value] = i

    def __len__(self) -> int:
        return len(self.pairs) * self.samples_per_image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index % len(self.pairs)]
        with open_raster(image_path) as src, open_raster(mask_path) as msk:
            if (src.width, src.height) != (msk.width, msk.height):
                raise RasterError(f"Image {image_path.name} is {src.width}x{src.height} but its mask is "
                                  f"{msk.width}x{msk.height}.")
            window = self._window(src.width, src.height)
            data, valid = read_window(src, window, range(1, src.count + 1))
            labels = msk.read(1, window=window)
        x = np.where(valid, (data - self.mean) / self.std, 0.0).astype(np.float32)
        y = self.lookup[labels.astype(np.int64)]
        y[~valid] = IGNORE_INDEX
        x, y = self._pad(x, y)
        if self.train:
            k = _randint(4)
            x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k)
            if _randint(2):
                x, y = x[:, :, ::-1], y[:, ::-1]
        return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    def _window(self, width: int, height: int) -> Window:
        w, h = min(self.patch, width), min(self.patch, height)
        if not self.train:
            return Window(0, 0, w, h)
        return Window(_randint(width - w + 1), _randint(height - h + 1), w, h)

    def _pad(self, x: np.ndarray, y: np.ndarray):
        ph, pw = self.patch - y.shape[0], self.patch - y.shape[1]
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
            y = np.pad(y, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        return x, y


def _randint(high: int) -> int:
    """torch's generator, which DataLoader seeds differently in every worker."""
    return int(torch.randint(high, ()))
