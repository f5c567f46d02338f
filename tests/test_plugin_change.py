"""Change detection in real QGIS: rsdiffusion:detect_changes (grid kept, polygons with areas, B on another grid,
bad band counts, a real DSIFN pair), rsdiffusion:build_change_training_set (raster mask, polygon layer) and
rsdiffusion:synthesize_change_pairs through Processing, and the dock's "Change" tab (QgsTask, styled layers,
cancel), all with the tiny models of tests/change_fixtures.py.

Tests parametrised with "starter" run with the shipped starter models (the default MODEL) and are skipped
until `make starter-rdfmig` has shipped them; their "tiny" twins run the same checks with the tiny models.
"""
import csv
import os
import subprocess
import sys

import fiona
import numpy as np
import pytest
import rasterio
from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsPalettedRasterRenderer,
                       QgsProcessingException, QgsProcessingFeedback, QgsVectorLayer)
from shapely.geometry import box, mapping

from core.catalog import starter_model_dir
from core.data.change import read_change_mask, write_change_pair
from tests.change_fixtures import change_data, change_pair, tiny_changedet, tiny_rdfmig  # noqa: F401
from tests.conftest import REPO, UTM33, files_in, read_polygons, shared_data, write_test_raster
from tests.plugin_helpers import add_raster_layer, run_then_cancel

pytestmark = [pytest.mark.qgis, pytest.mark.usefixtures("one_torch_thread")]
DETECT = "rsdiffusion:detect_changes"
BUILD = "rsdiffusion:build_change_training_set"
SYNTHESIZE = "rsdiffusion:synthesize_change_pairs"
POLYGON_FIELDS = ["class_id", "class_name", "area_m2", "area_km2"]
PIXEL_AREA_M2 = 0.25   # procedural pairs: 0.5 m pixels


def starter_or_skip(task: str) -> str:
    """"" (MODEL left out: the shipped starter, its default) once the starter is shipped; skips until then."""
    if not (starter_model_dir(task) / "model.json").is_file():
        pytest.skip(f"{task} starter not shipped yet: run `make starter-rdfmig`")
    return ""


@pytest.fixture(params=["tiny", "starter"])
def changedet_model(request) -> str:
    """The tiny detector's directory, or "" for the shipped starter."""
    if request.param == "starter":
        return starter_or_skip("changedet")
    return str(request.getfixturevalue("tiny_changedet"))


@pytest.fixture(params=["tiny", "starter"])
def rdfmig_model(request) -> str:
    """The tiny RDF-MIG model's directory, or "" for the shipped starter."""
    if request.param == "starter":
        return starter_or_skip("rdfmig")
    return str(request.getfixturevalue("tiny_rdfmig"))


def grid(path):
    with rasterio.open(path) as src:
        return src.crs, src.transform, src.width, src.height


def read1(path):
    with rasterio.open(path) as src:
        return src.read(1)


def feedback_log() -> tuple[QgsProcessingFeedback, list[str]]:
    feedback, log = QgsProcessingFeedback(), []
    feedback.pushInfo = log.append
    feedback.pushWarning = log.append
    return feedback, log


def loaded(project, path):
    return [layer for layer in project.mapLayers().values() if layer.source().split("|")[0] == str(path)]


def rewrite(source, target, bands=None, scale=1, repeat=1):
    """`source`'s bands (1-based list; all when None), every `scale`-th pixel, tiled `repeat` x `repeat`,
    as a GeoTIFF at the same origin (pixel size x scale)."""
    with rasterio.open(source) as src:
        data = src.read(bands)[:, ::scale, ::scale]
        transform = src.transform * src.transform.scale(scale, scale)
        return write_test_raster(target, np.tile(data, (1, repeat, repeat)), crs=src.crs.to_wkt(),
                                 transform=tuple(transform)[:6])


