"""Issue 17, "ground resolution more than 2x off the card's (with an option to resample to the model's resolution)":
with resample_to_model (Processing: RESAMPLE_TO_MODEL) a projected layer is read at the card's ground resolution
through a WarpedVRT, the outputs get that grid and the warning says so; without it the outputs keep the layer's grid
and the warning names the option; a layer without a projected CRS is read as it is, with a warning."""
import json
import resource
import shutil
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from core.change.pipeline import ChangeParams, detect_changes
from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
from core.progress import Progress
from core.raster import grid_at_resolution, open_on_grid, raster_info, read_window
from core.segmentation.pipeline import SegmentParams, segment_raster

OPTION = "'Resample to the model's resolution' (RESAMPLE_TO_MODEL)"
NODATA_ROWS = 3


class Recorder(Progress):
    """Collects warnings the way the Processing feedback receives them."""

    def __init__(self):
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


def write_layer(path, bands=3, size=(24, 32), pixel=2.0, crs="EPSG:32633", dtype="uint8", nodata=0, seed=0,
                left=500000.0, top=5600000.0, nodata_rows=NODATA_ROWS):
    """A GeoTIFF of `pixel` m pixels with nodata in its first `nodata_rows` rows."""
    data = np.random.default_rng(seed).integers(1, 250, (bands, *size)).astype(dtype)
    data[:, :nodata_rows] = nodata
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=bands, dtype=dtype, crs=crs,
                       transform=from_origin(left, top, pixel, pixel), nodata=nodata) as dst:
        dst.write(data)
    return path


def assert_same_bounds(output, layer):
    with rasterio.open(output) as out, rasterio.open(layer) as src:
        half = out.res[0] / 2
        assert np.allclose(out.bounds, src.bounds, atol=half, rtol=0)
        assert out.crs == src.crs


def grid_of(path):
    with rasterio.open(path) as src:
        return src.width, src.height, src.res


# --- segmentation -----------------------------------------------------------------------------------------
def test_segment_with_the_option_reads_a_2_m_layer_at_the_models_0_5_m(tmp_path, starter_model):
    assert json.loads((starter_model / "model.json").read_text())["ground_resolution"] == 0.5
    layer = write_layer(tmp_path / "coarse.tif")                     # 32 x 24 px of 2 m
    progress = Recorder()
    segment_raster(SegmentParams(str(layer), str(tmp_path / "classes.tif"), resample_to_model=True,
                                 probabilities_path=str(tmp_path / "probs.tif")), progress)
    for output in ("classes.tif", "probs.tif"):
        assert grid_of(tmp_path / output) == (128, 96, (0.5, 0.5))
        assert_same_bounds(tmp_path / output, layer)
    with rasterio.open(tmp_path / "classes.tif") as out:
        classes = out.read(1)
    assert (classes[:4 * NODATA_ROWS] == out.nodata).all() and (classes[4 * NODATA_ROWS:] != out.nodata).all()
    warning, = progress.warnings
    assert warning.startswith("Layer 'coarse.tif' has 2 m pixels; the model 'segmentation starter (procedural 0.5 m "
                              "RGB scenes)' was trained on 0.5 m pixels (4x coarser): it was read at 0.5 m to match "
                              "the model, so the outputs are on that grid (128 x 96 px)")
    assert warning.endswith(f"To read it at its own resolution instead, untick {OPTION}.")


def test_segment_without_the_option_keeps_the_layers_grid_and_names_the_option(tmp_path, starter_model):
    layer = write_layer(tmp_path / "coarse.tif")
    progress = Recorder()
    segment_raster(SegmentParams(str(layer), str(tmp_path / "classes.tif")), progress)
    assert grid_of(tmp_path / "classes.tif") == (32, 24, (2.0, 2.0))
    warning, = progress.warnings
    assert "objects look 4x smaller to it than in its training data" in warning
    assert warning.endswith("The layer was read at its own resolution; to change that, resample the layer to about "
                            f"0.5 m first (Raster > Projections > Warp) or tick {OPTION}.")


