"""Class raster -> polygons in a GeoPackage, with class names and areas.

Written with fiona + shapely rather than geopandas: geopandas needs pyproj, whose wheel
bundles a second PROJ that crashes QGIS (and qgis_process) at exit when both are loaded.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import fiona
import numpy as np
import rasterio.features
import rasterio.warp
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.ops import transform, unary_union

from core.checkpoint import ClassInfo
from core.progress import Progress
from core.raster import atomic_path, open_raster

EQUAL_AREA_CRS = "EPSG:6933"  # WGS 84 / NSIDC EASE-Grid 2.0 Global, for areas of geographic layers
BLOCK = 2048
PROPERTIES = {"class_id": "int", "class_name": "str", "area_m2": "float", "area_km2": "float"}


def polygonize(class_raster: str | os.PathLike, output: str | os.PathLike, classes: Sequence[ClassInfo],
               skip_values: Sequence[int] = (), progress: Progress | None = None,
               only_values: Sequence[int] | None = None, mean_of: dict[str, str | os.PathLike] | None = None) -> Path:
    """Polygonise a class raster block by block (memory bounded by the block and the
    polygons themselves) and write class_id, class_name, area_m2, area_km2.

    only_values: polygonise these classes only (e.g. oil slicks, not the sea around them).
    mean_of: {field name: single-band raster on the same grid}: each polygon also gets the mean
    of that raster over its pixels (e.g. the mean oil probability of a slick).
    """
    progress = progress or Progress()
    mean_of = dict(mean_of or {})
    names = {c.value: c.name for c in classes}
    polygons, edge = [], defaultdict(list)
    with open_raster(class_raster) as src:
        nodata = src.nodata
        crs = src.crs
        blocks = [(r, c) for r in range(0, src.height, BLOCK) for c in range(0, src.width, BLOCK)]
        for i, (r, c) in enumerate(blocks):
            window = Window(c, r, min(BLOCK, src.width - c), min(BLOCK, src.height - r))
            values = src.read(1, window=window)
            keep = np.ones(values.shape, dtype=bool)
            if nodata is not None:
                keep &= values != nodata
            for v in skip_values:
                keep &= values != v
            if only_values is not None:
                keep &= np.isin(values, list(only_values))
            for geom, value in rasterio.features.shapes(values, mask=keep, transform=src.window_transform(window)):
                poly = shape(geom)
                if _touches_inner_border(poly, window, src):
                    edge[int(value)].append(poly)
                else:
                    polygons.append((int(value), poly))
            progress.step(i + 1, len(blocks) + 1)
    for value, parts in edge.items():
        merged = unary_union(parts)
        polygons.extend((value, p) for p in getattr(merged, "geoms", [merged]))

    area_of = _area_function(crs, progress)
    means = {name: _polygon_means(path, [poly for _, poly in polygons]) for name, path in mean_of.items()}
    schema = {"geometry": "Polygon", "properties": dict(PROPERTIES, **{name: "float" for name in mean_of})}
    with atomic_path(output) as tmp:
        with fiona.open(tmp, "w", driver="GPKG", schema=schema, crs=crs.to_wkt() if crs else None,
                        layer=Path(output).stem) as dst:
            dst.writerecords(
                {"geometry": mapping(poly),
                 "properties": {"class_id": value, "class_name": names.get(value, str(value)),
                                "area_m2": round(area, 2), "area_km2": round(area / 1e6, 6),
                                **{name: values[i] for name, values in means.items()}}}
                for i, (value, poly) in enumerate(polygons) for area in [area_of(poly)])
    progress.set_fraction(1.0)
    return Path(output)


def _polygon_means(raster: str | os.PathLike, polygons: list) -> list[float | None]:
    """Mean of a single-band raster over each polygon's pixels, reading only the polygon's window."""
    means = []
    with open_raster(raster) as src:
        for poly in polygons:
            window = rasterio.windows.from_bounds(*poly.bounds, transform=src.transform)
            window = window.round_offsets().round_lengths().intersection(
                Window(0, 0, src.width, src.height))
            data = src.read(1, window=window, masked=True)
            inside = rasterio.features.geometry_mask([mapping(poly)], data.shape, src.window_transform(window),
                                                     invert=True)
            values = data[inside & ~np.ma.getmaskarray(data)]
            means.append(round(float(values.mean()), 4) if values.size else None)
    return means


def _area_function(crs, progress: Progress):
    """Area in m²: metres from a projected CRS, an equal-area projection for geographic ones."""
    if crs is None:
        progress.warning("Class raster has no CRS: areas are in squared pixel-grid units, not m².")
        return lambda poly: poly.area
    if crs.is_geographic:
        progress.info(f"Layer CRS is geographic: polygon areas computed in {EQUAL_AREA_CRS} (equal-area).")
        return lambda poly: reproject_geometry(poly, crs, EQUAL_AREA_CRS).area
    factor = crs.linear_units_factor[1]
    return lambda poly: poly.area * factor ** 2


def reproject_geometry(geom, source_crs, target_crs):
    """A shapely geometry in another CRS, by transforming its coordinate arrays.

    Not rasterio's transform_geom: its OGR geometry builder fails ("Input is not a valid geometry
    object") inside QGIS and qgis_process, where QGIS's own GDAL is loaded before rasterio's.
    """
    source, target = CRS.from_user_input(source_crs), CRS.from_user_input(target_crs)
    if source == target:
        return geom
    return transform(lambda xs, ys, zs=None: rasterio.warp.transform(source, target, list(xs), list(ys)), geom)


def _touches_inner_border(poly, window: Window, src) -> bool:
    """True when a polygon reaches a block edge that is not the raster's own edge."""
    minx, miny, maxx, maxy = poly.bounds
    t = src.window_transform(window)
    left, top = t.c, t.f
    right, bottom = left + window.width * t.a, top + window.height * t.e
    tol = abs(t.a) / 100

    def near(a, b):
        return abs(a - b) < tol

    return ((window.col_off > 0 and near(minx, left))
            or (window.col_off + window.width < src.width and near(maxx, right))
            or (window.row_off > 0 and near(maxy, top))
            or (window.row_off + window.height < src.height and near(miny, bottom)))


def read_polygons_in_crs(path: str | os.PathLike, crs_wkt: str | None, layer: str | None = None,
                         what: str = "Polygon layer") -> list:
    """The polygons of a vector file (any OGR format; `layer` for multi-layer files) as shapely
    geometries in `crs_wkt` (the raster's CRS). Points and lines are rejected with a message."""
    try:
        src = fiona.open(path, layer=layer) if layer else fiona.open(path)
    except Exception as exc:   # fiona raises several driver-specific errors
        raise ValueError(f"{what} '{path}' cannot be read: {exc}") from exc
    with src:
        source_crs = src.crs_wkt or None
        geometries = []
        for feature in src:
            if feature["geometry"] is None:
                continue
            geom = shape(feature["geometry"])
            if geom.geom_type not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"{what} '{path}' has {geom.geom_type} features; polygons are needed.")
            if source_crs and crs_wkt:
                geom = reproject_geometry(geom, source_crs, crs_wkt)
            geometries.append(geom)
    return geometries


def polygon_totals(path: str | os.PathLike) -> tuple[int, float]:
    """Number of polygons and their summed `area_km2` in a file written by polygonize."""
    with fiona.open(path) as src:
        areas = [f["properties"]["area_km2"] for f in src]
    return len(areas), float(sum(areas))