def test_algorithms_are_registered_with_the_documented_parameters(processing):
    from core.change.fcsiam import TASK as CHANGEDET_TASK
    from core.change.rdfmig import TASK as RDFMIG_TASK
    from core.data.change import CHANGE_CLASSES
    from rs_diffusion_plugin.algorithms import detect_changes, synthesize_change_pairs
    assert (detect_changes.TASK, detect_changes.CHANGE_CLASSES, synthesize_change_pairs.TASK) == (
        CHANGEDET_TASK, CHANGE_CLASSES, RDFMIG_TASK)
    registry = QgsApplication.processingRegistry()

    detect = registry.algorithmById(DETECT)
    assert detect is not None and detect.group() == "Change detection"
    assert [p.name() for p in detect.parameterDefinitions()] == [
        "INPUT_A", "INPUT_B", "MODEL", "OUTPUT", "OUTPUT_POLYGONS", "OUTPUT_PROBABILITY", "OVERLAP", "BATCH_SIZE",
        "RESAMPLE_TO_MODEL", "DEVICE"]
    p = detect.parameterDefinition
    assert p("MODEL").defaultValue() == str(starter_model_dir("changedet"))
    for name in ("OUTPUT_POLYGONS", "OUTPUT_PROBABILITY"):
        assert p(name).flags() & p(name).FlagOptional and not p(name).createByDefault(), name
    assert (p("OVERLAP").defaultValue(), p("BATCH_SIZE").defaultValue()) == (32, 4)
    for name in ("OVERLAP", "BATCH_SIZE"):
        assert p(name).flags() & p(name).FlagAdvanced, name
    assert {"OUTPUT", "OUTPUT_POLYGONS", "OUTPUT_PROBABILITY", "CHANGED_AREA_KM2", "POLYGONS"} <= {
        o.name() for o in detect.outputDefinitions()}
    assert "resampled" in detect.shortHelpString()

    build = registry.algorithmById(BUILD)
    assert build is not None
    assert [p.name() for p in build.parameterDefinitions()] == [
        "INPUT_A", "INPUT_B", "CHANGES", "PATCH_SIZE", "STRIDE", "OUTPUT_FOLDER", "MAX_NODATA_FRACTION"]
    p = build.parameterDefinition
    assert (p("PATCH_SIZE").defaultValue(), p("STRIDE").defaultValue(), p("MAX_NODATA_FRACTION").defaultValue()) == (
        256, 256, 0)
    assert p("MAX_NODATA_FRACTION").flags() & p("MAX_NODATA_FRACTION").FlagAdvanced
    assert {"OUTPUT_FOLDER", "PATCHES", "SKIPPED"} <= {o.name() for o in build.outputDefinitions()}

    synthesize = registry.algorithmById(SYNTHESIZE)
    assert synthesize is not None
    assert [p.name() for p in synthesize.parameterDefinitions()] == [
        "MODEL", "COUNT", "STEPS", "SEED", "OUTPUT_FOLDER", "BATCH_SIZE", "DEVICE"]
    p = synthesize.parameterDefinition
    assert p("MODEL").defaultValue() == str(starter_model_dir("rdfmig"))
    assert (p("COUNT").defaultValue(), p("STEPS").defaultValue(), p("SEED").defaultValue()) == (16, 50, 0)
    assert p("BATCH_SIZE").flags() & p("BATCH_SIZE").FlagAdvanced
    assert {"OUTPUT_FOLDER", "INDEX", "PREVIEW", "TRIPLETS"} <= {o.name() for o in synthesize.outputDefinitions()}


