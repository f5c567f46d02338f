"""Fitting a model to the user's own layers (training.finetune.fit_to_layers): the starter fine-tuned on a
procedural scene with labels as a class raster and as polygons, the head remap by class name, the spatial
hold-out, cancel and resume, every refused input, the CLI's --init-from, and one tiny oil-spill and change run."""
from __future__ import annotations

import json
import re

import fiona
import numpy as np
import pytest
import rasterio
import torch
from shapely.geometry import box, mapping

from core.checkpoint import ClassInfo, ModelError, load_card, load_weights
from core.data.scenes import write_scene
from core.progress import Cancelled, Progress
from core.raster import RasterError
from training.finetune import FitParams, fit_to_layers
from training.trainer import STATE_NAME, TrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = dict(steps=2, batch_size=2, patch_size=64)
UTM33 = "EPSG:32633"


class Recorder(Progress):
    def __init__(self, cancel_after_step: int = 0):
        self.lines, self.warnings, self.cancel_after_step, self.step = [], [], cancel_after_step, 0

    def info(self, message):
        self.lines.append(message)
        found = re.match(r"step (\d+)/", message)
        self.step = int(found.group(1)) if found else self.step

    def warning(self, message):
        self.warnings.append(message)

    def is_canceled(self):
        return bool(self.cancel_after_step) and self.step >= self.cancel_after_step


@pytest.fixture
def scene(tmp_path):
    """A 256 x 256 px procedural RGB scene (0.5 m, EPSG:32633) and its class raster (the starter's values)."""
    image, labels = tmp_path / "scene.tif", tmp_path / "scene_labels.tif"
    write_scene(image, labels, 256, 256, seed=3)
    return image, labels


def write_polygons(path, rows, crs=UTM33, field="kind", field_type="str"):
    """rows: (shapely geometry, value) -> a GeoPackage with one class field."""
    schema = {"geometry": "Polygon", "properties": {field: field_type}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs=crs) as dst:
        for geometry, value in rows:
            dst.write({"geometry": mapping(geometry), "properties": {field: value}})
    return path


def pixel_box(image, col0, row0, col1, row1):
    """A polygon over pixel columns col0..col1 and rows row0..row1 of `image`."""
    with rasterio.open(image) as src:
        left, top = src.transform * (col0, row0)
        right, bottom = src.transform * (col1, row1)
    return box(left, bottom, right, top)


def run_folder(output):
    return output.parent / f".{output.name}.fit"


def test_segmentation_from_the_starter_with_a_class_raster(tmp_path, scene, starter_model):
    image, labels = scene
    seen = []
    result = fit_to_layers(FitParams("segmentation", str(image), str(labels), str(tmp_path / "mine"), **TINY,
                                     on_step=lambda step, values: seen.append((step, values))), Recorder())
    card = load_card(result.model_dir, task="segmentation")
    starter = load_card(starter_model)
    assert [(c.value, c.name, c.color) for c in card.classes] == [(c.value, c.name, c.color) for c in starter.classes]
    assert card.extra["fine_tuning"]["base_model"] == starter.name == result.base_model
    image_layer = card.extra["fine_tuning"]["layers"][0]
    assert image_layer["name"] == "scene.tif" and image_layer["data_type"] == "uint8" and "32633" in image_layer["crs"]
    assert image_layer["resolution"] == [0.5, 0.5] and card.ground_resolution == 0.5
    assert card.normalization.offset != starter.normalization.offset       # fitted on the user's data
    assert "mIoU" in result.scores and "mIoU" in result.base_scores and card.metrics == result.scores
    assert card.extra["fine_tuning"]["base_scores"] == result.base_scores
    assert result.steps == 2 and result.train_patches == 12 and result.holdout_patches == 4
    assert [step for step, values in seen if "loss" in values] == [1, 2]      # the live-curve hook
    assert any("mIoU" in values for _, values in seen)
    from core.segmentation.pipeline import SegmentParams, segment_raster      # usable as any model
    out = segment_raster(SegmentParams(input_path=str(image), output_path=str(tmp_path / "map.tif"),
                                       model_dir=result.model_dir))
    with rasterio.open(out.output_path) as dst:
        assert dst.shape == (256, 256)


