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

from core.catalog import resolve_model_dir
from core.checkpoint import load_card, load_for_inference
from core.device import BatchRunner, describe_device, resolve_device
from core.pipeline import (PROBABILITY_NODATA, InputLayer, Output, check_inputs, check_outputs, check_tiling,
                           class_raster_dtype, fit_layer, model_grid, model_tiling, staged_outputs)
from core.progress import Progress, SubProgress
from core.raster import GeoTiffWriter, open_on_grid, read_window
from core.segmentation.model import build_segmenter
from core.tiling import TileGrid, pad_tile, run_tiles
from core.vector import polygonize

TASK = "segmentation"


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
    resample_to_model: bool = False     # read the layer at the card's ground resolution; outputs on that grid

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


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
    name = params.layer_name or Path(params.input_path).name
    outputs = [Output(params.output_path, "class raster"), Output(params.probabilities_path, "probability raster"),
               Output(params.polygons_path, "polygons", polygons=True)]
    check_outputs(outputs, {params.input_path: name})
    check_tiling(params.tile_size, params.overlap)
    layer = InputLayer(params.input_path, name, bands=tuple(params.bands or (1,)))
    info, = check_inputs([layer], progress)
    model_dir = params.resolved_model_dir()
    card = load_card(model_dir, task=TASK)
    tile, overlap = model_tiling(params.tile_size, params.overlap, card, progress)
    at_model = model_grid(info, card) if params.resample_to_model else None
    bands = fit_layer(layer, info, params.bands, card, progress, resample_to_model=params.resample_to_model,
                      grid=at_model)
    info = at_model or info             # the grid the layer is read on and the outputs get
    if info.crs_wkt is None:
        progress.warning(f"Layer '{name}' has no coordinate reference system: outputs will have none "
                         "either, and polygon areas will be in pixel units.")

    device = resolve_device(params.device)
    model = load_for_inference(model_dir, lambda: build_segmenter(card.architecture), device)
    runner = BatchRunner(model, device, progress)
    grid = TileGrid(info.height, info.width, tile, overlap)
    progress.info(f"Segmenting '{name}' ({info.width} x {info.height} px, {len(grid)} tiles of {tile} px) "
                  f"with '{card.name}' on {describe_device(device)}.")

    with staged_outputs(outputs) as staged:
        _run_tiles(params, staged[params.output_path], staged[params.probabilities_path], card, info, bands, grid,
                   runner, SubProgress(progress, 0.0, 0.9 if params.polygons_path else 1.0))
        if params.polygons_path:
            polygonize(staged[params.output_path], staged[params.polygons_path], card.classes,
                       progress=SubProgress(progress, 0.9, 1.0))
    seconds = time.perf_counter() - started
    progress.info(f"Done in {seconds:.1f} s on {runner.device.type}.")
    progress.set_fraction(1.0)
    return SegmentResult(params.output_path, params.probabilities_path, params.polygons_path,
                         describe_device(runner.device), seconds, len(grid), [asdict(c) for c in card.classes])


def _run_tiles(params, output_path, probabilities_path, card, info, bands, grid, runner, progress) -> None:
    mean = np.asarray(card.normalization.offset, dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization.scale, dtype=np.float32)[:, None, None]
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

    with contextlib.ExitStack() as stack, open_on_grid(params.input_path, info) as src:
        classes_out = stack.enter_context(GeoTiffWriter(
            output_path, count=1, dtype=dtype, nodata=nodata, colormap=card.colormap,
            band_names=["class"], **common))
        probs_out = None
        if probabilities_path:
            probs_out = stack.enter_context(GeoTiffWriter(
                probabilities_path, count=n_classes, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=[c.name for c in card.classes], **common))
        run_tiles(grid, n_classes, read_tile, predict, write_block, params.batch_size, progress)
