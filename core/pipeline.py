"""The skeleton every raster pipeline shares (segment, oil spills, change, refine, fuse).

A run first checks, before any model is loaded, so a bad choice costs the user no waiting: where it
will write (`check_outputs`), the tiling (`check_tiling`), that its inputs open, overlap one another
and hold valid pixels (`check_inputs`), then, with the model card (cheap: no weights), whether each
input fits the model (`fit_layer`: bands, value range, ground resolution; misfits are warnings saying
what was done and how to change it; `model_grid`: the grid a layer is read on at the model's ground
resolution when the user asks for that). It then writes every output under its own name inside a
hidden staging folder next to it (`staged_outputs`) and moves the whole set into place only when
the run has finished: a failed or cancelled run leaves no partial file, no half set of outputs,
and the files an earlier run wrote at those paths untouched; a run killed outright leaves its
staging folder, which the next run to the same output removes. `core.tiling.run_tiles` is the
tile loop in between.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio.warp

from core.checkpoint import ModelCard
from core.progress import Progress
from core.raster import (RasterError, RasterInfo, check_bands, grid_at_resolution, has_valid_pixel, open_raster,
                         raster_info, read_decimated)

PROBABILITY_NODATA = -1.0     # float rasters of values in [0, 1] (probabilities, weights, uncertainties)
RASTER_SUFFIXES = (".tif", ".tiff")
POLYGON_SUFFIX = ".gpkg"
# Every architecture we run halves its feature maps at least four times (the change detector's and the
# diffusion UNets' four poolings, the segmenters' five strides), so a tile under 16 px leaves the deepest
# layer less than a pixel of context, and tiny tiles multiply the work (3 px tiles: ~141k tiles for a
# 1000 x 1000 px layer). Models with a coarser stride ask for a multiple of it on top.
MIN_TILE_SIZE = 16
PARTIAL_OVERLAP = 0.999       # below this covered share of the reference layer, a partial overlap is reported
RESOLUTION_TOLERANCE = 2.0    # a ground resolution more than this factor off the model's is reported
FAR_FROM_TRAINING = 6.0       # |(value - offset) / scale| beyond this (1st / 99th percentile): unlike the training data


@dataclass(frozen=True)
class Output:
    """One file a run may write."""
    path: str                   # '' when the user did not ask for it
    what: str                   # how messages name it, e.g. "probability raster", "oil-slick polygons"
    polygons: bool = False      # a GeoPackage of polygons (core.vector.polygonize), else a GeoTIFF


def class_raster_dtype(card: ModelCard) -> tuple[str, int]:
    """Smallest unsigned type holding every class value, and a nodata value outside them."""
    top = max((c.value for c in card.classes), default=0)
    return ("uint8", 255) if top < 255 else ("uint16", 65535)


def check_outputs(outputs: Sequence[Output], inputs: dict[str, str]) -> None:
    """Refuse outputs that would overwrite an input or each other, have the wrong file type or cannot be
    written, with a message naming the output. The first output is the run's main one and needs a name.
    inputs: input path -> how the user knows that layer."""
    if not outputs[0].path:
        raise ValueError(f"Choose a file name for the {outputs[0].what}.")
    input_names = {Path(path).resolve(): name for path, name in inputs.items()}
    taken: dict[Path, str] = {}
    for out in outputs:
        if not out.path:
            continue
        path = Path(out.path).resolve()
        if path in input_names:
            raise RasterError(f"The {out.what} '{out.path}' is the input layer '{input_names[path]}'; choose "
                              "another file name.")
        if path in taken:
            raise ValueError(f"The {taken[path]} and the {out.what} are both '{out.path}'; choose two file names.")
        taken[path] = out.what
        if out.polygons and path.suffix.lower() != POLYGON_SUFFIX:
            raise ValueError(f"The {out.what} are written as a GeoPackage: use a .gpkg file name, not '{out.path}'.")
        if not out.polygons and path.suffix.lower() not in RASTER_SUFFIXES:
            raise ValueError(f"The {out.what} is written as a GeoTIFF: use a .tif file name, not '{out.path}'.")
        if path.is_dir():
            raise ValueError(f"The {out.what} '{out.path}' is a folder; choose a file name.")
        folder = next(p for p in path.parents if p.exists())   # the output's folder or the ancestor it goes in
        if not folder.is_dir():
            raise ValueError(f"The {out.what} '{out.path}' cannot be written: '{folder}' is a file, not a folder.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"The {out.what} '{out.path}' cannot be written: folder '{folder}' is not writable.")


def check_tiling(tile_size: int, overlap: int) -> None:
    """Refuse a tile size under MIN_TILE_SIZE or an overlap outside 0..tile/2 (beyond half a tile, the tiles
    would overlap twice over). A tile size of 0 stands for the model's, checked once its card is read."""
    if tile_size and tile_size < MIN_TILE_SIZE:
        raise ValueError(f"Tile size {tile_size} px is below the minimum of {MIN_TILE_SIZE} px: a model sees too "
                         "little around each pixel in a smaller tile. Choose a tile size of at least "
                         f"{MIN_TILE_SIZE} px (0: the model's).")
    if overlap < 0:
        raise ValueError(f"Tile overlap {overlap} px is negative; choose 0 or more.")
    if tile_size and overlap > tile_size // 2:
        raise ValueError(f"Tile overlap {overlap} px is more than half the tile size ({tile_size} px); choose an "
                         f"overlap of at most {tile_size // 2} px or a tile size of at least {2 * overlap} px.")