def test_segmentation_from_polygons_maps_class_names_onto_the_starter(tmp_path, scene, starter_model):
    image, _ = scene
    rows = []
    for top in range(0, 256, 64):   # every patch row has every class, so each one is in the training part
        rows += [(pixel_box(image, 2, top + 2, 60, top + 60), "Vegetation"),
                 (pixel_box(image, 66, top + 2, 124, top + 60), "water"),
                 (pixel_box(image, 130, top + 2, 188, top + 60), "tree")]
    polygons = write_polygons(tmp_path / "labels.gpkg", rows)
    result = fit_to_layers(FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                     class_field="kind", **TINY), Recorder())
    card = load_card(result.model_dir)
    starter = {c.name: c for c in load_card(starter_model).classes}
    by_name = {c.name: c for c in card.classes}
    assert set(by_name) == {"vegetation", "water", "tree"}                  # outside the polygons: unlabelled
    assert by_name["vegetation"].value == starter["vegetation"].value and \
        by_name["vegetation"].color == starter["vegetation"].color
    assert by_name["water"].value == starter["water"].value
    assert by_name["tree"].value == max(c.value for c in starter.values()) + 1   # a new class, a new value
    assert any("kept from the base model: vegetation, water" in n and "new: tree" in n for n in result.notes)


def test_head_remap_keeps_the_rows_of_classes_with_the_same_name(starter_model):
    from core.segmentation.model import HEAD_KEYS, build_segmenter
    from training.transfer import start_from
    starter = load_card(starter_model)
    classes = [ClassInfo(7, "Water", "#0000ff"), ClassInfo(8, "tree", "#00ff00"), ClassInfo(1, "vegetation", "#0f0")]
    model = build_segmenter({**starter.architecture, "classes": 3})
    notes = start_from(model, str(starter_model), starter, classes, HEAD_KEYS, 3)
    base, mine = load_weights(starter_model), model.state_dict()
    water, vegetation = [c.name for c in starter.classes].index("water"), 1
    for key in HEAD_KEYS:
        assert torch.equal(mine[key][0], base[key][water])
        assert torch.equal(mine[key][2], base[key][vegetation])
        assert not torch.equal(mine[key][1], base[key][water])              # "tree" is new
    body = [k for k in base if k not in HEAD_KEYS]
    assert all(torch.equal(mine[k], base[k]) for k in body)
    assert "new: tree" in notes[1]


def test_a_different_band_count_reinitialises_the_first_convolution(tmp_path, starter_model):
    from core.raster import write_geotiff
    image, labels = tmp_path / "rgb.tif", tmp_path / "labels.tif"
    write_scene(image, labels, 192, 192, seed=5)
    with rasterio.open(image) as src:
        rgb, crs, transform = src.read(), src.crs.to_wkt(), tuple(src.transform)[:6]
    four = write_geotiff(tmp_path / "four.tif", np.concatenate([rgb, rgb[:1]]).astype(np.uint16) * 40,
                         crs_wkt=crs, transform=transform)
    result = fit_to_layers(FitParams("segmentation", str(four), str(labels), str(tmp_path / "mine"), **TINY))
    assert any("takes 3 band(s)" in n and "the data has 4" in n and "re-initialised" in n for n in result.notes)
    card = load_card(result.model_dir)
    assert card.architecture["in_channels"] == 4 and len(card.bands) == 4
    assert card.extra["fine_tuning"]["layers"][0]["data_type"] == "uint16"


def test_the_hold_out_is_whole_blocks_that_no_training_patch_overlaps(tmp_path, scene):
    image, labels = scene
    output = tmp_path / "mine"
    fit_to_layers(FitParams("segmentation", str(image), str(labels), str(output), **TINY))
    run = run_folder(output)

    def footprints(folder):
        boxes = []
        for path in sorted((run / folder / "images").iterdir()):
            with rasterio.open(path) as src:
                boxes.append(box(*src.bounds))
        return boxes

    train, held = footprints("patches"), footprints("holdout")
    assert len(train) == 12 and len(held) == 4
    assert all(t.intersection(h).area == 0 for t in train for h in held)
    assert max(h.bounds[3] for h in held) <= min(t.bounds[1] for t in train) + 1e-6   # the bottom row of patches


def test_cancel_keeps_the_last_step_and_the_same_call_resumes(tmp_path, scene):
    image, labels = scene
    params = FitParams("segmentation", str(image), str(labels), str(tmp_path / "mine"), steps=4, batch_size=2,
                       patch_size=64)
    with pytest.raises(Cancelled):
        fit_to_layers(params, Recorder(cancel_after_step=2))
    state = torch.load(run_folder(tmp_path / "mine") / STATE_NAME, weights_only=True)
    assert state["step"] == 2 and not (tmp_path / "mine").exists()
    progress = Recorder()
    result = fit_to_layers(params, progress)
    assert result.steps == 4 and any("resuming" in line for line in progress.lines)
    assert [line.split(":")[0] for line in progress.lines if line.startswith("step ")] == ["step 3/4", "step 4/4"]


def test_a_time_budget_stops_early_and_still_writes_the_model(tmp_path, scene):
    image, labels = scene
    result = fit_to_layers(FitParams("segmentation", str(image), str(labels), str(tmp_path / "mine"), steps=50,
                                     batch_size=2, patch_size=64, time_budget_minutes=1e-6))
    assert result.stopped_early and result.steps == 1 and load_card(result.model_dir).extra["steps"] == 1


