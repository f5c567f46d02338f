"""core.pipeline, the skeleton of the five raster pipelines: outputs are checked before any model is loaded,
written under staged names, moved into place on success and removed on failure or cancel."""
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from core.change.pipeline import ChangeParams, detect_changes
from core.fusion.pipeline import FusionParams, fuse_ir_visible
from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
from core.pipeline import Output, check_outputs, staged_outputs
from core.progress import Progress
from core.raster import RasterError
from core.refinement.pipeline import RefineParams, refine_raster
from core.segmentation.pipeline import SegmentParams, segment_raster
from tests.conftest import files_in, read_polygons

MISSING_MODEL = "/nonexistent/rs-diffusion-model"


def write_raster(path, bands=3, size=(64, 96), dtype="uint8", nodata=0, seed=0):
    """A small GeoTIFF in UTM 33N (0.5 m pixels) with a nodata strip along the top."""
    data = np.random.default_rng(seed).integers(1, 200, (bands, *size)).astype(dtype)
    data[:, :4] = nodata
    with rasterio.open(path, "w", driver="GTiff", width=size[1], height=size[0], count=bands, dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 5600000, 0.5, 0.5), nodata=nodata) as dst:
        dst.write(data)
    return path


@pytest.fixture
def rasters(tmp_path):
    return {"rgb": write_raster(tmp_path / "rgb.tif"), "rgb_b": write_raster(tmp_path / "rgb_b.tif", seed=1),
            "sar": write_raster(tmp_path / "sar.tif", bands=1, dtype="float32", nodata=-9999.0),
            "classes": write_raster(tmp_path / "classes.tif", bands=1)}


# Each pipeline run with the missing model; PIPELINES: its first input, its second raster output and its polygons.
def segment(r, output, **extra):
    return segment_raster(SegmentParams(str(r["rgb"]), output, model_dir=MISSING_MODEL, **extra))


def oil_spills(r, output, **extra):
    return detect_oil_spills(OilSpillParams(str(r["sar"]), output, model_dir=MISSING_MODEL, **extra))


def changes(r, output, **extra):
    return detect_changes(ChangeParams(str(r["rgb"]), str(r["rgb_b"]), output, model_dir=MISSING_MODEL, **extra))


def refine(r, output, **extra):
    return refine_raster(RefineParams(str(r["rgb"]), str(r["classes"]), output, model_dir=MISSING_MODEL, **extra))


def fuse(r, output, **extra):
    return fuse_ir_visible(FusionParams(str(r["sar"]), str(r["rgb"]), output, model_dir=MISSING_MODEL, **extra))


PIPELINES = {segment: ("rgb", "probabilities_path", "polygons_path"),
             oil_spills: ("sar", "probability_path", "polygons_path"),
             changes: ("rgb", "probability_path", "polygons_path"), refine: ("rgb", "uncertainty_path", None),
             fuse: ("sar", "weights_path", None)}


@pytest.mark.parametrize("run", PIPELINES, ids=lambda f: f.__name__)
def test_bad_outputs_are_refused_before_the_model_loads(tmp_path, rasters, run):
    first_input, second, polygons = PIPELINES[run]
    input_path = str(rasters[first_input])
    name = rasters[first_input].name
    (tmp_path / "a file").write_text("not a folder")
    before = files_in(tmp_path)
    cases = [({}, RasterError, rf"The .* '.*{name}' is the input layer '{name}'; choose another file name"),
             ({second: input_path}, RasterError, rf"is the input layer '{name}'"),
             ({"output": "out.png"}, ValueError, r"is written as a GeoTIFF: use a \.tif file name, not '.*out\.png'"),
             ({second: "out.tif"}, ValueError, r"The .* and the .* are both '.*out\.tif'; choose two file names"),
             ({"output": "a file/out.tif"}, ValueError, r"cannot be written: '.*a file' is a file, not a folder"),
             ({"output": ""}, ValueError, r"Choose a file name for the")]
    if polygons:
        cases.append(({polygons: "slicks.shp"}, ValueError,
                      r"are written as a GeoPackage: use a \.gpkg file name, not '.*slicks\.shp'"))
    for change, error, message in cases:
        extra = {key: str(tmp_path / value) if value and value != input_path else value
                 for key, value in change.items()}
        output = extra.pop("output", str(tmp_path / "out.tif") if change else input_path)
        with pytest.raises(error, match=message):   # the missing model would raise another error
            run(rasters, output, **extra)
        assert files_in(tmp_path) == before


