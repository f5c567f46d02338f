import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from core.raster import (GeoTiffWriter, RasterError, atomic_path, check_bands, raster_info, read_array,
                         read_window, write_geotiff)
from tests.conftest import UTM33, files_in, write_test_raster

TRANSFORM = (0.5, 0.0, 500000.0, 0.0, -0.5, 5600000.0)


@pytest.mark.parametrize("dtype,nodata", [("uint8", 0), ("uint16", 65535), ("int16", -9999),
                                          ("float32", -1.0), ("float64", None)])
def test_round_trip_keeps_crs_transform_nodata_dtype(tmp_path, dtype, nodata):
    rng = np.random.default_rng(0)
    data = (rng.random((2, 40, 30)) * 200).astype(dtype)
    path = write_geotiff(tmp_path / "r.tif", data, crs_wkt=UTM33, transform=TRANSFORM, nodata=nodata)
    info = raster_info(path)
    assert info.dtype == dtype and info.nodata == nodata and info.count == 2
    assert info.transform == pytest.approx(TRANSFORM)
    assert rasterio.crs.CRS.from_wkt(info.crs_wkt).to_epsg() == 32633
    back, valid = read_array(path)
    np.testing.assert_array_equal(back, data.astype(np.float32))
    assert files_in(tmp_path) == {"r.tif"}


def test_nodata_and_nan_become_invalid(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data[0, 0, 0] = -1.0
    data[1, 2, 3] = np.nan
    path = write_test_raster(tmp_path / "f.tif", data, nodata=-1.0)
    _, valid = read_array(path)
    assert not valid[0, 0] and not valid[2, 3] and valid.sum() == 10


def test_complex_is_read_as_amplitude(tmp_path):
    data = np.array([[[3 + 4j, 0 + 1j]]], dtype=np.complex64)
    path = tmp_path / "c.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2, height=1, count=1, dtype="complex64") as dst:
        dst.write(data)
    values, _ = read_array(path)
    np.testing.assert_allclose(values[0, 0], [5.0, 1.0])


def test_windowed_read_and_band_selection(tmp_path):
    data = np.stack([np.full((50, 60), v, np.uint16) for v in (10, 20, 30)])
    path = write_test_raster(tmp_path / "m.tif", data)
    with rasterio.open(path) as src:
        values, valid = read_window(src, Window(5, 10, 7, 4), [3, 1])
    assert values.shape == (2, 4, 7) and values[0, 0, 0] == 30 and values[1, 0, 0] == 10 and valid.all()


def test_band_check_names_missing_bands(tmp_path):
    path = write_test_raster(tmp_path / "two.tif", np.zeros((2, 4, 4), np.uint8))
    info = raster_info(path)
    with pytest.raises(RasterError, match=r"'two' has 2 band\(s\) but the model needs 3 \(red, green, blue\)"):
        check_bands(info, None, ["red", "green", "blue"], layer_name="two")
    with pytest.raises(RasterError, match=r"band\(s\) \[5\] do not exist"):
        check_bands(info, [1, 5], ["a", "b"])
    assert check_bands(info, [2, 1], ["a", "b"]) == [2, 1]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with GeoTiffWriter(tmp_path / "out.tif", width=300, height=300, count=1, dtype="uint8",
                           crs_wkt=UTM33, transform=TRANSFORM) as writer:
            writer.write(np.ones((100, 300), np.uint8))
            raise RuntimeError("boom")
    assert files_in(tmp_path) == set()


def test_existing_output_untouched_until_complete(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyError
    assert target.read_text() == "old" and files_in(tmp_path) == {"keep.txt"}


def test_class_raster_colour_table(tmp_path):
    path = write_geotiff(tmp_path / "c.tif", np.array([[0, 1], [1, 0]], np.uint8), crs_wkt=UTM33,
                         transform=TRANSFORM, nodata=255, colormap={0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
    with rasterio.open(path) as src:
        assert src.colormap(1)[1] == (0, 0, 255, 255)


def test_unreadable_file_is_explained(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a raster")
    with pytest.raises(RasterError, match="Cannot open raster"):
        raster_info(bad)