def test_detect_through_processing_keeps_the_grid_and_writes_polygons(processing, project, tmp_path, change_pair,  # noqa: F811
                                                                      changedet_model):
    a, b, _ = change_pair
    feedback, log = feedback_log()
    parameters = {"INPUT_A": str(a), "INPUT_B": str(b), "OUTPUT": str(tmp_path / "changes.tif"),
                  "OUTPUT_POLYGONS": str(tmp_path / "changes.gpkg"), "OUTPUT_PROBABILITY": str(tmp_path / "p.tif")}
    if changedet_model:
        parameters["MODEL"] = changedet_model
    result = processing.runAndLoadResults(DETECT, parameters, feedback=feedback)

    assert grid(result["OUTPUT"]) == grid(a)
    changes = read1(result["OUTPUT"])
    assert set(np.unique(changes)) <= {0, 1}
    probability = read1(result["OUTPUT_PROBABILITY"])
    assert ((probability >= 0) & (probability <= 1)).all()
    np.testing.assert_array_equal(changes == 1, probability > 0.5)
    rows, crs = read_polygons(result["OUTPUT_POLYGONS"])
    assert crs.to_epsg() == 32633
    assert result["POLYGONS"] == len(rows) and all(r["class_name"] == "change" and r["area_m2"] > 0 for r in rows)
    assert sum(r["area_m2"] for r in rows) == pytest.approx(np.count_nonzero(changes) * PIXEL_AREA_M2)
    assert result["CHANGED_AREA_KM2"] == pytest.approx(sum(r["area_km2"] for r in rows), abs=1e-5)
    assert not any("resampled" in line for line in log)
    if changedet_model:   # the tiny detector finds a few of the pair's new or demolished buildings
        assert rows and 0 < np.count_nonzero(changes) < changes.size / 4

    raster = loaded(project, result["OUTPUT"])
    assert len(raster) == 1 and isinstance(raster[0].renderer(), QgsPalettedRasterRenderer)
    colours = {c.value: c.color for c in raster[0].renderer().classes()}
    assert colours[0].alpha() == 0 and colours[1].name() == "#ff0000" and colours[1].alpha() == 255
    polygons = loaded(project, result["OUTPUT_POLYGONS"])
    assert len(polygons) == 1 and polygons[0].fields().names()[-4:] == POLYGON_FIELDS
    assert isinstance(polygons[0].renderer(), QgsCategorizedSymbolRenderer)


def test_b_on_another_grid_is_resampled_onto_the_grid_of_a(processing, tmp_path, change_pair,  # noqa: F811
                                                          tiny_changedet):  # noqa: F811
    a, b, _ = change_pair
    coarse = rewrite(b, tmp_path / "b_coarse.tif", scale=2)   # 1 m pixels: another size and resolution
    assert grid(coarse) != grid(a)
    feedback, log = feedback_log()
    result = processing.run(DETECT, {"INPUT_A": str(a), "INPUT_B": str(coarse), "MODEL": str(tiny_changedet),
                                     "OUTPUT": str(tmp_path / "changes.tif")}, feedback=feedback)
    assert grid(result["OUTPUT"]) == grid(a)
    assert any("'b_coarse' is on another grid than 'a': resampled" in line for line in log), log
    # No polygons asked for: the changed area comes from the pixel count
    assert result["POLYGONS"] == 0
    changed = np.count_nonzero(read1(result["OUTPUT"]) == 1)
    assert result["CHANGED_AREA_KM2"] == pytest.approx(changed * PIXEL_AREA_M2 / 1e6)
    assert not list(tmp_path.glob("*.gpkg"))


def test_extra_bands_of_b_are_left_out_with_a_message(processing, tmp_path, change_pair,  # noqa: F811
                                                      tiny_changedet):  # noqa: F811
    a, b, _ = change_pair
    four = rewrite(b, tmp_path / "b4.tif", bands=[1, 2, 3, 3])
    feedback, log = feedback_log()
    result = processing.run(DETECT, {"INPUT_A": str(a), "INPUT_B": str(four), "MODEL": str(tiny_changedet),
                                     "OUTPUT": str(tmp_path / "changes.tif")}, feedback=feedback)
    assert grid(result["OUTPUT"]) == grid(a)
    assert any("Date B 'b4' has 4 bands; the model 'tiny changedet' reads bands 1-3" in line for line in log)


