"""detect_changes: two dates of any size -> change raster (+ change probability, + change polygons).

Image B is read on image A's grid (resampled bilinearly when the grids differ, with a message); with
resample_to_model, A's grid is its extent at the model's ground resolution (core.pipeline.model_grid).
Both are scaled as the card says (x = (raw - mean) / std, written by the trainer from its training
data's range), read tile by tile, run through FC-Siam-conc in batches and blended as softmax
probabilities by core.tiling.run_tiles. The change raster is uint8 on A's grid: 0 no change,
1 change, 255 where either date is nodata. Change pixels become polygons with their area.
Outputs are written under temporary names and a failed or cancelled run leaves none of them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from core.catalog import resolve_model_dir
from core.change.fcsiam import MULTIPLE, TASK, build_changedet
from core.checkpoint import ModelCard, ModelError, load_card, load_for_inference, load_into
from core.device import BatchRunner, describe_device, resolve_device
from core.pipeline import (PROBABILITY_NODATA, InputLayer, Output, check_inputs, check_outputs, check_tiling,
                           fit_layer, model_grid, model_tiling, staged_outputs)
from core.progress import Progress, SubProgress
from core.raster import (GeoTiffWriter, RasterInfo, co_registered, open_on_grid, open_raster, pixel_area_km2,
                         read_window, resampled_onto)
from core.tiling import TileGrid, pad_tile, run_tiles
from core.vector import polygon_totals, polygonize

CHANGE, NO_CHANGE = 1, 0
CHANGE_NODATA = 255


@dataclass
class ChangeParams:
    """Everything one run needs; plain values so panel, Processing, CLI and tests share it."""
    input_a_path: str                   # the earlier date: its grid is the output grid
    input_b_path: str                   # the later date (resampled onto A's grid when needed)
    output_path: str                    # change raster (uint8: 0 no change, 1 change, 255 nodata)
    model_dir: str = ""                 # empty: the shipped starter model
    polygons_path: str = ""             # optional GeoPackage of change polygons (area_m2, area_km2)
    probability_path: str = ""          # optional float32 raster: change probability
    bands_a: list[int] | None = None    # 1-based; None: the first bands, in the card's order
    bands_b: list[int] | None = None
    tile_size: int = 0                  # 0: the card's tile size
    overlap: int = 32
    batch_size: int = 4
    device: str = "auto"
    name_a: str = ""                    # how the user knows the layers, for messages
    name_b: str = ""
    resample_to_model: bool = False     # read date A at the card's ground resolution (B onto that grid); outputs too

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


@dataclass
class ChangeResult:
    output_path: str
    polygons_path: str
    probability_path: str
    changed_pixels: int
    changed_area_km2: float             # from the polygons when written, else pixels x pixel area (NaN unknown)
    polygons: int                       # number of change polygons (0 when none were asked for)
    tiles: int
    seconds: float
    device: str
    resampled: bool                     # image B was resampled onto A's grid


def load_changedet_card(model_dir: str) -> ModelCard:
    """The card of a change model (cheap: no weights), which must have the classes no change and change."""
    card = load_card(model_dir, task=TASK)
    if [c.value for c in card.classes] != [NO_CHANGE, CHANGE]:
        raise ModelError(f"Model '{card.name}' must have the classes 0 (no change) and 1 (change), not "
                         f"{[c.value for c in card.classes]}.")
    return card


def load_changedet(model_dir: str) -> tuple[torch.nn.Module, ModelCard]:
    card = load_changedet_card(model_dir)
    return load_into(build_changedet(card.architecture), model_dir), card


def detect_changes(params: ChangeParams, progress: Progress | None = None) -> ChangeResult:
    progress = progress or Progress()
    started = time.perf_counter()
    name_a = params.name_a or Path(params.input_a_path).name
    name_b = params.name_b or Path(params.input_b_path).name
    outputs = [Output(params.output_path, "change raster"), Output(params.polygons_path, "change polygons", True),
               Output(params.probability_path, "change probability raster")]
    check_outputs(outputs, {params.input_a_path: name_a, params.input_b_path: name_b})
    check_tiling(params.tile_size, params.overlap)
    layer_a = InputLayer(params.input_a_path, name_a, "date A", tuple(params.bands_a or (1,)))
    layer_b = InputLayer(params.input_b_path, name_b, "date B", tuple(params.bands_b or (1,)))
    a_info, b_info = check_inputs([layer_a, layer_b], progress)
    model_dir = params.resolved_model_dir()
    card = load_changedet_card(model_dir)
    tile, overlap = model_tiling(params.tile_size, params.overlap, card, progress)
    if tile % MULTIPLE:
        raise ValueError(f"Tile size must be a multiple of {MULTIPLE} pixels, not {tile}.")
    a_at_model = model_grid(a_info, card) if params.resample_to_model else None
    bands_a = fit_layer(layer_a, a_info, params.bands_a, card, progress, resample_to_model=params.resample_to_model,
                        grid=a_at_model)
    # B is read on A's grid: at the model's resolution when A is; when A could not be resampled, A's warning says
    # why and B's speaks of its own resolution only
    b_resample = None if params.resample_to_model and a_at_model is None else params.resample_to_model
    bands_b = fit_layer(layer_b, b_info, params.bands_b, card, progress, resample_to_model=b_resample,
                        grid=a_at_model)
    b_on_a_file_grid = co_registered(a_info, b_info, name_a, name_b)
    a_info = a_at_model or a_info       # the grid date A is read on, B co-registered onto, and the outputs get
    same_grid = co_registered(a_info, b_info, name_a, name_b)
    if a_info.dtype != b_info.dtype:
        progress.warning(f"Layers '{name_a}' ({a_info.dtype}) and '{name_b}' ({b_info.dtype}) have different data "
                         "types; both are scaled with the model's normalisation, so their values should share one "
                         "range.")
    if a_info.crs_wkt is None:
        progress.warning(f"Layer '{name_a}' has no coordinate reference system: outputs will have none either, and "
                         "change areas will be in pixel units.")
    device = resolve_device(params.device)
    model = load_for_inference(model_dir, lambda: build_changedet(card.architecture), device)
    runner = BatchRunner(model, device, progress)
    grid = TileGrid(a_info.height, a_info.width, tile, overlap)
    progress.info(f"Detecting changes from '{name_a}' to '{name_b}' ({a_info.width} x {a_info.height} px, "
                  f"{len(grid)} tiles of {tile} px) with '{card.name}' on {describe_device(device)}.")

    with contextlib.ExitStack() as stack:
        a_src = stack.enter_context(open_on_grid(params.input_a_path, a_info))
        b_src = stack.enter_context(open_raster(params.input_b_path))
        if not same_grid:
            b_src = stack.enter_context(resampled_onto(b_src, a_src))
        if not b_on_a_file_grid:
            progress.warning(f"Layer '{name_b}' is on another grid than '{name_a}': resampled (bilinear) onto the "
                             f"grid of '{name_a}'.")
        staged = stack.enter_context(staged_outputs(outputs))
        changed = _write_rasters(params, staged[params.output_path], staged[params.probability_path], card, a_info,
                                 a_src, b_src, bands_a, bands_b, grid, runner,
                                 SubProgress(progress, 0.0, 0.9 if params.polygons_path else 1.0))
        polygons, area_km2 = 0, changed * pixel_area_km2(a_info)
        if params.polygons_path:
            polygonize(staged[params.output_path], staged[params.polygons_path], card.classes, only_values=[CHANGE],
                       progress=SubProgress(progress, 0.9, 1.0))
            polygons, area_km2 = polygon_totals(staged[params.polygons_path])
    seconds = time.perf_counter() - started
    progress.info(f"{changed} changed pixels" + (f", {polygons} change polygon(s) ({area_km2:.4f} km²)"
                                                 if params.polygons_path else "") + f"; done in {seconds:.1f} s.")
    progress.set_fraction(1.0)
    return ChangeResult(params.output_path, params.polygons_path, params.probability_path, changed, area_km2,
                        polygons, len(grid), seconds, describe_device(runner.device), not same_grid)


def run_change_tiles(runner: BatchRunner, card: ModelCard, a_src, b_src, bands_a: list[int], bands_b: list[int],
                     grid: TileGrid, batch_size: int, write_block, progress: Progress) -> None:
    """Blend change probabilities tile by tile: write_block(row, col, probabilities (2, h, w), valid (h, w)),
    valid = both dates valid. B must already be on A's grid (see resampled_onto)."""
    mean = np.asarray(card.normalization.offset, dtype=np.float32)[:, None, None]
    std = np.asarray(card.normalization.scale, dtype=np.float32)[:, None, None]
    bands = len(card.bands)

    def read_tile(tile):
        window = Window(tile.col, tile.row, tile.width, tile.height)
        a, a_valid = read_window(a_src, window, bands_a)
        b, b_valid = read_window(b_src, window, bands_b)
        valid = a_valid & b_valid
        x = np.concatenate([(a - mean) / std, (b - mean) / std])
        return pad_tile(np.where(valid, x, 0.0).astype(np.float32), grid.tile), valid

    def forward(model, x):
        return torch.softmax(model(x[:, :bands], x[:, bands:]), dim=1)

    def predict(tiles, inputs):
        return runner(torch.from_numpy(np.stack(inputs)), forward).numpy()

    run_tiles(grid, 2, read_tile, predict, write_block, batch_size, progress)


def _write_rasters(params, change_path, probability_path, card, info: RasterInfo, a_src, b_src, bands_a, bands_b, grid, runner, progress) -> int:
    common = dict(width=info.width, height=info.height, crs_wkt=info.crs_wkt, transform=info.transform)
    changed = 0

    def write_block(row, col, probs, valid):
        nonlocal changed
        change = probs[CHANGE] > probs[NO_CHANGE]
        labels = np.where(valid, change, CHANGE_NODATA).astype(np.uint8)
        changed += int(np.count_nonzero(change & valid))
        change_out.write(labels, row=row, col=col)
        if probability_out is not None:
            probability_out.write(np.where(valid, probs[CHANGE], PROBABILITY_NODATA), row=row, col=col)

    with contextlib.ExitStack() as stack:
        change_out = stack.enter_context(GeoTiffWriter(
            change_path, count=1, dtype="uint8", nodata=CHANGE_NODATA, colormap=card.colormap,
            band_names=["change"], **common))
        probability_out = None
        if probability_path:
            probability_out = stack.enter_context(GeoTiffWriter(
                probability_path, count=1, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=["change probability"], **common))
        run_change_tiles(runner, card, a_src, b_src, bands_a, bands_b, grid, params.batch_size, write_block, progress)
    return changed
