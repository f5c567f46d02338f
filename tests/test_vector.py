import geopandas as gpd
import numpy as np
import pytest

import core.vector
from core.checkpoint import ClassInfo
from core.vector import polygonize
from tests.conftest import files_in, write_test_raster

CLASSES = [ClassInfo(0, "soil", "#aa8866"), ClassInfo(1, "water", "#0000ff"), ClassInfo(2, "roof", "#ff0000")]


def test_polygons_carry_class_and_area(tmp_path):
    grid = np.zeros((40, 50), np.uint8)
    grid[5:15, 5:25] = 1          # 10 x 20 px at 0.5 m = 50 m²
    grid[30:34, 40:44] = 2        # 4 x 4 px = 4 m²
    grid[0, :] = 255              # nodata row
    raster = write_test_raster(tmp_path / "c.tif", grid, nodata=255)
    out = polygonize(raster, tmp_path / "p.gpkg", CLASSES, skip_values=[0])
    frame = gpd.read_file(out)
    assert sorted(frame.class_name) == ["roof", "water"]
    areas = dict(zip(frame.class_name, frame.area_m2))
    assert areas == {"water": pytest.approx(50.0), "roof": pytest.approx(4.0)}
    assert frame.crs.to_epsg() == 32633
    assert frame.area_km2[frame.class_name == "water"].iloc[0] == pytest.approx(50e-6)
    assert files_in(tmp_path) == {"c.tif", "p.gpkg"}


def test_polygons_crossing_blocks_are_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(core.vector, "BLOCK", 16)
    grid = np.zeros((64, 64), np.uint8)
    grid[10:50, 10:50] = 1      # spans 3 x 3 blocks of 16 px
    grid[20:30, 20:30] = 2      # a hole in the water
    raster = write_test_raster(tmp_path / "c.tif", grid)
    frame = gpd.read_file(polygonize(raster, tmp_path / "p.gpkg", CLASSES))
    water = frame[frame.class_id == 1]
    assert len(water) == 1 and water.area_m2.iloc[0] == pytest.approx((40 * 40 - 100) * 0.25)
    assert len(frame[frame.class_id == 0]) == 1


def test_geographic_crs_areas_in_square_metres(tmp_path):
    grid = np.ones((10, 10), np.uint8)
    wgs84 = "EPSG:4326"
    import rasterio
    raster = write_test_raster(tmp_path / "g.tif", grid, crs=rasterio.crs.CRS.from_string(wgs84).to_wkt(),
                               transform=(0.001, 0, 10.0, 0, -0.001, 0.005))
    frame = gpd.read_file(polygonize(raster, tmp_path / "p.gpkg", CLASSES))
    # 0.01 deg x 0.01 deg at the equator ~ 1.113 km x 1.106 km
    assert frame.area_m2.iloc[0] == pytest.approx(1.23e6, rel=0.02)
