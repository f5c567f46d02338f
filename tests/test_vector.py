import numpy as np
import pytest
import rasterio

import core.vector
from core.checkpoint import ClassInfo
from core.vector import polygonize
from tests.conftest import files_in, read_polygons, write_test_raster

CLASSES = [ClassInfo(0, "soil", "#aa8866"), ClassInfo(1, "water", "#0000ff"), ClassInfo(2, "roof", "#ff0000")]


def test_polygons_carry_class_and_area(tmp_path):
    grid = np.zeros((40, 50), np.uint8)
    grid[5:15, 5:25] = 1          # 10 x 20 px at 0.5 m = 50 m²
    grid[30:34, 40:44] = 2        # 4 x 4 px = 4 m²
    grid[0, :] = 255              # nodata row
    raster = write_test_raster(tmp_path / "c.tif", grid, nodata=255)
    rows, crs = read_polygons(polygonize(raster, tmp_path / "p.gpkg", CLASSES, skip_values=[0]))
    assert sorted(r["class_name"] for r in rows) == ["roof", "water"]
    areas = {r["class_name"]: r["area_m2"] for r in rows}
    assert areas == {"water": pytest.approx(50.0), "roof": pytest.approx(4.0)}
    assert rasterio.crs.CRS.from_wkt(crs.to_wkt()).to_epsg() == 32633
    assert [r["area_km2"] for r in rows if r["class_id"] == 1] == [pytest.approx(50e-6)]
    assert files_in(tmp_path) == {"c.tif", "p.gpkg"}


def test_polygons_crossing_blocks_are_merged(tmp_path, monkeypatch):
    monkeypatch.setattr(core.vector, "BLOCK", 16)
    grid = np.zeros((64, 64), np.uint8)
    grid[10:50, 10:50] = 1      # spans 3 x 3 blocks of 16 px
    grid[20:30, 20:30] = 2      # a hole in the water
    raster = write_test_raster(tmp_path / "c.tif", grid)
    rows, _ = read_polygons(polygonize(raster, tmp_path / "p.gpkg", CLASSES))
    water = [r for r in rows if r["class_id"] == 1]
    assert len(water) == 1 and water[0]["area_m2"] == pytest.approx((40 * 40 - 100) * 0.25)
    assert len(water[0]["geometry"].interiors) == 1
    assert len([r for r in rows if r["class_id"] == 0]) == 1


def test_geographic_crs_areas_in_square_metres(tmp_path):
    grid = np.ones((10, 10), np.uint8)
    wgs84 = rasterio.crs.CRS.from_epsg(4326).to_wkt()
    raster = write_test_raster(tmp_path / "g.tif", grid, crs=wgs84, transform=(0.001, 0, 10.0, 0, -0.001, 0.005))
    rows, _ = read_polygons(polygonize(raster, tmp_path / "p.gpkg", CLASSES))
    # 0.01 deg x 0.01 deg at the equator ~ 1.113 km x 1.106 km
    assert rows[0]["area_m2"] == pytest.approx(1.23e6, rel=0.02)


def test_only_selected_classes_with_their_mean_probability(tmp_path):
    grid = np.zeros((40, 50), np.uint8)
    grid[5:15, 5:25] = 1          # one "water" slick
    grid[30:34, 40:44] = 2
    probability = np.full((40, 50), 0.1, np.float32)
    probability[5:15, 5:15] = 0.6
    probability[5:15, 15:25] = 1.0   # mean over the slick: 0.8
    raster = write_test_raster(tmp_path / "c.tif", grid)
    prob = write_test_raster(tmp_path / "p.tif", probability)
    rows, _ = read_polygons(polygonize(raster, tmp_path / "s.gpkg", CLASSES, only_values=[1],
                                       mean_of={"mean_prob": prob}))
    assert [r["class_name"] for r in rows] == ["water"]
    assert rows[0]["mean_prob"] == pytest.approx(0.8, abs=1e-4)
    assert rows[0]["area_m2"] == pytest.approx(50.0)
