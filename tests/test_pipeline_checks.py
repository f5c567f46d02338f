"""Issue 17: every raster pipeline checks its inputs and tiling before a model loads (errors) and tells the user,
in their terms, how an input differs from the model's training data (warnings); a killed run's staging folder is
removed by the next run to the same output. "Before the model loads" is shown with a model folder that does not
exist: the input error is the one raised."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from core.checkpoint import ModelError
from core.pipeline import MIN_TILE_SIZE, Output, remove_leftovers, staged_outputs
from core.progress import Progress
from core.raster import RasterError, has_valid_pixel, open_raster, read_decimated
from core.segmentation.pipeline import SegmentParams, segment_raster
from core.change.pipeline import ChangeParams, detect_changes
from tests.conftest import REPO, files_in, make_scene_raster
from tests.test_pipeline_skeleton import MISSING_MODEL, PIPELINES, write_raster


class Recorder(Progress):
    """Collects warnings the way the Processing feedback receives them."""

    def __init__(self):
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


def write_array(path, data, crs="EPSG:32633", transform=from_origin(500000, 5600000, 0.5, 0.5), nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
    return path


@pytest.fixture
def rasters(tmp_path):
    return {"rgb": write_raster(tmp_path / "rgb.tif"), "rgb_b": write_raster(tmp_path / "rgb_b.tif", seed=1),
            "sar": write_raster(tmp_path / "sar.tif", bands=1, dtype="float32", nodata=-9999.0),
            "classes": write_raster(tmp_path / "classes.tif", bands=1)}


@pytest.fixture
def card_only(tmp_path, starter_model):
    """The segmentation starter's card without its weights: a run gets through every check, then fails to load."""
    folder = tmp_path / "card only"
    folder.mkdir()
    shutil.copy(starter_model / "model.json", folder)
    return folder


# --- two inputs that do not overlap ----------------------------------------------------------------------
def test_date_b_in_another_crs_not_overlapping_date_a_is_an_error_before_the_model_loads(tmp_path):
    a = write_raster(tmp_path / "a.tif")
    b = write_array(tmp_path / "b.tif", np.full((3, 64, 96), 100, np.uint8), crs="EPSG:4326",
                    transform=from_origin(-70.0, -30.0, 0.0001, 0.0001), nodata=0)
    before = files_in(tmp_path)
    with pytest.raises(RasterError, match=r"^Date B 'b\.tif' \(EPSG:4326, extent -70, -30\.0064 : -69\.9904, -30\) "
                                          r"does not overlap date A 'a\.tif' \(EPSG:32633, extent 500000, 5599968 : "
                                          r"500048, 5600000\); choose layers that cover the same area\.$"):
        detect_changes(ChangeParams(str(a), str(b), str(tmp_path / "change.tif"), model_dir=MISSING_MODEL))
    assert files_in(tmp_path) == before


def test_partial_overlap_is_a_warning_with_the_covered_share(tmp_path):
    a = write_raster(tmp_path / "a.tif")                                      # 48 x 32 m
    b = write_array(tmp_path / "b.tif", np.full((3, 64, 96), 100, np.uint8),  # shifted 12 m east: 3/4 of A
                    transform=from_origin(500012, 5600000, 0.5, 0.5), nodata=0)
    progress = Recorder()
    with pytest.raises(ModelError, match="rs-diffusion-model"):             # the checks come first
        detect_changes(ChangeParams(str(a), str(b), str(tmp_path / "change.tif"), model_dir=MISSING_MODEL), progress)
    assert progress.warnings == ["Date B 'b.tif' covers only 75.0% of date A 'a.tif': the outputs are nodata where "
                                 "it has no data. Crop date A 'a.tif' to the overlap to leave that out."]


