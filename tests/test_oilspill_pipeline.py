"""detect_oil_spills on procedural SAR scenes with a tiny trained SAROSS-Net: grid and nodata kept,
oil-slick polygons with exact areas and mean probabilities, land mask, batch-independent tiling,
one stretch whatever the input kind, clear errors and no half-written outputs."""
import numpy as np
import pytest
import rasterio
import rasterio.features
from shapely.geometry import mapping

from core.checkpoint import ModelError
from core.data.sar import LAND, OIL, SAR_CLASSES, write_land_mask, write_sar_scene
from core.oilspill.pipeline import PROBABILITY_NODATA, OilSpillParams, detect_oil_spills
from core.progress import Cancelled, Progress
from core.raster import RasterError, hex_to_rgba
from tests.conftest import files_in, read_polygons
from tests.sar_fixtures import sar_models  # noqa: F401  (session fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEED = 4                     # 96 x 128 px: oil, look-alikes, land and 4 nodata columns at the swath edge
HEIGHT, WIDTH = 96, 128      # 2 x 3 tiles of the tiny model's 64 px
CLASS_NODATA = 255


def write_scene(folder, kind="linear", seed=SEED):
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = folder / f"sar_{kind}.tif", folder / f"labels_{kind}.tif"
    write_sar_scene(image, labels, HEIGHT, WIDTH, seed, kind)
    return image, labels


def detect(image, out, model, **kwargs):
    """Detection with the tiny model, classes + polygons + probability written next to `out`."""
    params = OilSpillParams(input_path=str(image), output_path=str(out / "classes.tif"), model_dir=str(model),
                            polygons_path=str(out / "slicks.gpkg"), probability_path=str(out / "oil_prob.tif"),
                            overlap=16)
    for key, value in kwargs.items():
        setattr(params, key, value)
    out.mkdir(parents=True, exist_ok=True)
    return detect_oil_spills(params)