@pytest.mark.parametrize("case, message", [
    ("two bands", "Layer 'b2' has 2 band(s) but the model needs 3 (red, green, blue)."),
    ("rdfmig model", "is a 'rdfmig' model, but this tool needs a 'changedet'"),
    ("shapefile polygons", "Polygons are written as a GeoPackage: use a .gpkg file name"),
])
def test_bad_inputs_are_processing_errors_and_write_nothing(processing, tmp_path, change_pair, tiny_changedet,  # noqa: F811
                                                            tiny_rdfmig, case, message):  # noqa: F811
    a, b, _ = change_pair
    parameters = {"INPUT_A": str(a), "INPUT_B": str(b), "MODEL": str(tiny_changedet),
                  "OUTPUT": str(tmp_path / "out" / "changes.tif"), "OUTPUT_POLYGONS": str(tmp_path / "out" / "c.gpkg")}
    if case == "two bands":
        parameters["INPUT_B"] = str(rewrite(b, tmp_path / "b2.tif", bands=[1, 2]))
    elif case == "rdfmig model":
        parameters["MODEL"] = str(tiny_rdfmig)
    else:
        parameters["OUTPUT_POLYGONS"] = str(tmp_path / "out" / "c.shp")
    before = files_in(tmp_path)
    with pytest.raises(QgsProcessingException, match=message.replace(".", r"\.").replace("(", r"\(").replace(
            ")", r"\)")):
        processing.run(DETECT, parameters)
    assert files_in(tmp_path) == before
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_real_dsifn_pair_as_geotiffs_through_processing(processing, tmp_path, tiny_changedet):  # noqa: F811
    folder = shared_data("cd_dsifn")
    transform = (2.0, 0.0, 500000.0, 0.0, -2.0, 5600000.0)   # any UTM grid: 2 m pixels in UTM 33N
    paths = []
    for date in ("A", "B"):
        with rasterio.open(folder / date / "0_2.png") as src:
            paths.append(write_test_raster(tmp_path / f"dsifn_{date}.tif", src.read(), transform=transform))
    result = processing.run(DETECT, {"INPUT_A": str(paths[0]), "INPUT_B": str(paths[1]),
                                     "MODEL": str(tiny_changedet), "OUTPUT": str(tmp_path / "changes.tif"),
                                     "OUTPUT_POLYGONS": str(tmp_path / "changes.gpkg")})
    with rasterio.open(result["OUTPUT"]) as out:
        assert out.shape == (256, 256) and out.crs.to_wkt() == UTM33 and out.transform == grid(paths[0])[1]
        changes = out.read(1)
    assert set(np.unique(changes)) <= {0, 1}
    rows, _ = read_polygons(result["OUTPUT_POLYGONS"])
    assert sum(r["area_m2"] for r in rows) == pytest.approx(np.count_nonzero(changes) * 4.0)
    assert read_change_mask(folder / "label" / "0_2.png").shape == changes.shape


# --- change training sets ---------------------------------------------------------------------------

def test_build_change_training_set_from_a_change_raster(processing, tmp_path, change_pair):  # noqa: F811
    a, b, label = change_pair
    result = processing.run(BUILD, {"INPUT_A": str(a), "INPUT_B": str(b), "CHANGES": str(label), "PATCH_SIZE": 32,
                                    "STRIDE": 32, "OUTPUT_FOLDER": str(tmp_path / "set")})
    folder = tmp_path / "set"
    assert result["OUTPUT_FOLDER"] == str(folder) and (result["PATCHES"], result["SKIPPED"]) == (6, 0)   # 2 x 3
    assert files_in(folder) == {"A", "B", "label"}
    assert files_in(folder / "A") == files_in(folder / "B") == files_in(folder / "label")
    truth = read1(label)
    with rasterio.open(a) as src:
        a_transform = src.transform
    for name in files_in(folder / "label"):
        with rasterio.open(folder / "label" / name) as patch:
            col, row = (~a_transform) * (patch.transform.c, patch.transform.f)
            r, c = int(round(row)), int(round(col))
            np.testing.assert_array_equal(patch.read(1), truth[r:r + 32, c:c + 32])


