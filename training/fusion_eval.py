"""`python -m training evaluate-fusion`: score fused infrared/visible images with the fusion metrics.

Layout (CDDFuse / RoadScene test sets): PAIRS/ir/NAME.ext and PAIRS/vi/NAME.ext pair up by file name
stem; the fused image of a pair is FUSED/NAME.ext. Any raster GDAL reads works (.png, .jpg, .tif, .bmp).
Every image becomes grey 0..255 before scoring: 8-bit values as they are; other integer types scaled
linearly from their dtype's full range (uint16: v * 255 / 65535); floating-point rasters are taken as
grey values already. Colour images (3 or 4 bands) are converted with `to_gray` (OpenCV's rounding).
"""
from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import numpy as np
from rasterio.errors import NotGeoreferencedWarning

from core.data.images import images_by_stem, list_fusion_pairs
from core.metrics.fusion import METRICS, fusion_metrics, to_gray
from core.raster import atomic_path, raster_info, read_array

log = logging.getLogger(__name__)

MEAN_ROW = "mean"


def add_arguments(parser) -> None:
    parser.add_argument("--pairs", required=True,
                        help="folder with ir/ and vi/ holding the source images under the same names")
    parser.add_argument("--fused", required=True, help="folder of fused images named like the pairs (any extension)")
    parser.add_argument("--output", required=True, help="CSV to write: one row per image and a final 'mean' row")
    parser.add_argument("--data-range", type=float, default=255.0,
                        help="grey-value range SSIM assumes (default 255; CDDFuse's float default was 2)")


def main(args) -> None:
    means = evaluate_fusion(args.pairs, args.fused, args.output, data_range=args.data_range)
    print(format_table(means))


def read_gray(path) -> np.ndarray:
    """A raster as (H, W) float64 grey values 0..255 (see the module docstring for the scaling)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        data, _ = read_array(path)
        dtype = np.dtype(raster_info(path).dtype)
    data = data.astype(np.float64)
    if np.issubdtype(dtype, np.integer) and dtype != np.uint8:
        info = np.iinfo(dtype)
        data = (data - info.min) * 255.0 / (info.max - info.min)
    return to_gray(data)


def _same_size(image: np.ndarray, reference: np.ndarray, path: Path, reference_path: Path) -> None:
    if image.shape != reference.shape:
        raise ValueError(f"'{path}' is {image.shape[1]} x {image.shape[0]} px but '{reference_path}' is "
                         f"{reference.shape[1]} x {reference.shape[0]} px; they must match.")


def evaluate_fusion(pairs_dir, fused_dir, output_csv, data_range: float = 255.0) -> dict[str, float]:
    """Score FUSED/NAME against PAIRS/ir/NAME and PAIRS/vi/NAME for every pair; write the CSV; return the means."""
    pairs = list_fusion_pairs(pairs_dir)
    if not Path(fused_dir).is_dir():
        raise FileNotFoundError(f"Fused image folder '{fused_dir}' does not exist.")
    fused = images_by_stem(Path(fused_dir))
    missing = [ir.stem for ir, _ in pairs if ir.stem not in fused]
    if missing:
        raise FileNotFoundError(f"No fused image in '{fused_dir}' for {len(missing)} of {len(pairs)} pairs "
                                f"(e.g. {', '.join(missing[:5])}).")
    rows: list[dict[str, float]] = []
    for i, (ir_path, vi_path) in enumerate(pairs, 1):
        fused_path = fused[ir_path.stem]
        ir, vi, image = read_gray(ir_path), read_gray(vi_path), read_gray(fused_path)
        _same_size(vi, ir, vi_path, ir_path)
        _same_size(image, ir, fused_path, ir_path)
        rows.append(fusion_metrics(ir, vi, image, data_range=data_range))
        log.info("%d/%d %s", i, len(pairs), ir_path.stem)
    means = {name: float(np.mean([row[name] for row in rows])) for name in METRICS}
    with atomic_path(output_csv) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *METRICS])
        for (ir_path, _), row in zip(pairs, rows):
            writer.writerow([ir_path.stem, *(repr(row[name]) for name in METRICS)])
        writer.writerow([MEAN_ROW, *(repr(means[name]) for name in METRICS)])
    return means


def format_table(means: dict[str, float]) -> str:
    """The mean metrics as a two-column text table."""
    return "\n".join(["metric    mean", *(f"{name:<8}  {value:.4f}" for name, value in means.items())])
