"""fuse_ir_visible: an infrared and a visible layer of any size -> a fused layer on the visible grid.

The infrared layer is read on the visible layer's grid (resampled bilinearly when the grids
differ, with a message). Both are scaled to [0, 1] (core.data.images.unit_range), the visible
luma and the infrared are fused tile by tile with overlap by Dig2DIG or DDFM
(core.fusion.sampler), and the blended fused luma is put back together with the visible
image's colour (its Cb/Cr), so a colour visible layer gives a colour result. Optionally the
infrared weight of every DIG recomputation is written as a raster band each.

Every tile has the same size (`tile_size`, 256 px by default, the paper's working size; a smaller
image is padded up to it), because DIG's distances are taken over the whole tile and their scale
sets how decisive the weights are. Tiles are fused `batch_size` at a time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from core.catalog import resolve_model_dir
from core.data.images import to_unit, unit_range
from core.device import describe_device, resolve_device
from core.fusion.prior import TASK, FusionPrior, load_prior
from core.fusion.sampler import (FusionSettings, dig_levels, fuse, prior_evaluations, rgb_to_ycbcr, timesteps_for,
                                 ycbcr_to_rgb)
from core.pipeline import PROBABILITY_NODATA, InputLayer, Output, check_inputs, check_outputs, check_tiling, staged_outputs
from core.progress import Progress, SubProgress
from core.raster import GeoTiffWriter, RasterError, co_registered, open_raster, read_window, resampled_onto
from core.tiling import TileGrid, pad_tile, run_tiles

DEFAULT_BATCH = 2     # tiles per prior forward: the starter prior's best images/s on a 2-core CPU (make bench)


@dataclass
class FusionParams:
    """Everything one run needs; plain values so panel, Processing, CLI and tests share it."""
    infrared_path: str
    visible_path: str
    output_path: str
    model_dir: str = ""                 # empty: the shipped starter prior
    settings: FusionSettings = field(default_factory=FusionSettings)
    weights_path: str = ""              # optional raster: infrared weight at each DIG recomputation (dig mode)
    infrared_band: int = 1
    tile_size: int = 256                # fixed: DIG's distances are taken over the whole tile
    overlap: int = 32
    batch_size: int = DEFAULT_BATCH
    device: str = "auto"
    infrared_name: str = ""             # how the user knows the layers, for messages
    visible_name: str = ""

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


@dataclass
class FusionResult:
    output_path: str
    weights_path: str
    prior: str                          # which prior was used (shown in the panel and the log)
    settings: dict
    device: str
    seconds: float
    tiles: int
    resampled: bool                     # the infrared layer was resampled onto the visible grid
    mean_infrared_weight: list[float]   # per DIG recomputation, over the whole image (empty for ddfm)
    prior_forwards: dict[int, int] = field(default_factory=dict)   # batch size -> number of prior evaluations
    seconds_by_part: dict[str, float] = field(default_factory=dict)  # prior, dig, em, io (reading, blending, writing)

    pixels: int = 0                     # width x height of the fused layer

    @property
    def megapixels_per_minute(self) -> float:
        return self.pixels / 1e6 / (self.seconds / 60)


def fuse_ir_visible(params: FusionParams, progress: Progress | None = None) -> FusionResult:
    progress = progress or Progress()
    started = time.perf_counter()
    settings = params.settings
    settings.validate()
    ir_name = params.infrared_name or Path(params.infrared_path).name
    vis_name = params.visible_name or Path(params.visible_path).name
    outputs = [Output(params.output_path, "fused raster"), Output(params.weights_path, "weights raster")]
    check_outputs(outputs, {params.infrared_path: ir_name, params.visible_path: vis_name})
    check_tiling(params.tile_size, params.overlap)
    visible = InputLayer(params.visible_path, vis_name, "visible layer")
    infrared = InputLayer(params.infrared_path, ir_name, "infrared layer", (params.infrared_band,))
    vis, ir = check_inputs([visible, infrared], progress)
    if vis.count not in (1, 3, 4):
        raise RasterError(f"Visible layer '{vis_name}' has {vis.count} bands; expected 1 (gray) or 3 (RGB, a 4th "
                          "alpha band is ignored).")
    colour = vis.count >= 3
    same_grid = co_registered(vis, ir, vis_name, ir_name)
    prior = load_prior(params.resolved_model_dir())
    progress.info(f"Prior: {prior.describe()}.")
    device = resolve_device(params.device)
    prior = prior.to(device).eval()
    multiple = max(prior.multiple, 8)
    tile = params.tile_size
    if tile % multiple or tile < multiple:
        raise ValueError(f"Tile size must be a multiple of {multiple} pixels for this prior, not {tile}.")
    grid = TileGrid(vis.height, vis.width, tile, params.overlap)
    recomputes = len(range(0, settings.steps, settings.dig_interval)) if settings.mode == "dig" else 0
    if params.weights_path and not recomputes:
        raise ValueError("Weight maps exist only in the 'dig' mode; DDFM uses fixed weights.")
    progress.info(f"Fusing infrared '{ir_name}' with visible '{vis_name}' ({vis.width} x {vis.height} px) by "
                  f"{settings.mode.upper()}-{settings.steps}"
                  + (f", {settings.dig_kind} DIG ({settings.dig_distance} distance, softmax temperature "
                     f"{settings.dig_temperature:g}) every {settings.dig_interval} steps" if recomputes else "") + f", on {describe_device(device)}.")
    progress.info(f"Expected work: {len(grid)} tile(s) of {tile} px x {settings.steps} steps"
                  + (f" + {dig_levels(settings)} DIG noise levels x 2 sources" if recomputes else "")
                  + f" = {len(grid) * prior_evaluations(settings)} prior evaluations of one tile; crop the layers "
                  "to fuse less.")

    with contextlib.ExitStack() as stack:
        vis_src = stack.enter_context(open_raster(params.visible_path))
        ir_src = stack.enter_context(open_raster(params.infrared_path))
        if not same_grid:
            ir_src = stack.enter_context(resampled_onto(ir_src, vis_src))
            progress.warning(f"Infrared layer '{ir_name}' is on another grid: resampled (bilinear) onto the grid of "
                             f"'{vis_name}'.")
        vis_bands = [1, 2, 3] if colour else [1]
        weight_sums = np.zeros(recomputes)
        totals = {"forwards": Counter(), "seconds": dict.fromkeys(("prior", "dig", "em"), 0.0)}
        staged = stack.enter_context(staged_outputs(outputs))
        valid_pixels = _run_tiles(params, staged[params.output_path], staged[params.weights_path], prior, device,
                                  vis_src, ir_src, vis_bands, grid, recomputes, weight_sums, totals, progress)
    seconds = time.perf_counter() - started
    parts = dict(totals["seconds"], io=seconds - sum(totals["seconds"].values()))
    progress.info(f"Fused in {seconds:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()) + ").")
    progress.set_fraction(1.0)
    return FusionResult(params.output_path, params.weights_path, prior.describe(), settings.as_dict(),
                        describe_device(device), seconds, len(grid), not same_grid,
                        [float(s / max(valid_pixels, 1)) for s in weight_sums],
                        dict(sorted(totals["forwards"].items())), parts, vis.width * vis.height)


def _run_tiles(params, output_path, weights_path, prior: FusionPrior, device, vis_src, ir_src, vis_bands, grid,
               recomputes, weight_sums, totals, progress) -> int:
    settings = params.settings
    vis_range = unit_range(vis_src, vis_bands)
    ir_range = unit_range(ir_src, [params.infrared_band])
    colour = len(vis_bands) == 3
    out_dtype = "uint8" if vis_src.dtypes[0] == "uint8" else "float32"
    declared = vis_src.nodata is not None or ir_src.nodata is not None
    nodata = vis_src.nodata if vis_src.nodata is not None else (
        (0 if out_dtype == "uint8" else float("nan")) if declared else None)
    times = timesteps_for(settings)
    done, valid_pixels = 0, 0

    def read_tile(tile):
        window = Window(tile.col, tile.row, tile.width, tile.height)
        visible, vis_valid = read_window(vis_src, window, vis_bands)
        infrared, ir_valid = read_window(ir_src, window, [params.infrared_band])
        stacked = np.concatenate([to_unit(infrared, *ir_range), to_unit(visible, *vis_range)])
        return pad_tile(stacked, grid.tile), vis_valid & ir_valid

    def predict(tiles, inputs):
        nonlocal done
        x = torch.from_numpy(np.stack(inputs)).to(device) * 2 - 1
        infrared, visible = x[:, :1], x[:, 1:]
        ycbcr = rgb_to_ycbcr(visible) if colour else visible
        sub = SubProgress(progress, done / len(grid), (done + len(tiles)) / len(grid))
        tile_settings = dataclasses.replace(settings, seed=settings.seed + 7919 * tiles[0].i + tiles[0].j)
        fused, trace = fuse(prior, infrared, ycbcr[:, :1], tile_settings, sub)
        totals["forwards"].update(trace.forward_batches)
        for part, seconds in trace.seconds.items():
            totals["seconds"][part] += seconds
        done += len(tiles)
        channels = [fused, ycbcr[:, 1:]]
        if recomputes:
            channels += [trace.weights[i][:, :1].expand_as(fused) for i in trace.dig_steps]
        return torch.cat(channels, dim=1).float().cpu().numpy()

    def write_block(row, col, block, valid):
        nonlocal valid_pixels
        fused = block[:3] if colour else block[:1]
        if colour:
            fused = ycbcr_to_rgb(torch.from_numpy(fused[None]))[0].numpy()
        raw = vis_range[0] + (fused.clip(-1, 1) + 1) / 2 * (vis_range[1] - vis_range[0])
        if out_dtype == "uint8":
            raw = np.clip(np.round(raw), 1 if nodata == 0 else 0, 255)
        if nodata is not None:
            raw[:, ~valid] = nodata
        out.write(raw, row=row, col=col)
        valid_pixels += int(valid.sum())
        if recomputes:
            weights = block[-recomputes:]
            weight_sums[:] += (weights * valid).sum(axis=(1, 2))
            if weights_out is not None:
                weights_out.write(np.where(valid, weights, PROBABILITY_NODATA), row=row, col=col)

    common = dict(width=grid.width, height=grid.height, crs_wkt=vis_src.crs.to_wkt() if vis_src.crs else None,
                  transform=tuple(vis_src.transform)[:6])
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(GeoTiffWriter(
            output_path, count=len(vis_bands), dtype=out_dtype, nodata=nodata,
            band_names=["fused red", "fused green", "fused blue"] if colour else ["fused"], **common))
        weights_out = None
        if weights_path:
            steps = [i for i in range(0, settings.steps, settings.dig_interval)]
            weights_out = stack.enter_context(GeoTiffWriter(
                weights_path, count=recomputes, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=[f"infrared weight from step {i} (t={times[i]})" for i in steps], **common))
        channels = (3 if colour else 1) + recomputes
        run_tiles(grid, channels, read_tile, predict, write_block, params.batch_size, progress)
    return valid_pixels


def fuse_folder(pairs_dir: str, output_dir: str, template: FusionParams,
                progress: Progress | None = None) -> list[FusionResult]:
    """Fuse every ir/NAME + vi/NAME pair of `pairs_dir` into output_dir/NAME.tif (an evaluation set)."""
    from core.data.images import list_fusion_pairs
    progress = progress or Progress()
    pairs = list_fusion_pairs(pairs_dir)
    results = []
    for i, (infrared, visible) in enumerate(pairs):
        params = dataclasses.replace(template, infrared_path=str(infrared), visible_path=str(visible),
                                     output_path=str(Path(output_dir) / f"{infrared.stem}.tif"))
        results.append(fuse_ir_visible(params, SubProgress(progress, i / len(pairs), (i + 1) / len(pairs))))
    return results
