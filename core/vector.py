"""Class raster -> polygons in a GeoPackage, with class names and areas."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import geopandas as gpd
import numpy as np
import rasterio.features
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.ops import unary_union

from core.checkpoint import ClassInfo
from core.progress import Progress
from core.raster import atomic_path, open_raster

EQUAL_AREA_CRS = "EPSG:6933"  # WGS 84 / NSIDC EASE-Grid 2.0 Global, for areas of geographic layers
BLOCK = 2048


def polygonize(class_raster: str | os.PathLike, output: str | os.PathLike, classes: Sequence[ClassInfo],
               skip_values: Sequence[int] = (), progress: Progress | None = None) -> Path:
    """Polygonise a class raster block by block (memory bounded by the block and the
    polygons themselves) and write class_id, class_name, area_m2, area_km2."""
    progress = progress or Progress()
    names = {c.value: c.name for c in classes}
    inner, edge = [], defaultdict(list)
    with open_raster(class_raster) as src:
        nodata = src.nodata
        blocks = [(r, c) for r in range(0, src.height, BLOCK) for c in range(0, src.width, BLOCK)]
        for i, (r, c) in enumerate(blocks):
            window = Window(c, r, min(BLOCK, src.width - c), min(BLOCK, src.height - r))
            values = src.read(1, window=window)
            keep = np.ones(values.shape, dtype=bool)
            if nodata is not None:
                keep &= values != nodata
            for v in skip_values:
                keep &= values != v
            transform = src.window_transform(window)
            for geom, value in rasterio.features.shapes(values, mask=keep, transform=transform):
                poly = shape(geom)
                if _touches_inner_border(poly, window, src):
                    edge[int(value)].append(poly)
                else:
                    inner.append((int(value), poly))
            progress.step(i + 1, len(blocks) + 1)
        crs = src.crs
    for value, polys in edge.items():
        merged = unary_union(polys)
        parts = getattr(merged, "geoms", [merged])
        inner.extend((value, p) for p in parts)
    frame = gpd.GeoDataFrame(
        {"class_id": [v for v, _ in inner], "class_name": [names.get(v, str(v)) for v, _ in inner]},
        geometry=[p for _, p in inner], crs=crs)
    if crs is not None and crs.is_geographic:
        progress.info(f"Layer CRS is geographic: polygon areas computed in {EQUAL_AREA_CRS} (equal-area).")
        area = frame.geometry.to_crs(EQUAL_AREA_CRS).area
    else:
        if crs is None:
            progress.warning("Class raster has no CRS: areas are in squared pixel-grid units, not m².")
        factor = crs.linear_units_factor[1] if crs is not None else 1.0
        area = frame.geometry.area * factor ** 2
    frame["area_m2"] = area.round(2)
    frame["area_km2"] = (area / 1e6).round(6)
    with atomic_path(output) as tmp:
        frame.to_file(tmp, driver="GPKG", layer=Path(output).stem)
    progress.set_fraction(1.0)
    return Path(output)


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