@pytest.mark.parametrize("run", PIPELINES, ids=lambda f: f.__name__)
def test_good_outputs_get_as_far_as_the_model(tmp_path, rasters, run):
    with pytest.raises(Exception, match="rs-diffusion-model"):
        run(rasters, str(tmp_path / "new folder" / "out.tif"))
    assert not (tmp_path / "new folder").exists()


def test_staged_outputs_move_into_place_together_on_success(tmp_path):
    outputs = [Output(str(tmp_path / "new" / "classes.tif"), "class raster"),
               Output(str(tmp_path / "probability.tif"), "probability raster"), Output("", "polygons", True)]
    check_outputs(outputs, {str(tmp_path / "input.tif"): "input"})
    with staged_outputs(outputs) as staged:
        assert staged[""] == ""
        for out in outputs[:2]:
            write_raster(staged[out.path], bands=1)
            assert not (tmp_path / "probability.tif").exists()   # nothing final before the whole run is done
        write_raster(staged.scratch("classes.tif"), bands=1)
    assert files_in(tmp_path) == {"new", "probability.tif"} and files_in(tmp_path / "new") == {"classes.tif"}
    with rasterio.open(tmp_path / "new" / "classes.tif") as src:
        assert src.crs == "EPSG:32633" and src.nodata == 0


def test_staged_outputs_leave_nothing_behind_on_failure_and_keep_earlier_files(tmp_path):
    earlier = write_raster(tmp_path / "classes.tif", bands=1, seed=5).read_bytes()
    outputs = [Output(str(tmp_path / "classes.tif"), "class raster"),
               Output(str(tmp_path / "new" / "deeper" / "probability.tif"), "probability raster")]
    with pytest.raises(RuntimeError, match="model failed"), staged_outputs(outputs) as staged:
        for out in outputs:
            write_raster(staged[out.path], bands=1)
        raise RuntimeError("model failed")
    assert files_in(tmp_path) == {"classes.tif"}   # no partial files, no staging or new folders
    assert (tmp_path / "classes.tif").read_bytes() == earlier


class FailWhilePolygonising(Progress):
    def set_fraction(self, fraction):
        if fraction > 0.9:   # the class raster is complete, the polygons are being written
            raise RuntimeError("disk full")


def test_segmentation_run_writes_all_outputs_or_none(tmp_path, rasters, starter_model):
    folder = tmp_path / "out"
    params = SegmentParams(str(rasters["rgb"]), str(folder / "classes.tif"), model_dir=str(starter_model),
                           probabilities_path=str(folder / "probabilities.tif"),
                           polygons_path=str(folder / "polygons.gpkg"))
    with pytest.raises(RuntimeError, match="disk full"):
        segment_raster(params, FailWhilePolygonising())
    assert not folder.exists()

    result = segment_raster(params)
    assert files_in(folder) == {"classes.tif", "probabilities.tif", "polygons.gpkg"}
    with rasterio.open(result.output_path) as out, rasterio.open(rasters["rgb"]) as src:
        assert out.crs == src.crs and out.transform == src.transform and out.nodata == 255
        assert (out.read(1)[:4] == 255).all()
    rows, _ = read_polygons(result.polygons_path)
    assert rows and {"class_id", "area_m2"} <= set(rows[0])

    earlier = {name: (folder / name).read_bytes() for name in files_in(folder)}
    with pytest.raises(RuntimeError, match="disk full"):
        segment_raster(params, FailWhilePolygonising())
    assert {name: (folder / name).read_bytes() for name in files_in(folder)} == earlier
