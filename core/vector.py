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
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.ops import unary_union

from core.checkpoint import ClassInfo
from core.progress import Progress
from core.raster import atomic_path, open_raster

EQUAL_AREA_CRS = "EPSG:6933"  # WGS 84 / NSIDC EASE-Grid 2.0 Global, for areas of geographic layers
BLOCK = 2048
SCHEMA = {"geometry": "Polygon",
          "properties": {"class_id": "int", "class_name": "str", "area_m2": "float", "area_km2": "float"}}


def polygonize(class_raster: str | os.PathLike, output: str | os.PathLike, classes: Sequence[ClassInfo],
               skip_values: Sequence[int] = (), progress: Progress | None = None) -> Path:
    """Polygonise a class raster block by block (memory bounded by the block and the
    polygons themselves) and write class_id, class_name, area_m2, area_km2."""
    progress = progress or Progress()
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
    with atomic_path(output) as tmp:
        with fiona.open(tmp, "w", driver="GPKG", schema=SCHEMA, crs=crs.to_wkt() if crs else None,
                        layer=Path(output).stem) as dst:
            dst.writerecords(
                {"geometry": mapping(poly),
                 "properties": {"class_id": value, "class_name": names.get(value, str(value)),
                                "area_m2": round(area, 2), "area_km2": round(area / 1e6, 6)}}
                for value, poly in polygons for area in [area_of(poly)])
    progress.set_fraction(1.0)
    return Path(output)


def _area_function(crs, progress: Progress):
    """Area in m²: metres from a projected CRS, an equal-area projection for geographic ones."""
    if crs is None:
        progress.warning("Class raster has no CRS: areas are in squared pixel-grid units, not m².")
        return lambda poly: poly.area
    if crs.is_geographic:
        progress.info(f"Layer CRS is geographic: polygon areas computed in {EQUAL_AREA_CRS} (equal-area).")
        return lambda poly: shape(transform_geom(crs, EQUAL_AREA_CRS, mapping(poly))).area
    factor = crs.linear_units_factor[1]
    return lambda poly: poly.area * factor ** 2


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
