"""Raster I/O shared by every pipeline: windowed reads in, tiled GeoTIFFs out.

Reads return float32 arrays (bands, rows, cols) plus a validity mask so that models never
see nodata; writers stream windows to a temporary file that is renamed only when the
whole raster is complete, so a failed or cancelled run leaves nothing half-written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

# GDAL's block cache otherwise grows to 5% of RAM while writing big rasters (MB; a user's
# own setting wins).
os.environ.setdefault("GDAL_CACHEMAX", "64")


SAMPLE_SIDE = 1024          # px a side of a decimated read (read_decimated): ~1 M pixels per band
SCAN_PIXELS = 1 << 22       # pixels per strip when a raster has to be scanned whole


class RasterError(ValueError):
    """Input raster problem worded for the user (which file, which band, what was expected)."""


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str | None
    transform: tuple[float, ...]
    nodata: float | None
    band_names: tuple[str, ...]

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform[0]), abs(self.transform[4])

    @property
    def is_geographic(self) -> bool:
        return self.crs_wkt is not None and rasterio.crs.CRS.from_wkt(self.crs_wkt).is_geographic

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the layer's CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, rasterio.Affine(*self.transform))

    @property
    def ground_resolution_m(self) -> float | None:
        """Mean pixel side in metres (degrees converted at the layer's centre latitude); None without a CRS."""
        if self.crs_wkt is None:
            return None
        x, y = self.resolution
        if self.is_geographic:
            left, bottom, right, top = self.bounds
            metres_per_degree = 111_320.0
            return (x * metres_per_degree * np.cos(np.radians((bottom + top) / 2)) + y * metres_per_degree) / 2
        factor = rasterio.crs.CRS.from_wkt(self.crs_wkt).linear_units_factor[1]
        return (x + y) / 2 * factor

    def describe_place(self) -> str:
        """CRS and extent as a message shows them, e.g. 'EPSG:32633, extent 500000, 5599968 : 500048, 5600000'."""
        if self.crs_wkt is None:
            return "no CRS"
        crs = rasterio.crs.CRS.from_wkt(self.crs_wkt)
        epsg = crs.to_epsg()
        name = f"EPSG:{epsg}" if epsg else crs.to_wkt().split('"')[1]
        digits = 6 if crs.is_geographic else 1
        left, bottom, right, top = (f"{v:.{digits}f}".rstrip("0").rstrip(".") for v in self.bounds)
        return f"{name}, extent {left}, {bottom} : {right}, {top}"


def raster_info(path: str | os.PathLike) -> RasterInfo:
    with open_raster(path) as src:
        names = tuple(d or f"band {i + 1}" for i, d in enumerate(src.descriptions))
        return RasterInfo(
            path=str(path), width=src.width, height=src.height, count=src.count,
            dtype=src.dtypes[0], crs_wkt=src.crs.to_wkt() if src.crs else None,
            transform=tuple(src.transform)[:6], nodata=src.nodata, band_names=names,
        )


def open_raster(path: str | os.PathLike):
    """Open any GDAL raster read-only, with an error that names the file."""
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise RasterError(f"Cannot open raster '{path}': {exc}") from exc


def check_bands(info: RasterInfo, bands: Sequence[int] | None, needed: Sequence[str],
                layer_name: str | None = None) -> list[int]:
    """Return the 1-based band list to read, or explain which bands are missing."""
    name = layer_name or Path(info.path).name
    if bands is None:
        if info.count < len(needed):
            raise RasterError(
                f"Layer '{name}' has {info.count} band(s) but the model needs {len(needed)} "
                f"({', '.join(needed)}). Pick a layer with these bands or choose bands explicitly.")
        return list(range(1, len(needed) + 1))
    bands = [int(b) for b in bands]
    if len(bands) != len(needed):
        raise RasterError(
            f"{len(bands)} band(s) selected from layer '{name}' but the model needs "
            f"{len(needed)} ({', '.join(needed)}).")
    bad = [b for b in bands if not 1 <= b <= info.count]
    if bad:
        raise RasterError(f"Layer '{name}' has bands 1..{info.count}; band(s) {bad} do not exist.")
    return bands


def read_window(src, window: Window, bands: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read bands in a window as float32 (complex -> amplitude) and a validity mask.

    Pixels equal to nodata, NaN, or masked by the dataset's own mask are invalid.
    """
    return _with_validity(src, src.read(list(bands), window=window), lambda: src.dataset_mask(window=window))


def read_decimated(src, bands: Sequence[int], max_side: int = SAMPLE_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster read at most `max_side` px a side (nearest neighbour, overviews when present), as
    float32 and a validity mask like read_window: cheap statistics whose memory does not grow with the raster."""
    step = max(1, -(-max(src.width, src.height) // max_side))
    shape = (max(1, src.height // step), max(1, src.width // step))
    data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=rasterio.enums.Resampling.nearest)
    return _with_validity(src, data, lambda: src.dataset_mask(out_shape=shape))


def has_valid_pixel(src, bands: Sequence[int], progress=None) -> bool:
    """True when some pixel of `bands` is valid: a decimated read answers at once for any raster with data
    to speak of; only when it sees none is the raster scanned strip by strip (stopping at the first valid
    pixel), so a small valid patch is not missed and memory does not grow."""
    if read_decimated(src, bands)[1].any():
        return True
    rows = max(1, SCAN_PIXELS // src.width)
    for top in range(0, src.height, rows):
        if read_window(src, Window(0, top, src.width, min(rows, src.height - top)), bands)[1].any():
            return True
        if progress is not None:
            progress.check()
    return False


def _with_validity(src, data: np.ndarray, dataset_mask) -> tuple[np.ndarray, np.ndarray]:
    """float32 data (complex -> amplitude) and where it is valid: not nodata, not NaN, not masked by the
    dataset's own mask (dataset_mask() reads it for the same pixels)."""
    if np.iscomplexobj(data):
        data = np.abs(data)
    floating = np.issubdtype(data.dtype, np.floating)
    data = data.astype(np.float32, copy=False)
    valid = np.ones(data.shape[1:], dtype=bool)
    if src.nodata is not None and not np.isnan(src.nodata):
        valid &= ~np.any(data == np.float32(src.nodata), axis=0)
    if floating:
        valid &= ~np.any(np.isnan(data), axis=0)
    if src.nodata is None and any(flag & rasterio.enums.MaskFlags.per_dataset
                                  for flag in src.mask_flag_enums[0]):
        valid &= dataset_mask() > 0
    return data, valid


def read_array(path: str | os.PathLike, bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Whole-raster read for small rasters (datasets, tests)."""
    with open_raster(path) as src:
        band_list = list(bands) if bands else list(range(1, src.count + 1))
        return read_window(src, Window(0, 0, src.width, src.height), band_list)


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    color = color.lstrip("#")
    rgb = tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))
    return (*rgb, 255)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{uuid.uuid4().hex[:8]}.partial{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        for leftover in final.parent.glob(tmp.name + "*"):
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary sibling folder; it becomes `path` only if the block succeeds.

    An existing `path` must be empty unless `replace` (then it is swapped out at the end), so a
    failed or cancelled run never leaves a half-written folder or mixes old and new files.
    """
    final = Path(path)
    if final.exists() and not replace and (not final.is_dir() or any(final.iterdir())):
        raise RasterError(f"Output folder '{final}' is not empty; choose a new or empty folder.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class GeoTiffWriter:
    """Stream windows into a tiled, compressed GeoTIFF written under a temporary name.

    Use as a context manager: on success the file is renamed to `path`; on any exception
    (including cancellation) the temporary file is removed and `path` is untouched.
    """

    def __init__(self, path: str | os.PathLike, *, width: int, height: int, count: int, dtype: str,
                 crs_wkt: str | None, transform: Sequence[float], nodata: float | None = None,
                 colormap: dict[int, tuple[int, int, int, int]] | None = None,
                 band_names: Sequence[str] | None = None):
        self.path = Path(path)
        self.profile = dict(
            driver="GTiff", width=width, height=height, count=count, dtype=dtype,
            crs=rasterio.crs.CRS.from_wkt(crs_wkt) if crs_wkt else None,
            transform=rasterio.Affine(*transform[:6]), nodata=nodata,
            compress="deflate", BIGTIFF="IF_SAFER",
        )
        if width >= 256 and height >= 256:
            self.profile.update(tiled=True, blockxsize=256, blockysize=256)
        if count > 1 and dtype != "uint8":
            self.profile["interleave"] = "band"
        self.colormap = colormap
        self.band_names = band_names
        self._atomic = None
        self._dst = None

    def __enter__(self) -> "GeoTiffWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._dst = rasterio.open(tmp, "w", **self.profile)
        if self.colormap:
            self._dst.write_colormap(1, self.colormap)
        for i, name in enumerate(self.band_names or ()):
            self._dst.set_band_description(i + 1, name)
        return self

    def write(self, array: np.ndarray, row: int = 0, col: int = 0) -> None:
        if array.ndim == 2:
            array = array[None]
        window = Window(col, row, array.shape[2], array.shape[1])
        self._dst.write(array.astype(self.profile["dtype"], copy=False), window=window)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._dst.close()
        finally:
            self._atomic.__exit__(exc_type, exc, tb)
        return False


def write_geotiff(path: str | os.PathLike, array: np.ndarray, *, crs_wkt: str | None,
                  transform: Sequence[float], nodata: float | None = None,
                  colormap: dict[int, tuple[int, int, int, int]] | None = None,
                  band_names: Sequence[str] | None = None) -> Path:
    """Write a whole in-memory array (bands, rows, cols) or (rows, cols) atomically."""
    if array.ndim == 2:
        array = array[None]
    with GeoTiffWriter(path, width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=str(array.dtype), crs_wkt=crs_wkt, transform=transform,
                       nodata=nodata, colormap=colormap, band_names=band_names) as writer:
        writer.write(array)
    return Path(path)


def co_registered(info: RasterInfo, other: RasterInfo, name: str, other_name: str) -> bool:
    """True when `other` is on `info`'s grid; False when it must be resampled onto it (see resampled_onto);
    an error when the grids differ and one layer has no CRS to resample with."""
    same = (info.width, info.height, info.crs_wkt) == (other.width, other.height, other.crs_wkt) and \
        np.allclose(info.transform, other.transform)
    if not same and (info.crs_wkt is None or other.crs_wkt is None):
        raise RasterError(f"Layers '{name}' ({info.width} x {info.height} px) and '{other_name}' ({other.width} x "
                          f"{other.height} px) are on different grids and one has no coordinate reference system, so "
                          "they cannot be co-registered.")
    return same


def resampled_onto(src, target):
    """`src` read on `target`'s grid (bilinear WarpedVRT); areas it does not cover read as invalid (an alpha
    band is added when `src` has no nodata, so read explicit bands from it). The VRT warps each window as it
    is read, so memory does not grow with the raster."""
    return _warped(src, target.crs, target.transform, target.width, target.height)


def _warped(src, crs, transform, width: int, height: int):
    from rasterio.vrt import WarpedVRT
    return WarpedVRT(src, crs=crs, transform=transform, width=width, height=height,
                     resampling=rasterio.enums.Resampling.bilinear, add_alpha=src.nodata is None)


def grid_at_resolution(info: RasterInfo, metres: float) -> RasterInfo:
    """`info`'s extent on its own (projected) CRS with `metres` pixels: the grid open_on_grid reads the layer
    on, north up. The pixel count is rounded, so the extent moves by at most half a pixel; `info` itself when its
    pixels already have that size."""
    if info.crs_wkt is None or info.is_geographic:
        raise RasterError(f"Layer '{Path(info.path).name}' has no projected CRS to resample it in.")
    pixel = metres / rasterio.crs.CRS.from_wkt(info.crs_wkt).linear_units_factor[1]
    if np.allclose(info.resolution, pixel, rtol=1e-6, atol=0):
        return info
    xs, ys = rasterio.Affine(*info.transform) * np.array([[0, info.width, 0, info.width],       # the corners:
                                                          [0, 0, info.height, info.height]], float)  # any orientation
    left, right, bottom, top = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
    width, height = max(1, round((right - left) / pixel)), max(1, round((top - bottom) / pixel))
    return replace(info, width=width, height=height, transform=(pixel, 0.0, left, 0.0, -pixel, top))


@contextlib.contextmanager
def open_on_grid(path: str | os.PathLike, grid: RasterInfo) -> Iterator:
    """The raster at `path` read on `grid` (e.g. from grid_at_resolution): the file itself when that is its own
    grid, else a bilinear WarpedVRT of it (see resampled_onto)."""
    with open_raster(path) as src:
        if (src.width, src.height) == (grid.width, grid.height) and \
                np.allclose(tuple(src.transform)[:6], grid.transform, rtol=1e-9, atol=0):
            yield src
            return
        with _warped(src, src.crs, rasterio.Affine(*grid.transform), grid.width, grid.height) as vrt:
            yield vrt


def pixel_area_km2(info: RasterInfo) -> float:
    """Area of one pixel in km²; NaN when the layer has no projected CRS (polygons then give areas)."""
    if info.crs_wkt is None or info.is_geographic:
        return float("nan")
    factor = rasterio.crs.CRS.from_wkt(info.crs_wkt).linear_units_factor[1]
    return info.resolution[0] * info.resolution[1] * factor ** 2 / 1e6