def model_tiling(tile_size: int, overlap: int, card: ModelCard, progress: Progress) -> tuple[int, int]:
    """The tile size and overlap to run with: the user's tile size (see check_tiling), or else the model's. A
    default overlap suits the usual tiles, not every model's, so one beyond half the model's tile is halved
    with a warning; an overlap the user set with a tile size they chose is an error instead."""
    if tile_size:
        return tile_size, overlap
    check_tiling(card.tile_size, 0)
    if overlap > card.tile_size // 2:
        progress.warning(f"Tile overlap {overlap} px is more than half the model's tile size ({card.tile_size} px): "
                         f"{card.tile_size // 2} px used. Choose a tile size of at least {2 * overlap} px to keep "
                         f"{overlap} px.")
        return card.tile_size, card.tile_size // 2
    return card.tile_size, overlap


@dataclass(frozen=True)
class InputLayer:
    """One input raster of a run, as messages name it."""
    path: str
    name: str                       # how the user knows the layer
    role: str = "layer"             # its part in the run, e.g. "date B", "infrared layer"
    bands: Sequence[int] = (1,)     # bands whose pixels must be valid somewhere

    def __str__(self) -> str:
        return f"{self.role} '{self.name}'"


def check_inputs(layers: Sequence[InputLayer], progress: Progress) -> list[RasterInfo]:
    """Each layer opens and holds a valid pixel; every later layer overlaps the first (the one whose grid the
    outputs get). No overlap is an error naming both layers' CRS and extent; a partial one a warning with the
    covered share. Returns the layers' RasterInfo, in order."""
    infos = [raster_info(layer.path) for layer in layers]
    for layer, info in zip(layers[1:], infos[1:]):
        covered = _covered_share(infos[0], info)
        if covered is None:
            continue
        if covered == 0.0:
            raise RasterError(f"{_capital(layer)} ({info.describe_place()}) does not overlap {layers[0]} "
                              f"({infos[0].describe_place()}); choose layers that cover the same area.")
        if covered < PARTIAL_OVERLAP:
            progress.warning(f"{_capital(layer)} covers only {100 * covered:.1f}% of {layers[0]}: the outputs are "
                             f"nodata where it has no data. Crop {layers[0]} to the overlap to leave that out.")
    for layer, info in zip(layers, infos):
        bad = [b for b in layer.bands if not 1 <= b <= info.count]
        if bad:
            listed = ", ".join(map(str, bad))
            raise RasterError(f"{_capital(layer)} has bands 1..{info.count}; "
                              + (f"band {listed} does not exist." if len(bad) == 1 else f"bands {listed} do not exist."))
        with open_raster(layer.path) as src:
            if not has_valid_pixel(src, list(layer.bands), progress):
                nodata = f" (value {info.nodata:g})" if info.nodata is not None else ""
                raise RasterError(f"{_capital(layer)} has no valid pixel: band(s) {', '.join(map(str, layer.bands))} "
                                  f"are nodata{nodata} everywhere, so there is nothing to run the model on. Check "
                                  "the layer's nodata value or choose another layer.")
    return infos


def _capital(layer: InputLayer) -> str:
    text = str(layer)
    return text[:1].upper() + text[1:]