# --- refused before training ---------------------------------------------------------------------------------

def assert_refused(tmp_path, params, error, match):
    with pytest.raises(error, match=match):
        fit_to_layers(params, Recorder())
    assert not (tmp_path / "mine").exists() and not run_folder(tmp_path / "mine").exists()


def test_labels_outside_the_image_are_refused(tmp_path, scene):
    image, labels = scene
    with rasterio.open(labels) as src:
        data, profile = src.read(), src.profile
    profile["transform"] = rasterio.Affine(0.5, 0, 100000, 0, -0.5, 1000000)     # far away
    with rasterio.open(tmp_path / "elsewhere.tif", "w", **profile) as dst:
        dst.write(data)
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(tmp_path / "elsewhere.tif"),
                                       str(tmp_path / "mine"), **TINY), RasterError, "lie outside image 'scene.tif'")
    from core.data.change import write_change_pair
    a, b, change = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "change.tif"
    write_change_pair(a, b, change, 128, 128, seed=1)
    assert_refused(tmp_path, FitParams("change", str(a), str(tmp_path / "elsewhere.tif"), str(tmp_path / "mine"),
                                       image_b_path=str(b), **TINY), RasterError, "lie outside image 'a.tif'")


def test_a_missing_or_empty_class_field_is_refused(tmp_path, scene):
    image, _ = scene
    polygons = write_polygons(tmp_path / "labels.gpkg", [(pixel_box(image, 0, 0, 100, 100), None)])
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                       class_field="class", **TINY), RasterError, "has no field 'class'.*kind")
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                       class_field="kind", **TINY), RasterError, "no polygon with a value in.*'kind'")


def test_fewer_labelled_pixels_than_one_patch_are_refused(tmp_path, scene):
    image, _ = scene
    polygons = write_polygons(tmp_path / "labels.gpkg", [(pixel_box(image, 10, 10, 40, 40), "water"),
                                                         (pixel_box(image, 10, 140, 40, 170), "water")])
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                       class_field="kind", **TINY), TrainingError, "fewer than one patch")


def test_the_held_out_block_leaves_every_class_for_training(tmp_path, scene):
    image, _ = scene
    rows = [(pixel_box(image, 0, top, 256, top + 64), "vegetation") for top in range(0, 192, 64)]
    rows.append((pixel_box(image, 0, 192, 256, 256), "water"))              # water only in the bottom row
    polygons = write_polygons(tmp_path / "labels.gpkg", rows)
    result = fit_to_layers(FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                     class_field="kind", **TINY))
    held = sorted(p.name for p in (run_folder(tmp_path / "mine") / "holdout" / "images").iterdir())
    assert held and all("_r000128_" in name for name in held)               # the lowest block that keeps water
    assert result.holdout_patches == 4


def test_a_class_only_in_the_held_out_blocks_is_refused(tmp_path, scene):
    image, _ = scene
    rows = [(pixel_box(image, 0, 0, 128, 128), "vegetation"), (pixel_box(image, 128, 0, 256, 64), "tree"),
            (pixel_box(image, 128, 64, 256, 128), "water")]   # two patch rows: holding out either loses a class
    polygons = write_polygons(tmp_path / "labels.gpkg", rows)
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(polygons), str(tmp_path / "mine"),
                                       class_field="kind", **TINY), TrainingError,
                   "'(tree|water)' have no labelled pixel in the training part")