# --- input fitness warnings -----------------------------------------------------------------------------
def test_uint16_four_band_raster_into_the_8_bit_rgb_starter_warns(tmp_path, starter_model):
    data = np.random.default_rng(0).integers(1, 4000, (4, 64, 64)).astype(np.uint16)
    image = write_array(tmp_path / "landsat.tif", data, nodata=0)
    progress = Recorder()
    segment_raster(SegmentParams(str(image), str(tmp_path / "classes.tif"), layer_name="Landsat"), progress)
    value_warning, = [w for w in progress.warnings if "uint16" in w]
    top = int(data[:3].max())
    assert value_warning.startswith(f"Layer 'Landsat' is uint16 with values up to {top}; the model 'segmentation "
                                    "starter (procedural 0.5 m RGB scenes)' was trained on 8-bit (0..255) data: the "
                                    "values were scaled with the model's 8-bit statistics as they are")
    assert "Rescale the layer to 0..255 first" in value_warning
    assert "Layer 'Landsat' has 4 bands; the model 'segmentation starter (procedural 0.5 m RGB scenes)' reads bands " \
           "1-3 as red, green, blue and ignores the others." in " ".join(progress.warnings)

    quiet = Recorder()   # the same scene in 8-bit: nothing to say
    eight_bit = write_array(tmp_path / "rgb.tif", (data[:3] // 16).astype(np.uint8), nodata=0)
    segment_raster(SegmentParams(str(eight_bit), str(tmp_path / "classes8.tif")), quiet)
    assert quiet.warnings == []


def test_values_far_from_a_float_models_normalisation_warn(tmp_path, card_only):
    card = (card_only / "model.json").read_text().replace('"steps": 1000', '"steps": 1000, "dtype": "float32"')
    (card_only / "model.json").write_text(card)
    image = write_array(tmp_path / "scaled.tif", np.full((3, 32, 32), 5000.0, np.float32))
    progress = Recorder()
    with pytest.raises(ModelError):
        segment_raster(SegmentParams(str(image), str(tmp_path / "c.tif"), model_dir=str(card_only)), progress)
    assert any("(float32) has values of 5000..5000 (1st-99th percentile) in the band read as 'blue'" in w
               and "far from the values it was trained on" in w for w in progress.warnings)


@pytest.mark.parametrize("pixel, expected", [
    (300.0, "has 300 m pixels; the model 'segmentation starter (procedural 0.5 m RGB scenes)' was trained on 0.5 m "
            "pixels (600x coarser): objects look 600x smaller to it than in its training data"),
    (0.2, "has 0.2 m pixels; the model 'segmentation starter (procedural 0.5 m RGB scenes)' was trained on 0.5 m "
          "pixels (2.5x finer): objects look 2.5x larger to it")])
def test_ground_resolution_far_from_the_models_warns_before_the_model_loads(tmp_path, card_only, pixel, expected):
    image = write_array(tmp_path / "scene.tif", np.full((3, 32, 32), 100, np.uint8),
                        transform=from_origin(500000, 5600000, pixel, pixel))
    progress = Recorder()
    with pytest.raises(ModelError, match="Weights file missing"):   # the card was read, the weights not
        segment_raster(SegmentParams(str(image), str(tmp_path / "c.tif"), model_dir=str(card_only)), progress)
    warning, = progress.warnings
    assert warning.startswith(f"Layer 'scene.tif' {expected}")
    assert warning.endswith("The layer was read at its own resolution; to change that, resample the layer to about "
                            "0.5 m first (Raster > Projections > Warp) or tick 'Resample to the model's resolution' "
                            "(RESAMPLE_TO_MODEL).")


def test_resolution_within_twice_the_models_and_in_degrees_is_quiet(tmp_path, card_only):
    for name, pixel, crs in (("aerial.tif", 0.3, "EPSG:32633"), ("wgs84.tif", 0.5 / 111_320, "EPSG:4326")):
        image = write_array(tmp_path / name, np.full((3, 32, 32), 100, np.uint8), crs=crs,
                            transform=from_origin(0.0, 0.0, pixel, pixel))
        progress = Recorder()
        with pytest.raises(ModelError):
            segment_raster(SegmentParams(str(image), str(tmp_path / "c.tif"), model_dir=str(card_only)), progress)
        assert progress.warnings == []


# --- tiling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", PIPELINES, ids=lambda f: f.__name__)
def test_tile_size_3_is_an_error_before_the_model_loads(tmp_path, rasters, run):
    with pytest.raises(ValueError, match=rf"^Tile size 3 px is below the minimum of {MIN_TILE_SIZE} px"):
        run(rasters, str(tmp_path / "out.tif"), tile_size=3)


@pytest.mark.parametrize("run", PIPELINES, ids=lambda f: f.__name__)
def test_overlap_over_half_the_tile_is_an_error_not_a_clamp(tmp_path, rasters, run):
    with pytest.raises(ValueError, match=r"^Tile overlap 100 px is more than half the tile size \(64 px\); choose an "
                                         r"overlap of at most 32 px or a tile size of at least 200 px\.$"):
        run(rasters, str(tmp_path / "out.tif"), tile_size=64, overlap=100)


def test_default_overlap_over_half_the_models_tile_is_halved_with_a_warning(tmp_path, card_only):
    image = write_raster(tmp_path / "rgb.tif")   # the card's tile is 256 px; no tile size chosen
    progress = Recorder()
    with pytest.raises(ModelError, match="Weights file missing"):
        segment_raster(SegmentParams(str(image), str(tmp_path / "c.tif"), model_dir=str(card_only), overlap=200),
                       progress)
    assert progress.warnings == ["Tile overlap 200 px is more than half the model's tile size (256 px): 128 px used. "
                                 "Choose a tile size of at least 400 px to keep 200 px."]


# --- all nodata -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("run", PIPELINES, ids=lambda f: f.__name__)
def test_all_nodata_raster_is_an_error_before_the_model_runs(tmp_path, rasters, run):
    first_input = PIPELINES[run][0]
    nodata = -9999.0 if first_input == "sar" else 0
    dtype = "float32" if first_input == "sar" else "uint8"
    with rasterio.open(rasters[first_input], "r+") as dst:
        dst.write(np.full((dst.count, dst.height, dst.width), nodata, dtype))
    with pytest.raises(RasterError, match=rf" '{first_input}\.tif' has no valid pixel: band\(s\) 1 are nodata "
                                          rf"\(value {nodata:g}\) everywhere, so there is nothing to run the model on"):
        run(rasters, str(tmp_path / "out.tif"))


def test_a_single_valid_pixel_that_decimation_misses_is_found(tmp_path):
    data = np.zeros((1, 2100, 2100), np.uint8)
    data[0, 2, 2] = 7
    path = write_array(tmp_path / "sparse.tif", data, nodata=0)
    with open_raster(path) as src:
        assert not read_decimated(src, [1])[1].any()   # the cheap read sees nodata only...
        assert has_valid_pixel(src, [1])               # ...the scan finds the pixel
    data[0, 2, 2] = 0
    with open_raster(write_array(tmp_path / "empty.tif", data, nodata=0)) as src:
        assert not has_valid_pixel(src, [1])


# --- leftovers of a killed run --------------------------------------------------------------------------
def test_leftover_staging_folder_is_removed_by_the_next_run_to_the_same_output(tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(64, 64))
    out = tmp_path / "out"
    leftover = out / ".classes.tif.k3j2h1.partial"          # the name core.pipeline.staged_outputs gives
    (leftover / ".scratch").mkdir(parents=True)
    (leftover / ".classes.1a2b3c4d.partial.tif").write_bytes(b"half a GeoTIFF")
    older = out / ".x9y8z7.partial"                          # unnamed, holding the output: also a leftover
    older.mkdir()
    (older / "classes.tif").write_bytes(b"half a GeoTIFF")
    other = out / ".roads.tif.q1w2e3.partial"               # another output's: not this run's business
    other.mkdir()
    segment_raster(SegmentParams(str(image), str(out / "classes.tif")))
    assert files_in(out) == {"classes.tif", other.name}


def test_a_live_runs_staging_folder_is_kept(tmp_path):
    outputs = [Output(str(tmp_path / "classes.tif"), "class raster")]
    with staged_outputs(outputs) as staged:
        live, = (p for p in tmp_path.iterdir() if p.name.endswith(".partial"))
        assert live.name.startswith(".classes.tif.")
        assert remove_leftovers([tmp_path / "classes.tif"]) == [] and live.is_dir()
        write_raster(staged[outputs[0].path], bands=1)
    assert files_in(tmp_path) == {"classes.tif"}


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from core.progress import Progress
    from core.segmentation.pipeline import SegmentParams, segment_raster

    class StopHere(Progress):
        def set_fraction(self, fraction):
            if fraction > 0:
                print("writing", flush=True)
                time.sleep(600)

    segment_raster(SegmentParams(sys.argv[1], sys.argv[2], tile_size=64, overlap=8, device="cpu"), StopHere())
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_run_killed_with_sigkill_leaves_a_staging_folder_the_next_run_removes(tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(200, 200))
    output = tmp_path / "out" / "classes.tif"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(image), str(output)], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "writing"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    left, = (tmp_path / "out").iterdir()
    assert left.name.startswith(".classes.tif.") and left.name.endswith(".partial")

    segment_raster(SegmentParams(str(image), str(output), tile_size=64, overlap=8, device="cpu"))
    assert files_in(tmp_path / "out") == {"classes.tif"}