@pytest.mark.parametrize("crs, pixel, why", [
    ("EPSG:4326", 2.0 / 111_320, "is in a geographic CRS (EPSG:4326)"),
    (None, 2.0, "has no CRS")])
def test_a_layer_without_a_projected_crs_is_read_as_it_is_with_a_warning(tmp_path, starter_model, crs, pixel, why):
    layer = write_layer(tmp_path / "unprojected.tif", crs=crs, pixel=pixel, left=15.0, top=50.0)
    progress = Recorder()
    segment_raster(SegmentParams(str(layer), str(tmp_path / "classes.tif"), resample_to_model=True), progress)
    assert grid_of(tmp_path / "classes.tif")[:2] == (32, 24)
    cannot = [w for w in progress.warnings if OPTION in w]
    assert len(cannot) == 1 and cannot[0].startswith(
        f"Layer 'unprojected.tif' {why}, so {OPTION} cannot resample it to the model's 0.5 m pixels")
    assert "it was read at its own resolution" in cannot[0]


def test_a_layer_already_at_the_models_resolution_is_read_as_it_is(tmp_path, starter_model):
    layer = write_layer(tmp_path / "fine.tif", pixel=0.5)
    progress = Recorder()
    segment_raster(SegmentParams(str(layer), str(tmp_path / "classes.tif"), resample_to_model=True), progress)
    with rasterio.open(tmp_path / "classes.tif") as out, rasterio.open(layer) as src:
        assert (out.width, out.height, out.transform) == (src.width, src.height, src.transform)
    assert progress.warnings == []


# --- change detection: date A at the model's resolution, date B onto that grid ----------------------------
def test_change_with_the_option_reads_both_dates_at_the_models_resolution(tmp_path, change_starters):
    changedet, _ = change_starters
    assert json.loads((changedet / "model.json").read_text())["ground_resolution"] == 0.5
    a = write_layer(tmp_path / "a.tif")                                   # 32 x 24 px of 2 m
    b = write_layer(tmp_path / "b.tif", size=(12, 16), pixel=4.0, seed=1, nodata_rows=0)  # the extent in 4 m px
    progress = Recorder()
    result = detect_changes(ChangeParams(str(a), str(b), str(tmp_path / "change.tif"), resample_to_model=True,
                                         probability_path=str(tmp_path / "p.tif")), progress)
    for output in ("change.tif", "p.tif"):
        assert grid_of(tmp_path / output) == (128, 96, (0.5, 0.5))
        assert_same_bounds(tmp_path / output, a)
    with rasterio.open(tmp_path / "change.tif") as out:
        change = out.read(1)
    assert (change[:4 * NODATA_ROWS] == 255).all() and (change[4 * NODATA_ROWS:] != 255).all()
    assert result.resampled
    read_at = [w for w in progress.warnings if "it was read at 0.5 m to match the model" in w]
    assert [w.split(" has ")[0] for w in read_at] == ["Date A 'a.tif'", "Date B 'b.tif'"]

    plain = Recorder()
    detect_changes(ChangeParams(str(a), str(b), str(tmp_path / "change_own.tif")), plain)
    assert grid_of(tmp_path / "change_own.tif") == (32, 24, (2.0, 2.0))
    assert sum(OPTION in w for w in plain.warnings) == 2     # date A's 2 m and date B's 4 m both name the option


