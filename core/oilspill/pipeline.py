"""detect_oil_spills: a SAR scene of any size -> class raster + oil-slick polygons (SAROSS-Net).

The scene's stretch (input kind, dB conversion, percentile clip; see core.data.sar_scaling) is
fitted once on a decimated read, then tiles are read window by window, segmented in batches and
blended as class probabilities by core.tiling.run_tiles. Pixels inside the optional land-mask
polygons get the land class (or the background class when the model has none) and an oil
probability of zero. Oil pixels become polygons with their area and mean oil probability.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio.features
import torch
from rasterio.windows import Window
from shapely.geometry import box, mapping
from shapely.strtree import STRtree

from core.catalog import resolve_model_dir
from core.checkpoint import ModelCard, ModelError, load_card, load_for_inference, load_into
from core.device import BatchRunner, describe_device, resolve_device
from core.data.sar_scaling import INPUT_KINDS, SarScaling, fit_scene_scaler
from core.oilspill.saross import TASK, build_saross
from core.pipeline import (PROBABILITY_NODATA, InputLayer, Output, check_inputs, check_outputs, check_tiling,
                           class_raster_dtype, fit_layer, model_grid, model_tiling, staged_outputs)
from core.progress import Progress, SubProgress
from core.raster import GeoTiffWriter, open_on_grid, pixel_area_km2, read_window
from core.tiling import TileGrid, pad_tile, run_tiles
from core.vector import polygon_totals, polygonize, read_polygons_in_crs

OIL_CLASS = "oil"
LAND_CLASS = "land"


@dataclass
class OilSpillParams:
    """Everything one run needs; plain values so panel, Processing, CLI and tests share it."""
    input_path: str
    output_path: str                    # class raster
    model_dir: str = ""                 # empty: the shipped starter model
    band: int = 1                       # the SAR band (e.g. VV) to read
    input_kind: str = "auto"            # auto | linear | db | amplitude (see core.data.sar_scaling)
    land_mask_path: str = ""            # optional polygons (any OGR format) of land to exclude
    land_mask_layer: str = ""           # layer name inside a multi-layer file
    polygons_path: str = ""             # optional GeoPackage of oil-slick polygons
    probability_path: str = ""          # optional float32 raster: oil probability
    tile_size: int = 0                  # 0: the card's tile size
    overlap: int = 64
    batch_size: int = 4
    device: str = "auto"
    layer_name: str = ""                # how the user knows the input, for messages
    resample_to_model: bool = False     # read the layer at the card's ground resolution; outputs on that grid

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


@dataclass
class OilSpillResult:
    output_path: str
    polygons_path: str
    probability_path: str
    classes: list[dict]
    device: str
    seconds: float
    tiles: int
    scaling: str                        # how the input was read, e.g. "linear input, stretched ... dB"
    oil_pixels: int
    oil_area_km2: float                 # from the polygons when written, else pixel count x pixel area (NaN unknown)
    slicks: int                         # number of oil polygons (0 when no polygons were asked for)


def load_saross_card(model_dir: str) -> ModelCard:
    """The card of an oil-spill model (cheap: no weights), which must have an oil class."""
    card = load_card(model_dir, task=TASK)
    if not any(c.name == OIL_CLASS for c in card.classes):
        raise ModelError(f"Model '{card.name}' has no '{OIL_CLASS}' class "
                         f"(classes: {', '.join(c.name for c in card.classes)}).")
    return card


def load_saross(model_dir: str) -> tuple[torch.nn.Module, ModelCard]:
    card = load_saross_card(model_dir)
    return load_into(build_saross(card.architecture), model_dir), card


def detect_oil_spills(params: OilSpillParams, progress: Progress | None = None) -> OilSpillResult:
    progress = progress or Progress()
    started = time.perf_counter()
    name = params.layer_name or Path(params.input_path).name
    if params.input_kind not in INPUT_KINDS:
        raise ValueError(f"Unknown SAR input kind '{params.input_kind}'; choose one of {', '.join(INPUT_KINDS)}.")
    outputs = [Output(params.output_path, "class raster"), Output(params.polygons_path, "oil-slick polygons", True),
               Output(params.probability_path, "oil probability raster")]
    check_outputs(outputs, {params.input_path: name})
    check_tiling(params.tile_size, params.overlap)
    layer = InputLayer(params.input_path, name, bands=(params.band,))
    info, = check_inputs([layer], progress)
    model_dir = params.resolved_model_dir()
    card = load_saross_card(model_dir)
    tile, overlap = model_tiling(params.tile_size, params.overlap, card, progress)
    if tile % 32:
        raise ValueError(f"Tile size must be a multiple of 32 pixels, not {tile}.")
    at_model = model_grid(info, card) if params.resample_to_model else None
    fit_layer(layer, info, [params.band], card, progress, scaled_by_card=False,   # the scene's own stretch
              resample_to_model=params.resample_to_model, grid=at_model)
    info = at_model or info             # the grid the layer is read on and the outputs get
    if info.crs_wkt is None:
        progress.warning(f"Layer '{name}' has no coordinate reference system: slick areas will be in pixel units.")
    scaler = fit_scene_scaler(params.input_path, params.band, SarScaling.from_dict(card.extra.get("sar_scaling")),
                              params.input_kind)
    land = _land_polygons(params, info.crs_wkt, progress)
    device = resolve_device(params.device)
    model = load_for_inference(model_dir, lambda: build_saross(card.architecture), device)
    runner = BatchRunner(model, device, progress)
    grid = TileGrid(info.height, info.width, tile, overlap)
    progress.info(f"Detecting oil spills in '{name}' band {params.band} ({info.width} x {info.height} px, "
                  f"{len(grid)} tiles of {tile} px; {scaler.describe()}) with '{card.name}' on "
                  f"{describe_device(device)}.")

    with staged_outputs(outputs) as staged:
        class_path, probability_path = staged[params.output_path], staged[params.probability_path]
        if params.polygons_path and not probability_path:   # the polygons' mean probability needs it
            probability_path = staged.scratch("oil_probability.tif")
        oil_pixels = _run_tiles(params, class_path, probability_path, card, info, scaler, land, grid, runner,
                                SubProgress(progress, 0.0, 0.9 if params.polygons_path else 1.0))
        slicks, area_km2 = 0, oil_pixels * pixel_area_km2(info)
        if params.polygons_path:
            oil = [c.value for c in card.classes if c.name == OIL_CLASS]
            polygonize(class_path, staged[params.polygons_path], card.classes, only_values=oil,
                       mean_of={"mean_oil_prob": probability_path}, progress=SubProgress(progress, 0.9, 1.0))
            slicks, area_km2 = polygon_totals(staged[params.polygons_path])
    seconds = time.perf_counter() - started
    progress.info(f"{oil_pixels} oil pixels" + (f", {slicks} slick polygon(s) ({area_km2:.3f} km²)"
                                                if params.polygons_path else "") + f"; done in {seconds:.1f} s.")
    progress.set_fraction(1.0)
    return OilSpillResult(params.output_path, params.polygons_path, params.probability_path,
                          [asdict(c) for c in card.classes], describe_device(runner.device), seconds, len(grid),
                          scaler.describe(), oil_pixels, area_km2, slicks)


def _land_polygons(params: OilSpillParams, crs_wkt: str | None, progress: Progress) -> STRtree | None:
    if not params.land_mask_path:
        return None
    polygons = read_polygons_in_crs(params.land_mask_path, crs_wkt, params.land_mask_layer or None, "Land mask")
    progress.info(f"Land mask: {len(polygons)} polygon(s); land pixels are never oil.")
    return STRtree(polygons) if polygons else None


def _land_in_window(land: STRtree | None, src, row: int, col: int, height: int, width: int) -> np.ndarray | None:
    if land is None:
        return None
    transform = src.window_transform(Window(col, row, width, height))
    bounds = rasterio.windows.bounds(Window(col, row, width, height), src.transform)
    hits = land.geometries.take(land.query(box(*bounds)))
    if len(hits) == 0:
        return None
    return rasterio.features.geometry_mask([mapping(g) for g in hits], (height, width), transform, invert=True)


def _run_tiles(params, class_path, probability_path, card, info, scaler, land, grid, runner, progress) -> int:
    dtype, nodata = class_raster_dtype(card)
    values = np.asarray([c.value for c in card.classes], dtype=dtype)
    names = [c.name for c in card.classes]
    oil = names.index(OIL_CLASS)
    land_index = names.index(LAND_CLASS) if LAND_CLASS in names else 0
    common = dict(width=info.width, height=info.height, crs_wkt=info.crs_wkt, transform=info.transform)
    oil_pixels = 0

    def read_tile(tile):
        raw, valid = read_window(src, Window(tile.col, tile.row, tile.width, tile.height), [params.band])
        return pad_tile(scaler(raw, valid), grid.tile), valid

    def predict(tiles, inputs):
        return runner(torch.from_numpy(np.stack(inputs)), lambda model, x: torch.softmax(model(x), dim=1)).numpy()

    def write_block(row, col, probs, valid):
        nonlocal oil_pixels
        index = np.argmax(probs, axis=0)
        oil_probability = probs[oil]
        on_land = _land_in_window(land, src, row, col, *index.shape)
        if on_land is not None:
            index[on_land] = land_index
            oil_probability = np.where(on_land, 0.0, oil_probability)
        labels = values[index]
        labels[~valid] = nodata
        oil_pixels += int(np.count_nonzero((index == oil) & valid))
        classes_out.write(labels, row=row, col=col)
        if probability_out is not None:
            probability_out.write(np.where(valid, oil_probability, PROBABILITY_NODATA), row=row, col=col)

    with contextlib.ExitStack() as stack, open_on_grid(params.input_path, info) as src:
        classes_out = stack.enter_context(GeoTiffWriter(
            class_path, count=1, dtype=dtype, nodata=nodata, colormap=card.colormap, band_names=["class"],
            **common))
        probability_out = None
        if probability_path:
            probability_out = stack.enter_context(GeoTiffWriter(
                probability_path, count=1, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=["oil probability"], **common))
        run_tiles(grid, len(card.classes), read_tile, predict, write_block, params.batch_size, progress)
    return oil_pixels