def _covered_share(reference: RasterInfo, other: RasterInfo) -> float | None:
    """The share of `reference`'s extent that `other` covers (0 when apart); None when it cannot be told
    (a layer without CRS, or extents that do not transform into the other CRS)."""
    if reference.crs_wkt is None or other.crs_wkt is None:
        return None
    try:
        left, bottom, right, top = rasterio.warp.transform_bounds(other.crs_wkt, reference.crs_wkt, *other.bounds,
                                                                  densify_pts=21)
    except (rasterio.errors.CRSError, ValueError):
        return None
    if not np.all(np.isfinite([left, bottom, right, top])):
        return None
    ref_left, ref_bottom, ref_right, ref_top = reference.bounds
    width = min(right, ref_right) - max(left, ref_left)
    height = min(top, ref_top) - max(bottom, ref_bottom)
    if width <= 0 or height <= 0:
        return 0.0
    return min(1.0, width * height / ((ref_right - ref_left) * (ref_top - ref_bottom)))


def fit_layer(layer: InputLayer, info: RasterInfo, bands: Sequence[int] | None, card: ModelCard,
              progress: Progress, scaled_by_card: bool = True, resample_to_model: bool | None = None,
              grid: RasterInfo | None = None) -> list[int]:
    """The bands to read from `layer` for `card`'s model (an error if it has fewer than the model needs), with a
    warning for each way the layer is unlike the model's training data: extra bands or band names unlike the
    card's, values beyond its data type's range or far from its normalisation (when `scaled_by_card`: the
    pipeline scales values with the card's offset / scale), a ground resolution more than
    RESOLUTION_TOLERANCE off the card's. resample_to_model: None when the run has no option to read the layer
    at the model's resolution (RESAMPLE_TO_MODEL), else whether it is on; grid: the grid the layer is read on
    when the option is on (model_grid's; None: it could not be resampled), so the warning says what was done."""
    chosen = check_bands(info, bands, card.bands, layer.name)
    if bands is None and info.count > len(card.bands):
        progress.warning(f"{_capital(layer)} has {info.count} bands; the model '{card.name}' reads bands "
                         f"1-{len(card.bands)} as {', '.join(card.bands)} and ignores the others. Choose the bands "
                         "to read if these are not the right ones.")
    named = [(b, info.band_names[b - 1], want) for b, want in zip(chosen, card.bands)
             if info.band_names[b - 1] != f"band {b}"]
    unlike = [f"band {b} '{have}' as '{want}'" for b, have, want in named if have.lower() != want.lower()]
    if unlike:
        progress.warning(f"{_capital(layer)}: the model '{card.name}' reads {', '.join(unlike)}. Choose the bands "
                         f"to read in the order {', '.join(card.bands)} if that is not what you meant.")
    if scaled_by_card:
        with open_raster(layer.path) as src:
            data, valid = read_decimated(src, chosen)
        _check_values(layer, info, data[:, valid], card, progress)
    _check_resolution(layer, info, card, progress, resample_to_model, grid)
    return chosen


def training_dtype(card: ModelCard) -> str | None:
    """The data type the model was trained on: the card's extra 'dtype' when recorded, else 'uint8' when its
    normalisation fits 8-bit data (offset >= 0, 1 < offset + scale <= 255 for every band: mean / std or
    minimum / range of 0..255 values), else unknown."""
    if card.extra.get("dtype"):
        return str(card.extra["dtype"])
    fits_8_bit = all(o >= 0 and 1 < o + s <= 255 for o, s in zip(card.normalization.offset, card.normalization.scale))
    return "uint8" if fits_8_bit else None