def read1(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def detected(tmp_path_factory, sar_models):  # noqa: F811
    folder = tmp_path_factory.mktemp("detected")
    image, labels = write_scene(folder)
    result = detect(image, folder / "out", sar_models.saross, batch_size=4)
    return image, labels, result


def test_class_raster_keeps_grid_crs_and_nodata(detected):
    image, _, result = detected
    with rasterio.open(image) as src, rasterio.open(result.output_path) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.dtypes[0] == "uint8" and out.nodata == CLASS_NODATA
        assert out.colormap(1)[OIL] == hex_to_rgba(SAR_CLASSES[OIL].color)
        classes, invalid = out.read(1), np.isnan(src.read(1))
    assert invalid[:, :4].all() and not invalid[:, 4:].any()      # the swath edge of this seed
    np.testing.assert_array_equal(classes == CLASS_NODATA, invalid)
    assert set(np.unique(classes[~invalid])) <= {c.value for c in SAR_CLASSES}
    assert result.tiles == 6 and result.oil_pixels == np.count_nonzero(classes == OIL) > 0
    assert result.classes == [{"value": c.value, "name": c.name, "color": c.color} for c in SAR_CLASSES]
    assert result.scaling.startswith("linear input") and "dB" in result.scaling

    with rasterio.open(result.probability_path) as prob:
        assert (prob.crs, prob.transform, prob.dtypes[0], prob.nodata) == (
            rasterio.open(image).crs, rasterio.open(image).transform, "float32", PROBABILITY_NODATA)
        probability = prob.read(1)
    assert (probability[invalid] == PROBABILITY_NODATA).all()
    assert probability[~invalid].min() >= 0 and probability[~invalid].max() <= 1
    assert probability[classes == OIL].min() >= 1 / len(SAR_CLASSES) - 1e-6   # oil is the argmax of 5 classes


def test_polygons_are_the_oil_pixels_with_areas_and_mean_probability(detected):
    image, _, result = detected
    rows, crs = read_polygons(result.polygons_path)
    classes, probability = read1(result.output_path), read1(result.probability_path)
    with rasterio.open(image) as src:
        transform = src.transform
        assert crs.to_epsg() == src.crs.to_epsg() == 32634
    assert rows and {(r["class_id"], r["class_name"]) for r in rows} == {(OIL, "oil")}
    assert result.slicks == len(rows)
    covered = np.zeros(classes.shape, int)
    for row in rows:
        inside = rasterio.features.geometry_mask([mapping(row["geometry"])], classes.shape, transform, invert=True)
        pixels = np.count_nonzero(inside)
        covered += inside
        assert row["area_m2"] > 0 and row["area_m2"] == pytest.approx(pixels * 100.0)   # 10 m pixels
        assert row["area_m2"] == pytest.approx(row["geometry"].area)
        assert row["area_km2"] == pytest.approx(row["area_m2"] / 1e6, abs=1e-6)
        assert 0 <= row["mean_oil_prob"] <= 1
        assert row["mean_oil_prob"] == pytest.approx(probability[inside].mean(), abs=1e-4)   # stored to 4 places
    np.testing.assert_array_equal(covered, classes == OIL)   # every oil pixel in exactly one polygon, nothing else
    assert result.oil_area_km2 == pytest.approx(result.oil_pixels * 100 / 1e6, rel=1e-4)


def test_land_mask_makes_land_pixels_land_with_zero_oil_probability(tmp_path, detected, sar_models):  # noqa: F811
    image, labels, without = detected
    land_mask = write_land_mask(labels, tmp_path / "land.gpkg")
    result = detect(image, tmp_path / "out", sar_models.saross, land_mask_path=str(land_mask))
    land = read1(labels) == LAND
    assert land.sum() > 1000
    classes, probability = read1(result.output_path), read1(result.probability_path)
    assert (classes[land] == LAND).all() and (probability[land] == 0).all()
    np.testing.assert_array_equal(classes[~land], read1(without.output_path)[~land])
    np.testing.assert_array_equal(probability[~land], read1(without.probability_path)[~land])
    rows, _ = read_polygons(result.polygons_path)
    land_polygons, _ = read_polygons(land_mask)
    assert all(r["geometry"].intersection(p["geometry"]).area == 0 for r in rows for p in land_polygons)
    assert result.oil_pixels == np.count_nonzero(classes == OIL)


def test_tiles_give_the_same_result_whatever_the_batch_size(tmp_path, detected, sar_models):  # noqa: F811
    image, _, in_fours = detected
    one_by_one = detect(image, tmp_path / "out", sar_models.saross, batch_size=1)
    assert one_by_one.tiles == in_fours.tiles == 6
    np.testing.assert_array_equal(read1(one_by_one.output_path), read1(in_fours.output_path))
    np.testing.assert_allclose(read1(one_by_one.probability_path), read1(in_fours.probability_path), atol=1e-5)
    assert one_by_one.slicks == in_fours.slicks


def test_scene_stretch_is_the_same_whatever_the_input_kind(tmp_path, detected, sar_models):  # noqa: F811
    """The same scene stored as linear sigma0, dB or 8-bit amplitude: same model inputs after the scene
    stretch, so (nearly) the same classes; 8-bit amplitude is quantised to 0.16 dB and the tiny model is
    barely trained (near ties flip), hence the looser bound."""
    _, _, linear = detected
    reference, reference_probability = read1(linear.output_path), read1(linear.probability_path)
    valid = reference != CLASS_NODATA
    for kind, agreement, probability_change in (("db", 0.999, 1e-4), ("amplitude", 0.95, 0.003)):
        image, _ = write_scene(tmp_path, kind)
        result = detect(image, tmp_path / kind, sar_models.saross)
        assert result.scaling.startswith(f"{kind} input")
        classes = read1(result.output_path)
        np.testing.assert_array_equal(classes == CLASS_NODATA, ~valid)
        assert np.mean(classes[valid] == reference[valid]) > agreement
        change = np.abs(read1(result.probability_path) - reference_probability)[valid]
        assert change.mean() < probability_change


def test_forced_input_kind_is_used(tmp_path, sar_models):  # noqa: F811
    """8-bit amplitude and dB are both stretched as they are (no logarithm): an amplitude scene forced
    to be read as dB gives the same classes, and the description says what the user chose."""
    image, _ = write_scene(tmp_path, "amplitude")
    auto = detect(image, tmp_path / "auto", sar_models.saross)
    forced = detect(image, tmp_path / "forced", sar_models.saross, input_kind="db")
    assert auto.scaling.startswith("amplitude input") and forced.scaling.startswith("db input")
    np.testing.assert_array_equal(read1(forced.output_path), read1(auto.output_path))


def test_outputs_may_go_to_a_new_folder(tmp_path, sar_models):  # noqa: F811
    """Polygons without a probability output: the mean probability comes from a temporary raster
    next to the outputs, which must work in a folder that does not exist yet and be gone afterwards."""
    image, _ = write_scene(tmp_path)
    result = detect_oil_spills(OilSpillParams(
        input_path=str(image), output_path=str(tmp_path / "new" / "classes.tif"), model_dir=str(sar_models.saross),
        polygons_path=str(tmp_path / "new" / "slicks.gpkg")))
    assert files_in(tmp_path / "new") == {"classes.tif", "slicks.gpkg"} and result.probability_path == ""
    rows, _ = read_polygons(result.polygons_path)
    assert rows and all(1 / len(SAR_CLASSES) - 1e-4 <= r["mean_oil_prob"] <= 1 for r in rows)


@pytest.mark.parametrize("change, error, message", [
    ({"band": 2}, RasterError, r"Layer 'sar_linear.tif' has bands 1..1; band 2 does not exist"),
    ({"input_kind": "sigma0"}, ValueError, r"Unknown SAR input kind 'sigma0'; choose one of auto, linear, db"),
    ({"output_path": "INPUT"}, RasterError, r"is the input layer 'sar_linear.tif'; choose another file name"),
    ({"polygons_path": "slicks.shp"}, ValueError, r"use a .gpkg file name, not '.*slicks.shp'"),
    ({"model_dir": "JOINTNET"}, ModelError, r"is a 'sar-jointnet' model, but this tool needs a 'saross' model"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, sar_models, change, error, message):  # noqa: F811
    image, _ = write_scene(tmp_path)
    replace = {"INPUT": str(image), "JOINTNET": str(sar_models.jointnet), "slicks.shp": str(tmp_path / "slicks.shp")}
    change = {key: replace.get(value, value) for key, value in change.items()}
    before = files_in(tmp_path)
    params = dict(input_path=str(image), output_path=str(tmp_path / "classes.tif"), model_dir=str(sar_models.saross),
                  polygons_path=str(tmp_path / "slicks.gpkg"))
    with pytest.raises(error, match=message):
        detect_oil_spills(OilSpillParams(**dict(params, **change)))
    assert files_in(tmp_path) == before


class CancelAfter(Progress):
    """Cancels as soon as the run has reported more than `fraction` of its work."""

    def __init__(self, fraction: float):
        self.fraction, self.reported = fraction, 0.0

    def set_fraction(self, fraction: float) -> None:
        self.reported = max(self.reported, fraction)

    def is_canceled(self) -> bool:
        return self.reported > self.fraction


@pytest.mark.parametrize("fraction", [0.0, 0.9], ids=["after the first batch of tiles", "while polygonising"])
def test_cancel_leaves_nothing_behind(tmp_path, sar_models, fraction):  # noqa: F811
    image, _ = write_scene(tmp_path)
    before = files_in(tmp_path)
    progress = CancelAfter(fraction)
    params = OilSpillParams(input_path=str(image), output_path=str(tmp_path / "classes.tif"),
                            model_dir=str(sar_models.saross), polygons_path=str(tmp_path / "slicks.gpkg"),
                            probability_path=str(tmp_path / "oil_prob.tif") if fraction else "", batch_size=2)
    with pytest.raises(Cancelled):
        detect_oil_spills(params, progress)
    assert progress.reported < 1.0
    assert files_in(tmp_path) == before   # no class raster, polygons, probability or temporary folder