def test_labels_in_another_crs_are_reprojected_with_a_note(tmp_path, scene):
    from rasterio.warp import calculate_default_transform, reproject
    image, labels = scene
    with rasterio.open(labels) as src:
        transform, width, height = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height,
                                                               *src.bounds)
        profile = {**src.profile, "crs": "EPSG:4326", "transform": transform, "width": width, "height": height}
        with rasterio.open(tmp_path / "labels_4326.tif", "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=rasterio.enums.Resampling.nearest)
    progress = Recorder()
    result = fit_to_layers(FitParams("segmentation", str(image), str(tmp_path / "labels_4326.tif"),
                                     str(tmp_path / "mine"), **TINY), progress)
    assert any("another coordinate reference system" in w and "reprojected" in w for w in progress.warnings)
    assert load_card(result.model_dir).extra["fine_tuning"]["layers"][1]["crs"] != \
        load_card(result.model_dir).extra["fine_tuning"]["layers"][0]["crs"]


def test_a_base_model_of_another_task_or_band_count_is_refused(tmp_path, scene, sar_starters):
    image, labels = scene
    assert_refused(tmp_path, FitParams("segmentation", str(image), str(labels), str(tmp_path / "mine"),
                                       base_model=str(sar_starters[0]), **TINY), ModelError,
                   "is a 'saross' model, but this tool needs a 'segmentation' model")
    assert_refused(tmp_path, FitParams("oilspill", str(image), str(labels), str(tmp_path / "mine"), band=4,
                                       **TINY), RasterError, "SAR band 4 does not exist: 'scene.tif' has 3")
    from core.data.change import write_change_pair
    a, b, change = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "change.tif"
    write_change_pair(a, b, change, 128, 128, seed=1)
    (tmp_path / "nir").mkdir()
    write_change_pair(tmp_path / "nir" / "a.tif", tmp_path / "nir" / "b.tif", tmp_path / "nir" / "c.tif", 128, 128,
                      seed=1, nir=True)
    assert_refused(tmp_path, FitParams("change", str(a), str(change), str(tmp_path / "mine"),
                                       image_b_path=str(tmp_path / "nir" / "b.tif"), **TINY), RasterError,
                   "'a.tif' has 3 band.* but 'b.tif' has 4: both dates need the same bands")


# --- the command line, oil spills and change -----------------------------------------------------------------

def test_cli_init_from_on_the_segment_subcommand(tmp_path, starter_model):
    from core.data.scenes import write_scene_dataset
    from training.__main__ import main
    write_scene_dataset(tmp_path / "data", 3, 64, seed=2)
    config = tmp_path / "run.toml"
    config.write_text('data = "data"\noutput = "run"\nbatch_size = 2\npatch_size = 64\nsteps = 2\nval_every = 0\n',
                      encoding="utf-8")
    assert main(["segment", "--config", str(config), "--init-from", str(starter_model)]) == 0
    card = load_card(tmp_path / "run" / "model")
    assert card.extra["base_model"] == load_card(starter_model).name
    assert main(["segment", "--config", str(config), "--output", str(tmp_path / "bad"),
                 "--init-from", str(tmp_path / "nowhere")]) == 2


def test_cli_finetune_subcommand(tmp_path, scene, capsys):
    from training.__main__ import main
    image, labels = scene
    assert main(["finetune", "--task", "segmentation", "--image", str(image), "--labels", str(labels),
                 "--output", str(tmp_path / "mine"), "--steps", "1", "--batch-size", "2", "--patch-size", "64"]) == 0
    out = capsys.readouterr().out
    said = json.loads(out[out.index("{\n"):])
    assert said["model"] == str(tmp_path / "mine") and said["steps"] == 1 and "mIoU" in said["scores"]
    assert load_card(tmp_path / "mine").extra["steps"] == 1


def test_oil_spill_fine_tune_on_a_db_scene_with_a_land_mask(tmp_path, sar_starters):
    from core.data.sar import write_land_mask, write_sar_scene
    image, labels = tmp_path / "sar.tif", tmp_path / "sar_labels.tif"
    write_sar_scene(image, labels, 256, 256, seed=4, kind="db")
    land = write_land_mask(labels, tmp_path / "land.gpkg")
    with rasterio.open(labels) as src:      # an analyst's sea / oil labels, with land left to the mask
        values, profile = src.read(1), src.profile
    binary = tmp_path / "sea_oil.tif"
    with rasterio.open(binary, "w", **profile) as dst:
        dst.write(np.where(np.isin(values, (2, 3)), 0, values), 1)
    result = fit_to_layers(FitParams("oilspill", str(image), str(binary), str(tmp_path / "mine"),
                                     land_mask_path=str(land), **TINY), Recorder())
    card = load_card(result.model_dir, task="saross")
    assert [(c.value, c.name) for c in card.classes] == [(0, "sea"), (1, "oil")]   # land left out: no land class
    assert card.architecture["classes"] == 2 and card.extra["sar_scaling"]["to_db"]
    assert "IoU/oil" in result.scores and "IoU/oil" in result.base_scores


def test_change_fine_tune_from_change_polygons(tmp_path, change_starters):
    from core.data.change import write_change_pair
    a, b, change = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "change.tif"
    write_change_pair(a, b, change, 256, 256, seed=3)
    from core.vector import polygonize
    from core.data.change import CHANGE_CLASSES
    polygons = polygonize(change, tmp_path / "changes.gpkg", [ClassInfo(**c) for c in CHANGE_CLASSES],
                          only_values=[1])
    result = fit_to_layers(FitParams("change", str(a), str(polygons), str(tmp_path / "mine"), image_b_path=str(b),
                                     **TINY), Recorder())
    card = load_card(result.model_dir, task="changedet")
    weights = card.extra["fine_tuning"]["class_weights"]
    assert weights[1] > weights[0]                                # change is rare: it weighs more
    assert "IoU" in result.scores and "IoU" in result.base_scores