def _check_values(layer: InputLayer, info: RasterInfo, values: np.ndarray, card: ModelCard,
                  progress: Progress) -> None:
    """Warn when the layer's values (bands, pixels of a decimated read) are unlike the model's training data."""
    if values.size == 0:
        return
    trained_on = training_dtype(card)
    if trained_on is not None and np.issubdtype(np.dtype(trained_on), np.integer):
        limits = np.iinfo(trained_on)
        kind = "8-bit" if trained_on == "uint8" else trained_on
        low, high = float(values.min()), float(values.max())
        how = (f"the values were scaled with the model's {kind} statistics as they are, so the results are "
               f"unreliable. Rescale the layer to {limits.min}..{limits.max} first (e.g. Raster > Conversion > "
               f"Translate with a scale), or use a model trained on data like it.")
        if high > limits.max or low < limits.min:
            progress.warning(f"{_capital(layer)} is {info.dtype} with values "
                             + (f"up to {high:g}" if high > limits.max else f"down to {low:g}")
                             + f"; the model '{card.name}' was trained on {kind} ({limits.min}..{limits.max}) data: "
                             + how)
        elif np.issubdtype(np.dtype(info.dtype), np.floating) and high <= 1.0 < limits.max:
            progress.warning(f"{_capital(layer)} is {info.dtype} with values of at most {high:g} (scaled to 0..1?); "
                             f"the model '{card.name}' was trained on {kind} ({limits.min}..{limits.max}) data: "
                             + how)
        return
    offset = np.asarray(card.normalization.offset, dtype=np.float64)[:, None]
    scale = np.asarray(card.normalization.scale, dtype=np.float64)[:, None]
    low, high = np.percentile(values, [1, 99], axis=1)
    z = (np.stack([low, high], axis=1) - offset) / scale
    worst = int(np.argmax(np.abs(z).max(axis=1)))
    if abs(z[worst]).max() > FAR_FROM_TRAINING:
        progress.warning(f"{_capital(layer)} ({info.dtype}) has values of {low[worst]:g}..{high[worst]:g} (1st-99th "
                         f"percentile) in the band read as '{card.bands[worst]}'; the model '{card.name}' scales it "
                         f"as (value - {offset[worst, 0]:g}) / {scale[worst, 0]:g}, which puts them at "
                         f"{z[worst, 0]:.0f}..{z[worst, 1]:.0f}, far from the values it was trained on (within a "
                         "few units of 0), so the results are unreliable. Rescale the layer to the range of the "
                         "model's training data, or use a model trained on data like it.")


RESAMPLE_OPTION = "'Resample to the model's resolution' (RESAMPLE_TO_MODEL)"


def model_grid(info: RasterInfo, card: ModelCard) -> RasterInfo | None:
    """The grid to read a layer on so that its pixels have the card's ground resolution: its extent on its own
    CRS at the model's pixel size (read with core.raster.open_on_grid), `info` itself when it already has that
    resolution; None when the card has no ground resolution or the layer no projected CRS to resample in."""
    if not card.ground_resolution or info.crs_wkt is None or info.is_geographic:
        return None
    return grid_at_resolution(info, card.ground_resolution)


def _check_resolution(layer: InputLayer, info: RasterInfo, card: ModelCard, progress: Progress,
                      resample_to_model: bool | None, grid: RasterInfo | None) -> None:
    model, have = card.ground_resolution, info.ground_resolution_m
    if resample_to_model and not model:
        progress.warning(f"The model '{card.name}' does not record the ground resolution it was trained on, so "
                         f"{RESAMPLE_OPTION} does nothing: {layer} was read at its own resolution.")
        return
    if not model:
        return
    if resample_to_model and grid is None:
        _cannot_resample(layer, info, card, progress)
        return
    if have is None:
        return
    ratio = have / model
    off = not 1 / RESOLUTION_TOLERANCE <= ratio <= RESOLUTION_TOLERANCE
    factor, way = _how_far(ratio)
    if resample_to_model and grid is not info:
        done = (f"it was read at {model:g} m to match the model, so the outputs are on that grid ({grid.width} x "
                f"{grid.height} px)")
        if not off:
            if not np.isclose(have, model):   # nothing to say when it already had the model's resolution
                progress.info(f"{_capital(layer)} has {have:.3g} m pixels: {done}.")
            return
        lacking = (f"; resampling adds no detail that its {have:.3g} m pixels lack, so the results are less "
                   f"reliable than on {model:g} m data" if ratio > 1 else "")
        progress.warning(f"{_capital(layer)} has {have:.3g} m pixels; the model '{card.name}' was trained on "
                         f"{model:g} m pixels ({factor:.3g}x {way}): {done}{lacking}. To read it at its own "
                         f"resolution instead, untick {RESAMPLE_OPTION}.")
        return
    if not off:
        return
    objects = "smaller" if ratio > 1 else "larger"
    how = f"resample the layer to about {model:g} m first (Raster > Projections > Warp)"
    if resample_to_model is False:
        how += f" or tick {RESAMPLE_OPTION}"
    progress.warning(f"{_capital(layer)} has {have:.3g} m pixels; the model '{card.name}' was trained on {model:g} m "
                     f"pixels ({factor:.3g}x {way}): objects look {factor:.3g}x {objects} to it than in its training "
                     f"data, so the results are unreliable. The layer was read at its own resolution; to change "
                     f"that, {how}.")


def _how_far(ratio: float) -> tuple[float, str]:
    """A layer's pixel size / the model's as a message says it: (4, 'coarser') or (2.5, 'finer')."""
    return (ratio, "coarser") if ratio > 1 else (1 / ratio, "finer")


