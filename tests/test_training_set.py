"""build_training_set: aligned image/mask patches in the folder format, from a class raster or polygons."""
import json

import fiona
import numpy as np
import pytest
import rasterio
from shapely.geometry import box, mapping

from core.data.folder import FolderDataset
from core.data.training_set import TrainingSetParams, build_training_set
from core.progress import Cancelled, Progress
from core.raster import RasterError, read_array, write_geotiff
from tests.conftest import files_in, shared_data


def classes_of(image: np.ndarray) -> np.ndarray:
    """A label map computed from the pixels themselves, so alignment can be checked exactly."""
    return (image[0] > 80).astype(np.uint8) + (image[2] > 120).astype(np.uint8) * 2


def test_class_raster_patches_stay_pixel_aligned_on_a_real_raster(tmp_path):
    source = shared_data("raster_georef", "RGB.byte.tif")   # Landsat RGB, 300 m, EPSG:32618, nodata 0
    image, valid = read_array(source)
    labels = np.where(valid, classes_of(image), 255).astype(np.uint8)
    with rasterio.open(source) as src:
        label_path = write_geotiff(tmp_path / "labels.tif", labels, crs_wkt=src.crs.to_wkt(),
                                   transform=tuple(src.transform)[:6], nodata=255)
    result = build_training_set(TrainingSetParams(str(source), str(label_path), str(tmp_path / "ds"),
                                                  patch_size=128, stride=96, max_nodata_fraction=0.2))
    data = FolderDataset.open(tmp_path / "ds")
    assert result.patches == len(data.pairs) > 5 and result.skipped > 0
    assert {c["value"] for c in result.classes} <= {0, 1, 2, 3}
    for image_patch, mask_patch in data.pairs:
        pixels, ok = read_array(image_patch)
        mask, _ = read_array(mask_patch)
        np.testing.assert_array_equal(mask[0][ok], classes_of(pixels)[ok])
        with rasterio.open(image_patch) as a, rasterio.open(mask_patch) as b, rasterio.open(source) as src:
            assert a.transform == b.transform and a.crs == src.crs and a.dtypes[0] == "uint8"
            col, row = ~src.transform * (a.transform.c, a.transform.f)
            assert (col, row) == pytest.approx((round(col), round(row)), abs=1e-6)   # on the source grid


def test_polygons_with_a_class_field_are_burnt_exactly(tmp_path):
    transform = (0.5, 0, 500000.0, 0, -0.5, 5600000.0)
    crs = rasterio.crs.CRS.from_epsg(32633)
    image = write_geotiff(tmp_path / "img.tif", np.full((3, 64, 64), 100, np.uint8), crs_wkt=crs.to_wkt(),
                          transform=transform)
    schema = {"geometry": "Polygon", "properties": {"kind": "str"}}
    with fiona.open(tmp_path / "p.gpkg", "w", driver="GPKG", schema=schema, crs=crs.to_wkt()) as dst:
        # pixels rows 10..19, cols 4..11 -> x 500002..500006, y 5599995..5599990
        dst.write({"geometry": mapping(box(500002.0, 5599990.0, 500006.0, 5599995.0)), "properties": {"kind": "roof"}})
        dst.write({"geometry": mapping(box(500020.0, 5599970.0, 500030.0, 5599980.0)), "properties": {"kind": "pool"}})
    result = build_training_set(TrainingSetParams(str(image), str(tmp_path / "p.gpkg"), str(tmp_path / "ds"),
                                                  patch_size=64, stride=64, class_field="kind"))
    names = {c["value"]: c["name"] for c in result.classes}
    assert names == {0: "background", 1: "pool", 2: "roof"}
    mask, _ = read_array(tmp_path / "ds" / "masks" / "img_r000000_c000000.tif")
    expected = np.zeros((64, 64))
    expected[10:20, 4:12] = 2
    expected[40:60, 40:60] = 1
    np.testing.assert_array_equal(mask[0], expected)
    assert json.loads((tmp_path / "ds" / "classes.json").read_text())["bands"] == ["band 1", "band 2", "band 3"]


def test_bad_inputs_and_cancel_leave_nothing(tmp_path):
    image = write_geotiff(tmp_path / "img.tif", np.ones((3, 64, 64), np.uint8), crs_wkt=None,
                          transform=(1, 0, 0, 0, -1, 64))
    two_band = write_geotiff(tmp_path / "lab.tif", np.ones((2, 64, 64), np.uint8), crs_wkt=None,
                             transform=(1, 0, 0, 0, -1, 64))
    with pytest.raises(RasterError, match="has 2 bands; expected one band"):
        build_training_set(TrainingSetParams(str(image), str(two_band), str(tmp_path / "a")))
    labels = write_geotiff(tmp_path / "one.tif", np.ones((64, 64), np.uint8), crs_wkt=None,
                           transform=(1, 0, 0, 0, -1, 64))

    class CancelAtOnce(Progress):
        def is_canceled(self):
            return True

    with pytest.raises(Cancelled):
        build_training_set(TrainingSetParams(str(image), str(labels), str(tmp_path / "b"), patch_size=16,
                                             stride=16), CancelAtOnce())
    assert files_in(tmp_path) == {"img.tif", "lab.tif", "one.tif"}