def test_build_change_training_set_from_a_polygon_layer(processing, tmp_path, change_pair):  # noqa: F811
    a, b, _ = change_pair
    with rasterio.open(a) as src:
        x0, y0 = src.transform.c, src.transform.f
    building = box(x0 + 5.0, y0 - 15.0, x0 + 15.0, y0 - 5.0)   # pixels 10..30 of A (0.5 m)
    schema = {"geometry": "Polygon", "properties": {"kind": "str"}}
    with fiona.open(tmp_path / "changes.gpkg", "w", driver="GPKG", crs="EPSG:32633", schema=schema,
                    layer="new_buildings") as dst:
        dst.write({"geometry": mapping(building), "properties": {"kind": "new building"}})
    layer = QgsVectorLayer(f"{tmp_path / 'changes.gpkg'}|layername=new_buildings", "new buildings", "ogr")
    assert layer.isValid()
    result = processing.run(BUILD, {"INPUT_A": str(a), "INPUT_B": str(b), "CHANGES": layer, "PATCH_SIZE": 64,
                                    "STRIDE": 64, "OUTPUT_FOLDER": str(tmp_path / "set")})
    assert (result["PATCHES"], result["SKIPPED"]) == (1, 0)
    (name,) = files_in(tmp_path / "set" / "label")
    expected = np.zeros((64, 64), np.uint8)
    expected[10:30, 10:30] = 1
    np.testing.assert_array_equal(read1(tmp_path / "set" / "label" / name), expected)


def test_changes_that_are_not_polygons_are_a_processing_error(processing, tmp_path, change_pair):  # noqa: F811
    a, b, _ = change_pair
    schema = {"geometry": "LineString", "properties": {"kind": "str"}}
    with fiona.open(tmp_path / "roads.gpkg", "w", driver="GPKG", crs="EPSG:32633", schema=schema) as dst:
        dst.write({"geometry": {"type": "LineString", "coordinates": [(0.0, 0.0), (1.0, 1.0)]},
                   "properties": {"kind": "road"}})
    layer = QgsVectorLayer(str(tmp_path / "roads.gpkg"), "roads", "ogr")
    assert layer.isValid()
    with pytest.raises(QgsProcessingException, match="Layer 'roads' does not hold polygons"):
        processing.run(BUILD, {"INPUT_A": str(a), "INPUT_B": str(b), "CHANGES": layer,
                               "OUTPUT_FOLDER": str(tmp_path / "set")})
    assert not (tmp_path / "set").exists()


# --- generated triplets -----------------------------------------------------------------------------

def test_synthesize_change_pairs_through_processing(processing, tmp_path, rdfmig_model):
    parameters = {"COUNT": 3, "STEPS": 2, "SEED": 1, "BATCH_SIZE": 2, "OUTPUT_FOLDER": str(tmp_path / "triplets")}
    if rdfmig_model:
        parameters["MODEL"] = rdfmig_model
    result = processing.run(SYNTHESIZE, parameters)
    folder = tmp_path / "triplets"
    assert result["TRIPLETS"] == 3 and result["OUTPUT_FOLDER"] == str(folder)
    assert result["INDEX"] == str(folder / "index.csv") and result["PREVIEW"] == str(folder / "preview.png")
    assert files_in(folder) == {"A", "B", "label", "index.csv", "preview.png"}
    names = {f"change_{i:05d}.tif" for i in range(3)}
    assert files_in(folder / "A") == files_in(folder / "B") == files_in(folder / "label") == names
    with open(folder / "index.csv", newline="") as f:
        assert [row["label"] for row in csv.DictReader(f)] == [f"label/{n}" for n in sorted(names)]
    with rasterio.open(folder / "A" / "change_00002.tif") as a, rasterio.open(folder / "B" / "change_00002.tif") as b:
        assert a.count == b.count == 3 and a.shape == b.shape and a.crs is None
    assert set(np.unique(read1(folder / "label" / "change_00000.tif"))) <= {0, 1}


# --- the dock tab -----------------------------------------------------------------------------------

@pytest.fixture
def change_tab(qtbot, project):
    from rs_diffusion_plugin.dock import RsDiffusionDock
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    titles = [dock.tabs.tabText(i) for i in range(dock.tabs.count())]
    assert titles[-3:] == ["Fusion", "Change", "Train"]
    yield dock.change_tab   # not return: the dock must live as long as its tab