def _cannot_resample(layer: InputLayer, info: RasterInfo, card: ModelCard, progress: Progress) -> None:
    """The warning for a layer that RESAMPLE_TO_MODEL cannot resample: it has no projected CRS to do it in."""
    model, have = card.ground_resolution, info.ground_resolution_m
    if info.crs_wkt is None:
        why, how = "has no CRS", "assign it its projected CRS (Raster > Projections > Assign Projection)"
    else:
        why = f"is in a geographic CRS ({rasterio.crs.CRS.from_wkt(info.crs_wkt).to_string()})"
        how = "reproject it to a projected CRS (Raster > Projections > Warp)"
    unlike = ""
    if have is not None and not 1 / RESOLUTION_TOLERANCE <= have / model <= RESOLUTION_TOLERANCE:
        factor, way = _how_far(have / model)
        unlike = (f" Its pixels of about {have:.3g} m are {factor:.3g}x {way} than the {model:g} m the model "
                  f"'{card.name}' was trained on, so the results are unreliable.")
    progress.warning(f"{_capital(layer)} {why}, so {RESAMPLE_OPTION} cannot resample it to the model's {model:g} m "
                     f"pixels (it resamples in the layer's own CRS, which must be projected): it was read at its own "
                     f"resolution.{unlike} To read it at {model:g} m, {how} first.")


class StagedPaths:
    """Where a run writes instead of its final paths, and scratch files it never keeps."""

    def __init__(self, partial_of: dict[str, str], scratch_folder: Path):
        self._partial_of = partial_of
        self._scratch_folder = scratch_folder

    def __getitem__(self, final: str) -> str:
        """The path to write the output `final` to ('' for an output not asked for)."""
        return self._partial_of[final] if final else ""

    def scratch(self, name: str) -> str:
        """A file the run needs on the way (e.g. a probability raster the polygons read), removed at the end."""
        folder = self._scratch_folder / ".scratch"   # apart from the outputs, which may have the same name
        folder.mkdir(exist_ok=True)
        return str(folder / name)


@contextlib.contextmanager
def staged_outputs(outputs: Sequence[Output]) -> Iterator[StagedPaths]:
    """Stage the outputs asked for; move them all into place when the block succeeds, else remove them
    (and the folders made for them). First removes what a killed run to the same outputs left behind.

    A staging folder is named after the first output it holds ('.NAME.RANDOM.partial') and locked while its
    run lives: the operating system drops the lock of a killed process, so an unlocked one is a leftover."""
    finals = {out.path: Path(out.path) for out in outputs if out.path}
    made = [p for folder in {f.parent.absolute() for f in finals.values()} for p in (folder, *folder.parents)
            if not p.exists()]
    remove_leftovers(finals.values())
    staging: dict[Path, Path] = {}   # output folder -> its staging folder
    locks: list[int] = []
    done = False
    try:
        for final in finals.values():
            if final.parent not in staging:
                final.parent.mkdir(parents=True, exist_ok=True)
                staging[final.parent] = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=STAGING_SUFFIX,
                                                              dir=final.parent))
                locks.append(_lock(staging[final.parent] / LOCK_NAME))
        yield StagedPaths({path: str(staging[final.parent] / final.name) for path, final in finals.items()},
                          next(iter(staging.values())))
        for final in finals.values():
            os.replace(staging[final.parent] / final.name, final)
        done = True
    finally:
        for fd in locks:
            if fd is not None:
                os.close(fd)   # closing releases the lock (Windows cannot remove a folder with an open file)
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        if not done:
            for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):   # kept when something else has appeared in it
                    folder.rmdir()


STAGING_SUFFIX = ".partial"
LOCK_NAME = ".lock"


def remove_leftovers(finals: Iterable[Path]) -> list[Path]:
    """Remove the staging folders that runs killed while writing any of `finals` left next to them (named for
    one of them or holding a file of its name, and not locked by a live run). Returns what was removed."""
    removed = []
    by_folder: dict[Path, set[str]] = {}
    for final in finals:
        by_folder.setdefault(final.parent, set()).add(final.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for candidate in folder.glob(f".*{STAGING_SUFFIX}"):
            if not candidate.is_dir() or not any(candidate.name.startswith(f".{name}.") or (candidate / name).exists()
                                                 for name in names):
                continue
            fd = _lock(candidate / LOCK_NAME)
            if fd is None:
                continue            # a run writing the same output right now
            os.close(fd)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _lock(path: Path) -> int | None:
    """Open and lock `path` without waiting: the open file, or None when another process (or another run in
    this one) holds the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
    except OSError:
        return None
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
