"""Cut an image and its labels into aligned patches in the folder dataset format.

Labels are a class raster (resampled onto the image grid with nearest neighbour when the
grids differ) or polygons with a class field (rasterised onto the image grid). Patches are
read and written window by window, so the image may be larger than memory. Labels that do not
reach the image, or polygons without a class value, are refused before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fiona
import numpy as np
import rasterio
import rasterio.features
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from core.data.folder import write_class_table
from core.progress import Progress
from core.raster import (RasterError, co_registered, open_raster, raster_info, read_window, resampled_onto,
                         staged_dir, write_geotiff)
from core.vector import reproject_geometry

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".sqlite")
LABEL_NODATA = 255
PALETTE = ["#b5926b", "#3f8f3a", "#2f6db5", "#8c8c8c", "#d9463b", "#e0c341", "#8e44ad", "#16a085",
           "#d35400", "#7f8c8d", "#c0392b", "#2c3e50"]


@dataclass
class TrainingSetParams:
    image_path: str
    labels_path: str              # class raster, or polygons with `class_field`
    output_dir: str
    patch_size: int = 256
    stride: int = 256
    class_field: str = ""         # polygons only: integer class values, or names (numbered 1.. in sorted order)
    labels_layer: str = ""        # polygons only: layer inside a multi-layer file (GeoPackage)
    max_nodata_fraction: float = 0.0   # skip a patch with more image nodata or unlabelled pixels than this
    unlabelled_outside: bool = False   # polygons only: outside every polygon is unlabelled (255), not 0 background
    class_values: dict[str, int] | None = None   # polygons with class names: these names get these values, the
    #                                              others the next free ones (e.g. a base model's class table)
    bands: list[int] | None = None     # image bands to write (1-based); None: all


@dataclass
class TrainingSetResult:
    output_dir: str
    patches: int
    skipped: int
    classes: list[dict]


def build_training_set(params: TrainingSetParams, progress: Progress | None = None) -> TrainingSetResult:
    """Write the dataset into a temporary sibling folder and rename it at the end, so a failed
    or cancelled run leaves no half dataset."""
    progress = progress or Progress()
    info = raster_info(params.image_path)
    final = Path(params.output_dir)
    labels = _VectorLabels(params, info) if Path(params.labels_path).suffix.lower() in VECTOR_SUFFIXES \
        else _RasterLabels(params, info)
    for note in labels.notes:
        progress.warning(note)
    with staged_dir(final) as out:
        result = _write_patches(params, info, labels, out, progress)
    progress.info(f"{result.patches} patch pairs written to {final}, {result.skipped} skipped for nodata.")
    return TrainingSetResult(str(final), result.patches, result.skipped, result.classes)


def _write_patches(params: TrainingSetParams, info, labels, out: Path, progress: Progress) -> TrainingSetResult:
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    size, stride = params.patch_size, params.stride
    positions = [(r, c) for r in range(0, max(info.height - size, 0) + 1, stride)
                 for c in range(0, max(info.width - size, 0) + 1, stride)]
    seen, written, skipped = set(), 0, 0
    stem = Path(params.image_path).stem
    bands = list(params.bands or range(1, info.count + 1))
    if not all(1 <= b <= info.count for b in bands):
        raise RasterError(f"Layer '{Path(params.image_path).name}' has {info.count} band(s); bands {bands} were "
                          "asked for.")
    band_names = [info.band_names[b - 1] for b in bands]
    with open_raster(params.image_path) as src:
        for i, (row, col) in enumerate(positions):
            window = Window(col, row, min(size, info.width), min(size, info.height))
            image, valid = read_window(src, window, bands)
            mask = labels.read(window)
            bad = ~valid | (mask == LABEL_NODATA)
            if bad.mean() > params.max_nodata_fraction:
                skipped += 1
            else:
                name = f"{stem}_r{row:06d}_c{col:06d}.tif"
                transform = tuple(src.window_transform(window))[:6]
                write_geotiff(out / "images" / name, src.read(bands, window=window), crs_wkt=info.crs_wkt,
                              transform=transform, nodata=info.nodata, band_names=band_names)
                write_geotiff(out / "masks" / name, mask.astype(np.uint8), crs_wkt=info.crs_wkt,
                              transform=transform, nodata=LABEL_NODATA)
                seen.update(np.unique(mask[~bad]).tolist())
                written += 1
            progress.step(i + 1, len(positions))
    classes = labels.class_table(sorted(seen))
    write_class_table(out, classes, band_names)
    return TrainingSetResult(str(out), written, skipped, classes)


def _check_overlap(labels_name: str, bounds, crs_wkt: str | None, info) -> list[str]:
    """Refuse labels that do not reach the image; a note when they are in another CRS (reprojected)."""
    image_name = Path(info.path).name
    if crs_wkt and info.crs_wkt and rasterio.crs.CRS.from_wkt(crs_wkt) != rasterio.crs.CRS.from_wkt(info.crs_wkt):
        bounds = transform_bounds(crs_wkt, info.crs_wkt, *bounds)
        notes = [f"Labels '{labels_name}' are in another coordinate reference system than image '{image_name}': "
                 "reprojected onto the image's grid."]
    else:
        notes = []
    left, bottom, right, top = info.bounds
    if bounds[0] >= right or bounds[2] <= left or bounds[1] >= top or bounds[3] <= bottom:
        raise RasterError(f"Labels '{labels_name}' lie outside image '{image_name}': they do not overlap it "
                          "(check that both layers cover the same place).")
    return notes


class _RasterLabels:
    def __init__(self, params: TrainingSetParams, info):
        self.path, self.info = params.labels_path, info
        self.src = open_raster(self.path)
        self.notes = _check_overlap(Path(self.path).name, tuple(self.src.bounds),
                                    self.src.crs.to_wkt() if self.src.crs else None, info)
        self.same_grid = (self.src.width, self.src.height) == (info.width, info.height) and \
            np.allclose(tuple(self.src.transform)[:6], info.transform) and \
            (self.src.crs.to_wkt() if self.src.crs else None) == info.crs_wkt
        if self.src.count != 1:
            raise RasterError(f"Label raster '{Path(self.path).name}' has {self.src.count} bands; expected one band "
                              "of class values.")

    def read(self, window: Window) -> np.ndarray:
        if self.same_grid:
            data = self.src.read(1, window=window)
        else:  # nearest-neighbour onto the image's window grid
            data = np.full((int(window.height), int(window.width)), LABEL_NODATA, dtype=np.int64)
            reproject(rasterio.band(self.src, 1), data,
                      dst_transform=rasterio.windows.transform(window, rasterio.Affine(*self.info.transform)),
                      dst_crs=self.info.crs_wkt, dst_nodata=LABEL_NODATA, resampling=Resampling.nearest)
        data = data.astype(np.int64)
        if self.src.nodata is not None:
            data[data == self.src.nodata] = LABEL_NODATA
        if data.max(initial=0) > LABEL_NODATA or data.min(initial=0) < 0:
            raise RasterError(f"Label raster '{Path(self.path).name}' holds values outside 0..254; class values must "
                              "be small non-negative integers.")
        return data

    def class_table(self, values: list[int]) -> list[dict]:
        try:
            colormap = self.src.colormap(1)
        except ValueError:
            colormap = {}
        return [{"value": v, "name": f"class {v}",
                 "color": "#%02x%02x%02x" % colormap[v][:3] if v in colormap else PALETTE[v % len(PALETTE)]}
                for v in values]


class _VectorLabels:
    """Polygons burnt onto the image grid; pixels outside every polygon are class 0 ("background"), or
    unlabelled with `unlabelled_outside` (polygons drawn over part of a scene)."""

    def __init__(self, params: TrainingSetParams, info):
        if not params.class_field:
            raise RasterError("Polygons need a class field: choose the attribute that holds the class.")
        self.info, self.fill = info, LABEL_NODATA if params.unlabelled_outside else 0
        name = Path(params.labels_path).name
        with fiona.open(params.labels_path, layer=params.labels_layer or None) as src:
            if params.class_field not in src.schema["properties"]:
                raise RasterError(f"Layer '{name}' has no field '{params.class_field}' "
                                  f"(fields: {', '.join(src.schema['properties'])}).")
            crs = src.crs_wkt or None
            features = [(f["geometry"], f["properties"][params.class_field]) for f in src if f["geometry"]]
        features = [(g, v) for g, v in features if v is not None and str(v).strip() != ""]
        if not features:
            raise RasterError(f"Layer '{name}' has no polygon with a value in its class field "
                              f"'{params.class_field}': fill in the class of each polygon.")
        raw = sorted({v for _, v in features}, key=str)
        numeric = all(isinstance(v, int) for v in raw)
        lowest = 0 if params.unlabelled_outside else 1
        if numeric:
            self.names = {int(v): str(v) for v in raw}
            if min(raw) < lowest or max(raw) >= LABEL_NODATA:
                raise RasterError(f"Class values in '{params.class_field}' must be {lowest}..254"
                                  + (" (0 is the background)." if lowest else "."))
            to_value = int
        else:
            known = {k.strip().lower(): v for k, v in (params.class_values or {}).items()}
            values, free = {}, max(known.values(), default=0) + 1
            for v in raw:
                if str(v).strip().lower() in known:
                    values[str(v)] = known[str(v).strip().lower()]
                else:
                    values[str(v)], free = free, free + 1
            if free > LABEL_NODATA:
                raise RasterError(f"'{params.class_field}' holds more class names than class values 1..254.")
            self.names = {value: text for text, value in values.items()}
            to_value = lambda v: values[str(v)]   # noqa: E731
        geometries = [shape(g) for g, _ in features]
        if crs and info.crs_wkt:
            geometries = [reproject_geometry(g, crs, info.crs_wkt) for g in geometries]
        self.notes = [] if not (crs and info.crs_wkt) or rasterio.crs.CRS.from_wkt(crs) == \
            rasterio.crs.CRS.from_wkt(info.crs_wkt) else [
                f"Polygons '{name}' are in another coordinate reference system than image '{Path(info.path).name}':"
                " reprojected onto the image's grid."]
        extent = [g.bounds for g in geometries if not g.is_empty]
        if extent:
            _check_overlap(name, (min(b[0] for b in extent), min(b[1] for b in extent), max(b[2] for b in extent),
                                  max(b[3] for b in extent)), None, info)
        self.shapes = [(mapping(g), to_value(v)) for g, (_, v) in zip(geometries, features)]

    def read(self, window: Window) -> np.ndarray:
        transform = rasterio.windows.transform(window, rasterio.Affine(*self.info.transform))
        shape = (int(window.height), int(window.width))
        return rasterio.features.rasterize(self.shapes, out_shape=shape, transform=transform, fill=self.fill,
                                           dtype="int32").astype(np.int64)

    def class_table(self, values: list[int]) -> list[dict]:
        names = {0: "background", **self.names} if self.fill == 0 else dict(self.names)
        return [{"value": v, "name": names.get(v, f"class {v}"), "color": PALETTE[v % len(PALETTE)]}
                for v in sorted((set(values) | set(self.names)) - {LABEL_NODATA})]


# --- change detection: two dates and a change layer ------------------------------------------------

@dataclass
class ChangeTrainingSetParams:
    image_a_path: str
    image_b_path: str             # resampled onto image A's grid when the grids differ
    changes_path: str             # change raster (0/1, or 0/255: >= 128 is change), or polygons (all change)
    output_dir: str
    patch_size: int = 256
    stride: int = 256
    changes_layer: str = ""       # polygons only: layer inside a multi-layer file
    max_nodata_fraction: float = 0.0


def build_change_training_set(params: ChangeTrainingSetParams, progress: Progress | None = None
                              ) -> TrainingSetResult:
    """Aligned A/, B/ and label/ patches (the change folder layout), written like build_training_set."""
    import contextlib

    from core.data.change import CHANGE_CLASSES, CHANGE_FOLDERS, LABEL_COLORMAP, MASK_IGNORE
    progress = progress or Progress()
    info, info_b = raster_info(params.image_a_path), raster_info(params.image_b_path)
    name_a, name_b = Path(params.image_a_path).name, Path(params.image_b_path).name
    if info.count != info_b.count:
        raise RasterError(f"Layer '{name_a}' has {info.count} band(s) but '{name_b}' has {info_b.count}: both dates "
                          "need the same bands.")
    same_grid = co_registered(info, info_b, name_a, name_b)
    labels = _ChangeLabels(params, info)
    for note in labels.notes:
        progress.warning(note)
    bands = list(range(1, info.count + 1))
    positions = _patch_positions(info, params.patch_size, params.stride)
    written = skipped = 0
    with contextlib.ExitStack() as stack, staged_dir(params.output_dir) as out:
        src_a = stack.enter_context(open_raster(params.image_a_path))
        src_b = stack.enter_context(open_raster(params.image_b_path))
        if not same_grid:
            src_b = stack.enter_context(resampled_onto(src_b, src_a))
            progress.warning(f"Layer '{name_b}' is on another grid: resampled (bilinear) onto the grid of '{name_a}'.")
        for folder in CHANGE_FOLDERS:
            (out / folder).mkdir()
        for i, (row, col) in enumerate(positions):
            window = Window(col, row, min(params.patch_size, info.width), min(params.patch_size, info.height))
            _, valid_a = read_window(src_a, window, bands)
            _, valid_b = read_window(src_b, window, bands)
            mask = labels.read(window)
            mask[~(valid_a & valid_b)] = MASK_IGNORE
            if (mask == MASK_IGNORE).mean() > params.max_nodata_fraction:
                skipped += 1
            else:
                name = f"{Path(params.image_a_path).stem}_r{row:06d}_c{col:06d}.tif"
                common = dict(crs_wkt=info.crs_wkt, transform=tuple(src_a.window_transform(window))[:6])
                write_geotiff(out / "A" / name, src_a.read(window=window), nodata=info.nodata,
                              band_names=info.band_names, **common)
                b_patch = src_b.read(bands, window=window).astype(info.dtype)
                write_geotiff(out / "B" / name, b_patch, nodata=info_b.nodata,
                              band_names=info.band_names, **common)
                write_geotiff(out / "label" / name, mask.astype(np.uint8), nodata=MASK_IGNORE,
                              colormap=LABEL_COLORMAP, band_names=["change"], **common)
                written += 1
            progress.step(i + 1, len(positions))
    progress.info(f"{written} change triplets written to {params.output_dir}, {skipped} skipped for nodata.")
    return TrainingSetResult(str(params.output_dir), written, skipped, CHANGE_CLASSES)


def _patch_positions(info, size: int, stride: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(0, max(info.height - size, 0) + 1, stride)
            for c in range(0, max(info.width - size, 0) + 1, stride)]


class _ChangeLabels:
    """0 / 1 / 255 (ignore) change masks on image A's grid, from a change raster or change polygons."""

    def __init__(self, params: ChangeTrainingSetParams, info):
        from core.data.change import mask_is_zero_one
        self.info, self.path = info, params.changes_path
        self.polygons = Path(self.path).suffix.lower() in VECTOR_SUFFIXES
        if self.polygons:
            with fiona.open(self.path, layer=params.changes_layer or None) as src:
                crs = src.crs_wkt or None
                geometries = [shape(f["geometry"]) for f in src if f["geometry"]]
            if crs and info.crs_wkt:
                geometries = [reproject_geometry(g, crs, info.crs_wkt) for g in geometries]
            extent = [g.bounds for g in geometries if not g.is_empty]
            if extent:
                _check_overlap(Path(self.path).name, (min(b[0] for b in extent), min(b[1] for b in extent),
                                                      max(b[2] for b in extent), max(b[3] for b in extent)), None, info)
            self.shapes = [(mapping(g), 1) for g in geometries]
            self.notes = []
            return
        self.src = open_raster(self.path)
        self.notes = _check_overlap(Path(self.path).name, tuple(self.src.bounds),
                                    self.src.crs.to_wkt() if self.src.crs else None, info)
        self.same_grid = (self.src.width, self.src.height) == (info.width, info.height) and \
            np.allclose(tuple(self.src.transform)[:6], info.transform)
        self.zero_one = mask_is_zero_one(self.src)

    def read(self, window: Window) -> np.ndarray:
        from core.data.change import to_change
        transform = rasterio.windows.transform(window, rasterio.Affine(*self.info.transform))
        shape_ = (int(window.height), int(window.width))
        if self.polygons:
            if not self.shapes:
                return np.zeros(shape_, dtype=np.int64)
            return rasterio.features.rasterize(self.shapes, out_shape=shape_, transform=transform, fill=0,
                                               dtype="uint8").astype(np.int64)
        if self.same_grid:
            values, valid = read_window(self.src, window, [1])
            return to_change(values[0], valid, self.zero_one)
        data = np.full(shape_, -1, dtype=np.float32)      # -1: outside the change raster
        reproject(rasterio.band(self.src, 1), data, dst_transform=transform, dst_crs=self.info.crs_wkt,
                  dst_nodata=-1, resampling=Resampling.nearest)
        valid = (data != -1) & ((data != self.src.nodata) if self.src.nodata is not None else True)
        return to_change(data, valid, self.zero_one)