# --- oil spills: a model folder whose card records 10 m ---------------------------------------------------
def test_oil_spills_with_the_option_read_a_40_m_scene_at_the_cards_10_m(tmp_path, sar_starters):
    model = tmp_path / "saross 10 m"
    shutil.copytree(sar_starters[0], model)
    card = json.loads((model / "model.json").read_text())
    card["ground_resolution"] = 10.0
    (model / "model.json").write_text(json.dumps(card))
    scene = write_layer(tmp_path / "sar.tif", bands=1, size=(16, 24), pixel=40.0, dtype="float32", nodata=-9999.0)
    progress = Recorder()
    result = detect_oil_spills(OilSpillParams(str(scene), str(tmp_path / "oil.tif"), model_dir=str(model),
                                              resample_to_model=True), progress)
    assert grid_of(tmp_path / "oil.tif") == (96, 64, (10.0, 10.0))
    assert_same_bounds(tmp_path / "oil.tif", scene)
    assert result.tiles == 1
    assert any("it was read at 10 m to match the model" in w for w in progress.warnings)

    unrecorded = Recorder()   # the starter's card records no ground resolution: nothing to resample to
    detect_oil_spills(OilSpillParams(str(scene), str(tmp_path / "oil_own.tif"), resample_to_model=True), unrecorded)
    assert grid_of(tmp_path / "oil_own.tif") == (24, 16, (40.0, 40.0))
    assert any("does not record the ground resolution it was trained on" in w for w in unrecorded.warnings)


# --- the grid and the reader ------------------------------------------------------------------------------
def test_grid_at_resolution_keeps_the_extent_within_half_a_pixel(tmp_path):
    info = raster_info(write_layer(tmp_path / "odd.tif", size=(25, 25), pixel=2.0))   # 50 m a side
    grid = grid_at_resolution(info, 3.0)                                               # 16.7 px of 3 m
    assert (grid.width, grid.height, grid.resolution) == (17, 17, (3.0, 3.0))
    assert np.allclose(grid.bounds, info.bounds, atol=1.5, rtol=0)
    assert grid_at_resolution(info, 2.0) is info
    south_up = replace(info, transform=(2.0, 0.0, 500000.0, 0.0, 2.0, 5599950.0))   # rows run north
    assert grid_at_resolution(south_up, 0.5).transform == (0.5, 0.0, 500000.0, 0.0, -0.5, 5600000.0)


def test_reading_a_window_of_a_huge_resampled_grid_does_not_read_the_whole_grid(tmp_path):
    """A 100 m layer read at 0.25 m is a 40000 x 40000 px grid (19 GB of float32 for 3 bands): reading a window
    of it must cost memory for that window only."""
    info = raster_info(write_layer(tmp_path / "landsat.tif", size=(100, 100), pixel=100.0))
    grid = grid_at_resolution(info, 0.25)
    assert (grid.width, grid.height) == (40000, 40000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open_on_grid(info.path, grid) as src:
        data, valid = read_window(src, Window(20000, 20000, 256, 256), [1, 2, 3])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert data.shape == (3, 256, 256) and valid.all()
    assert grown_mb < 300


# --- Processing ---------------------------------------------------------------------------------------------
@pytest.mark.qgis
def test_resample_to_model_is_an_advanced_processing_parameter_off_by_default(processing):
    from qgis.core import QgsApplication, QgsProcessingParameterDefinition
    for name in ("segment_raster", "detect_oil_spills", "detect_changes"):
        alg = QgsApplication.processingRegistry().algorithmById(f"rsdiffusion:{name}")
        parameter = alg.parameterDefinition("RESAMPLE_TO_MODEL")
        assert parameter.type() == "boolean" and parameter.defaultValue() is False
        assert parameter.flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced
        assert "model's ground resolution" in parameter.help() and "outputs are then on that grid" in parameter.help()


@pytest.mark.qgis
def test_processing_segment_with_resample_to_model_writes_the_models_grid(processing, tmp_path, starter_model):
    layer = write_layer(tmp_path / "coarse.tif")
    result = processing.run("rsdiffusion:segment_raster", {"INPUT": str(layer), "OUTPUT": str(tmp_path / "c.tif"),
                                                           "RESAMPLE_TO_MODEL": True})
    assert grid_of(result["OUTPUT"]) == (128, 96, (0.5, 0.5))
    assert_same_bounds(result["OUTPUT"], layer)
    result = processing.run("rsdiffusion:segment_raster", {"INPUT": str(layer), "OUTPUT": str(tmp_path / "own.tif")})
    assert grid_of(result["OUTPUT"]) == (32, 24, (2.0, 2.0))
