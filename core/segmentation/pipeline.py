"""segment_raster: a raster of any size -> class raster (+ probabilities, + polygons).

Tiles are read window by window, normalised as the model card says, run in batches, blended
as probabilities (not argmaxes) and written block by block by core.tiling.run_tiles.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from core.catalog import starter_model_dir
from core.checkpoint import ModelCard, load_card, load_into
from core.device import BatchRunner, describe_device, resolve_device
from core.progress import Progress, SubProgress
from core.raster import GeoTiffWriter, RasterError, check_bands, open_raster, raster_info, read_window
from core.segmentation.model import build_segmenter
from core.tiling import TileGrid, pad_tile, run_tiles
from core.vector import polygonize

TASK = "segmentation"
PROBABILITY_NODATA = -1.0


@dataclass
class SegmentParams:
    """Everything one run needs; plain values so panel, Processing and tests share it."""
    input_path: str
    output_path: str
    model_dir: str = ""                 # empty: the shipped starter model
    bands: list[int] | None = None      # 1-based; None: the first bands, in the card's order
    device: str = "auto"
    tile_size: int = 0                  # 0: the card's tile size
    overlap: int = 32
    batch_size: int = 4
    probabilities_path: str = ""        # optional float32 raster, one band per class
    polygons_path: str = ""             # optional GeoPackage
    layer_name: str = ""                # how the user knows the input, for messages

    def resolved_model_dir(self) -> str:
        return self.model_dir or str(starter_model_dir(TASK))


@dataclass
class SegmentResult:
    output_path: str
    probabilities_path: str
    polygons_path: str
    device: str
    seconds: float
    tiles: int
    classes: list[dict] = field(default_factory=list)


def segment_raster(params: SegmentParams, progress: Progress | None = None) -> SegmentResult:
    progress = progress or Progress()
    started = time.perf_counter()
    card = load_card(params.resolved_model_dir(), task=TASK)
    info = raster_info(params.input_path)
    name = params.layer_name or Path(params.input_path).name
    bands = check_bands(info, params.bands, card.bands, name)
    _check_outputs(params)
    if info.crs_wkt is None:
        progress.warning(f"Layer '{name}' has no coordinate reference system: outputs will have none "
                         "either, and polygon areas will be in pixel units.")

    model = load_into(build_segmenter(card.architecture), params.resolved_model_dir())
    device = resolve_device(params.device)
    runner = BatchRunner(model, device, progress)
    tile = params.tile_size or card.tile_size
    grid = TileGrid(info.height, info.width, tile, min(params.overlap, tile // 2))
    progress.info(f"Segmenting '{name}' ({info.width} x {info.height} px, {len(grid)} tiles of {tile} px) "
                  f"with '{card.name}' on {describe_device(device)}.")

    raster_progress = SubProgress(progress, 0.0, 0.9 if params.polygons_path else 1.0)
    _run_tiles(params, card, info, bands, grid, runner, raster_progress)
    if params.polygons_path:
        try:
            polygonize(params.output_path, params.polygons_path, card.classes,
                       progress=SubProgress(progress, 0.9, 1.0))
        except BaseException:
            _remove_outputs(params)  # a cancelled run leaves no half set of outputs
            raise
    seconds = time.perf_counter() - started
    progress.info(f"Done in {seconds:.1f} s on {runner.device.type}.")
    progress.set_fraction(1.0)
    return SegmentResult(params.output_path, params.probabilities_path, params.polygons_path,
                         describe_device(runner.device), seconds, len(grid), [asdict(c) for c in card.classes])


def _check_outputs(params: SegmentParams) -> None:
    inp = Path(params.input_path).resolve()
    for out in (params.output_path, params.probabilities_path, params.polygons_path):
        if out and Path(out).resolve() == inp:
            raise RasterError(f"Output '{out}' is the input raster; choose another file name.")


def _remove_outputs(params: SegmentParams) -> None:
    for out in (params.output_path, params.probabilities_path, params.polygons_path):
        if out:
            Path(out).unlink(missing_ok=True)


def class_raster_dtype(card: ModelCard) -> tuple[str, int]:
    """Smallest unsigned type holding every class value, and a nodata value outside them."""
    top = max((c.value for c in card.classes), default=0)
    return ("uint8", 255) if top < 255 else ("uint16", 65535)


def _run_tiles(params, card, info, bands, grid, runner, progress) -> None:
    mean = np.asarray(card.normalization.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization.std, dtype=np.float32)[:, None, None]
    dtype, nodata = class_raster_dtype(card)
    values = np.asarray([c.value for c in card.classes], dtype=dtype)
    common = dict(width=info.width, height=info.height, crs_wkt=info.crs_wkt, transform=info.transform)
    n_classes = len(card.classes)

    def forward(model, x):
        return torch.softmax(model(x), dim=1)

    def read_tile(tile):
        data, valid = read_window(src, Window(tile.col, tile.row, tile.width, tile.height), bands)
        return pad_tile(np.where(valid, (data - mean) / std, 0.0).astype(np.float32), grid.tile), valid

    def predict(tiles, inputs):
        return runner(torch.from_numpy(np.stack(inputs)), forward).numpy()

    def write_block(row, col, probs, valid):
        labels = values[np.argmax(probs, axis=0)]
        labels[~valid] = nodata
        classes_out.write(labels, row=row, col=col)
        if probs_out is not None:
            probs_out.write(np.where(valid, probs, PROBABILITY_NODATA), row=row, col=col)

    with contextlib.ExitStack() as stack, open_raster(params.input_path) as src:
        classes_out = stack.enter_context(GeoTiffWriter(
            params.output_path, count=1, dtype=dtype, nodata=nodata, colormap=card.colormap,
            band_names=["class"], **common))
        probs_out = None
        if params.probabilities_path:
            probs_out = stack.enter_context(GeoTiffWriter(
                params.probabilities_path, count=n_classes, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=[c.name for c in card.classes], **common))
        run_tiles(grid, n_classes, read_tile, predict, write_block, params.batch_size, progress)