def test_tab_shows_the_model(change_tab, tmp_path, tiny_changedet):  # noqa: F811
    tab = change_tab
    assert tab.model_picker.path() == str(starter_model_dir("changedet"))
    assert not tab.polygons_check.isChecked()
    tab.model_picker.set_path(str(tiny_changedet))
    assert tab.model_picker.label.text().startswith("tiny changedet: changedet model; classes no change, change; bands red, green, blue")
    tab.model_picker.set_path(str(tmp_path))
    assert "model.json not found" in tab.model_picker.label.text()


def test_tab_runs_and_adds_the_styled_changes_and_polygons(qtbot, change_tab, project, tmp_path, change_pair,  # noqa: F811
                                                           tiny_changedet):  # noqa: F811
    tab = change_tab
    a, b, _ = change_pair
    layer_a = add_raster_layer(a, "2019", project)
    tab.layer_a_combo.setLayer(layer_a)
    tab.layer_b_combo.setLayer(add_raster_layer(rewrite(b, tmp_path / "b_coarse.tif", scale=2), "2023", project))
    tab.model_picker.set_path(str(tiny_changedet))
    tab.polygons_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "changes.tif"))   # a folder that does not exist yet

    tab.run_button.click()
    assert not tab.run_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=60000)
    log = tab.log.toPlainText()
    assert "Error" not in log, log
    assert "Added 'changes'" in log and tab.progress_bar.value() == 100
    assert "Warning: Layer '2023' is on another grid than '2019': resampled" in log
    assert "date B resampled onto the grid of date A" in log
    changes = project.mapLayersByName("changes")
    assert len(changes) == 1 and changes[0].crs() == layer_a.crs() and changes[0].extent() == layer_a.extent()
    assert isinstance(changes[0].renderer(), QgsPalettedRasterRenderer)
    changed = np.count_nonzero(read1(tmp_path / "out" / "changes.tif") == 1)
    assert f"{changed} changed pixel(s); {changed * PIXEL_AREA_M2 / 1e6:.4f} km² changed" in log
    polygons = project.mapLayersByName("changes polygons")
    assert len(polygons) == 1 and isinstance(polygons[0].renderer(), QgsCategorizedSymbolRenderer)
    assert polygons[0].featureCount() > 0 and f"{polygons[0].featureCount()} change polygon(s)" in log
    assert files_in(tmp_path / "out") == {"changes.tif", "changes.gpkg"}


def test_tab_without_layers_says_so(change_tab, project):
    change_tab.run_button.click()
    assert "Error: No valid raster layer selected." in change_tab.log.toPlainText()
    assert change_tab.run_button.isEnabled() and QgsApplication.taskManager().countActiveTasks() == 0


def test_tab_cancel_adds_nothing_and_writes_nothing(qtbot, change_tab, project, tmp_path, tiny_changedet):  # noqa: F811
    tab = change_tab
    write_change_pair(tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "label.tif", 72, 96, seed=3)
    big_a, big_b = (rewrite(tmp_path / f"{d}.tif", tmp_path / f"big_{d}.tif", repeat=8) for d in "ab")
    tab.layer_a_combo.setLayer(add_raster_layer(big_a, "big a", project))   # 768 x 576 px: ~400 tiles of 64 px
    tab.layer_b_combo.setLayer(add_raster_layer(big_b, "big b", project))
    tab.model_picker.set_path(str(tiny_changedet))
    tab.polygons_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "big_changes.tif"))
    before = set(project.mapLayers())
    run_then_cancel(qtbot, tab, timeout=30000)
    assert set(project.mapLayers()) == before
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()


def test_creating_the_tab_loads_no_change_model_code():
    """The tab reads the detector's card only: core.change loads when a run starts."""
    code = ("import sys\n"
            "from qgis.core import QgsApplication\n"
            "app = QgsApplication([], False)\n"
            "from rs_diffusion_plugin.change_tab import ChangeTab\n"
            "tab = ChangeTab()\n"
            "print(sorted(m for m in sys.modules if m.startswith('core.change') or m == 'core.data.change'))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "[]", run.stdout

