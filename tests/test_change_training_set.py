"""build_change_training_set: two date layers + a change raster or change polygons -> A/, B/, label/ patches."""
from __future__ import annotations

import fiona
import numpy as np
import pytest
import rasterio
from shapely.geometry import box, mapping

from core.data.change import list_change_triplets, read_change_mask
from core.data.training_set import ChangeTrainingSetParams, build_change_training_set
from core.raster import RasterError, read_array, write_geotiff
from tests.conftest import SHARED_DATA, UTM33

DSIFN = SHARED_DATA / "cd_dsifn"
ORIGIN = (500_000.0, 5_000_000.0)


def _georeferenced(src, dst, resolution=2.0):
    data, _ = read_array(src)
    return write_geotiff(dst, data.astype(np.uint8), crs_wkt=UTM33,
                         transform=(resolution, 0.0, ORIGIN[0], 0.0, -resolution, ORIGIN[1]))


@pytest.mark.skipif(not DSIFN.is_dir(), reason="../shared/data is not available")
def test_real_pair_and_0_255_mask_are_cut_into_aligned_patches(tmp_path):
    a = _georeferenced(DSIFN / "A" / "0_2.png", tmp_path / "a.tif")
    b = _georeferenced(DSIFN / "B" / "0_2.png", tmp_path / "b.tif")
    label = _georeferenced(DSIFN / "label" / "0_2.png", tmp_path / "label.tif")
    result = build_change_training_set(ChangeTrainingSetParams(str(a), str(b), str(label), str(tmp_path / "set"),
                                                               patch_size=128, stride=128))
    assert result.patches == 4 and result.skipped == 0
    triplets = list_change_triplets(result.output_dir)
    truth = read_change_mask(label)
    source_a, _ = read_array(a)
    for pa, pb, pl in triplets:
        with rasterio.open(pa) as patch:
            r0 = int(round((ORIGIN[1] - patch.transform.f) / 2.0))
            c0 = int(round((patch.transform.c - ORIGIN[0]) / 2.0))
            assert patch.crs.to_wkt() == rasterio.crs.CRS.from_wkt(UTM33).to_wkt()
            assert np.array_equal(patch.read(), source_a[:, r0:r0 + 128, c0:c0 + 128])     # pixel-exact alignment
        assert np.array_equal(read_change_mask(pl), truth[r0:r0 + 128, c0:c0 + 128])       # 0/255 -> 0/1
    assert 0 < truth.mean() < 1


def test_change_polygons_and_b_on_another_grid(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (3, 64, 64), dtype=np.uint8)
    a = write_geotiff(tmp_path / "a.tif", image, crs_wkt=UTM33, transform=(2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1]))
    b = write_geotiff(tmp_path / "b.tif", image[:, ::2, ::2], crs_wkt=UTM33,
                      transform=(4.0, 0.0, ORIGIN[0], 0.0, -4.0, ORIGIN[1]))
    polygons = tmp_path / "changes.gpkg"
    building = box(ORIGIN[0] + 20, ORIGIN[1] - 40, ORIGIN[0] + 40, ORIGIN[1] - 20)   # pixels 10..20 of a
    schema = {"geometry": "Polygon", "properties": {"kind": "str"}}
    with fiona.open(polygons, "w", driver="GPKG", crs="EPSG:32633", schema=schema) as dst:
        dst.write({"geometry": mapping(building), "properties": {"kind": "new building"}})
    messages = []

    class Log:
        def warning(self, message):
            messages.append(message)

        def info(self, message):
            pass

        def step(self, done, total):
            pass

    result = build_change_training_set(ChangeTrainingSetParams(str(a), str(b), str(polygons), str(tmp_path / "set"),
                                                               patch_size=64, stride=64), Log())
    assert result.patches == 1 and any("resampled" in m for m in messages)
    (_, pb, pl), = list_change_triplets(result.output_dir)
    mask = read_change_mask(pl)
    assert mask[10:20, 10:20].all() and mask.sum() == 100
    with rasterio.open(pb) as patch:
        assert patch.shape == (64, 64) and patch.count == 3


def test_band_mismatch_is_explained_and_writes_nothing(tmp_path):
    transform = (2.0, 0.0, ORIGIN[0], 0.0, -2.0, ORIGIN[1])
    a = write_geotiff(tmp_path / "a.tif", np.ones((3, 32, 32), np.uint8), crs_wkt=UTM33, transform=transform)
    b = write_geotiff(tmp_path / "b.tif", np.ones((4, 32, 32), np.uint8), crs_wkt=UTM33, transform=transform)
    label = write_geotiff(tmp_path / "l.tif", np.zeros((32, 32), np.uint8), crs_wkt=UTM33, transform=transform)
    with pytest.raises(RasterError, match="'a.tif' has 3 band.* 'b.tif' has 4"):
        build_change_training_set(ChangeTrainingSetParams(str(a), str(b), str(label), str(tmp_path / "set")))
    assert not (tmp_path / "set").exists()
