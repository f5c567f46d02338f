"""SAR oil spills in real QGIS: rsdiffusion:detect_oil_spills and rsdiffusion:synthesize_sar_pairs
through Processing, and the dock's "Oil spills" tab (QgsTask, styled layers, land mask, cancel), on the
real sample crops written as georeferenced rasters.

Tests parametrised with "starter" run with the shipped starter models (the default MODEL) and need
`make starter-models`; their "tiny" twins run the same checks with the tiny models of tests/sar_fixtures.py.
"""
import fiona
import numpy as np
import pytest
import rasterio
from fiona.transform import transform_geom
from qgis.core import (QgsApplication, QgsCategorizedSymbolRenderer, QgsPalettedRasterRenderer,
                       QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer, QgsVectorLayer)
from shapely.geometry import box, mapping

from core.catalog import starter_model_dir
from core.data.sar import LAND, OIL, SAR_CLASSES
from core.raster import write_geotiff
from tests.conftest import files_in, read_polygons
from tests.sar_fixtures import CROP_ORIGIN, CROP_RESOLUTION, SAR_WKT, sar_models, write_real_crop  # noqa: F401

from tests.plugin_helpers import add_raster_layer, run_then_cancel

pytestmark = [pytest.mark.qgis, pytest.mark.usefixtures("one_torch_thread")]
DETECT, SYNTHESIZE = "rsdiffusion:detect_oil_spills", "rsdiffusion:synthesize_sar_pairs"
FILTER = "rsdiffusion:filter_sar_pairs"
POLYGON_FIELDS = ["class_id", "class_name", "area_m2", "area_km2", "mean_oil_prob"]
LAND_COLUMNS = 64   # the land mask covers the crop's 64 westernmost columns
CLASS_NAMES = [c.name for c in SAR_CLASSES]


@pytest.fixture(params=["tiny", "starter"])
def saross_model(request) -> str:
    """The tiny model's directory, or "" for the shipped starter (MODEL left out: its default)."""
    if request.param == "starter":
        request.getfixturevalue("sar_starters")
        return ""
    return str(request.getfixturevalue("sar_models").saross)


@pytest.fixture(params=["tiny", "starter"])
def jointnet_model(request) -> str:
    """The tiny stage-3 SAR-JointNet's directory, or "" for the shipped starter."""
    if request.param == "starter":
        request.getfixturevalue("sar_starters")
        return ""
    return str(request.getfixturevalue("sar_models").jointnet)


def write_land_gpkg(path, columns=LAND_COLUMNS, rows=256) -> QgsVectorLayer:
    """A GeoPackage in WGS 84 (not the crop's UTM 34N: Processing and core must reproject) with one
    polygon over the crop's `columns` westernmost columns."""
    x0, y0 = CROP_ORIGIN
    utm = box(x0, y0 - rows * CROP_RESOLUTION, x0 + columns * CROP_RESOLUTION, y0)
    schema = {"geometry": "Polygon", "properties": {"name": "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs="EPSG:4326", layer="coast") as dst:
        dst.write({"geometry": transform_geom(SAR_WKT, "EPSG:4326", mapping(utm)), "properties": {"name": "land"}})
    layer = QgsVectorLayer(f"{path}|layername=coast", "coast", "ogr")
    assert layer.isValid() and layer.featureCount() == 1
    return layer


def read1(path):
    with rasterio.open(path) as src:
        return src.read(1)


def loaded(project, path):
    return [layer for layer in project.mapLayers().values() if layer.source().split("|")[0] == str(path)]


def test_algorithms_are_registered_with_the_documented_parameters(processing):
    registry = QgsApplication.processingRegistry()
    detect = registry.algorithmById(DETECT)
    assert detect is not None and detect.group() == "SAR oil spills"
    assert [p.name() for p in detect.parameterDefinitions()] == [
        "INPUT", "MODEL", "LAND_MASK", "OUTPUT", "OUTPUT_POLYGONS", "OUTPUT_PROBABILITY", "BAND", "INPUT_KIND",
        "OVERLAP", "BATCH_SIZE", "RESAMPLE_TO_MODEL", "DEVICE"]
    assert detect.parameterDefinition("MODEL").defaultValue() == str(starter_model_dir("saross"))
    assert detect.parameterDefinition("LAND_MASK").flags() & detect.parameterDefinition("LAND_MASK").FlagOptional
    assert detect.parameterDefinition("OUTPUT_POLYGONS").createByDefault()
    assert not detect.parameterDefinition("OUTPUT_PROBABILITY").createByDefault()
    assert detect.parameterDefinition("INPUT_KIND").options() == ["auto", "linear", "db", "amplitude"]
    assert detect.parameterDefinition("INPUT_KIND").defaultValue() == "auto"
    assert {"OIL_AREA_KM2", "SLICKS"} <= {o.name() for o in detect.outputDefinitions()}

    synthesize = registry.algorithmById(SYNTHESIZE)
    assert synthesize is not None and synthesize.group() == "SAR oil spills"
    assert {"MODEL", "COUNT", "STEPS", "SEED", "BATCH_SIZE", "DEVICE", "OUTPUT_FOLDER"} == {
        p.name() for p in synthesize.parameterDefinitions()}
    assert synthesize.parameterDefinition("MODEL").defaultValue() == str(starter_model_dir("sar-jointnet"))
    assert synthesize.parameterDefinition("STEPS").defaultValue() == 200   # the paper's DDIM steps
    assert {"INDEX", "PREVIEW", "PAIRS"} <= {o.name() for o in synthesize.outputDefinitions()}


@pytest.mark.parametrize("crop", [0, 5])
def test_detect_real_crop_through_processing(processing, project, tmp_path, saross_model, crop):
    image, _ = write_real_crop(tmp_path / f"crop{crop}.tif", index=crop)
    layer = QgsRasterLayer(str(image), "real crop")
    feedback = QgsProcessingFeedback()
    log = []
    feedback.pushInfo = log.append
    parameters = {"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"),
                  "OUTPUT_POLYGONS": str(tmp_path / "slicks.gpkg"), "OUTPUT_PROBABILITY": str(tmp_path / "p.tif")}
    if saross_model:
        parameters["MODEL"] = saross_model
    result = processing.runAndLoadResults(DETECT, parameters, feedback=feedback)

    with rasterio.open(image) as src, rasterio.open(result["OUTPUT"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        classes = out.read(1)
    assert set(np.unique(classes)) <= {c.value for c in SAR_CLASSES}
    rows, crs = read_polygons(result["OUTPUT_POLYGONS"])
    assert crs.to_epsg() == 32634
    assert result["SLICKS"] == len(rows) and all(r["class_name"] == "oil" and r["area_m2"] > 0 for r in rows)
    assert sum(r["area_m2"] for r in rows) == pytest.approx(np.count_nonzero(classes == OIL) * 100.0)
    assert result["OIL_AREA_KM2"] == pytest.approx(sum(r["area_km2"] for r in rows), abs=1e-5)
    assert 0 <= read1(result["OUTPUT_PROBABILITY"]).min() and read1(result["OUTPUT_PROBABILITY"]).max() <= 1
    assert any("amplitude input" in line for line in log)   # 8-bit crops are read as amplitude

    class_layer, polygon_layer = loaded(project, result["OUTPUT"]), loaded(project, result["OUTPUT_POLYGONS"])
    assert len(class_layer) == 1 and isinstance(class_layer[0].renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in class_layer[0].renderer().classes()] == CLASS_NAMES
    assert class_layer[0].crs() == layer.crs() and class_layer[0].extent() == layer.extent()
    assert len(polygon_layer) == 1 and polygon_layer[0].fields().names()[-5:] == POLYGON_FIELDS
    assert isinstance(polygon_layer[0].renderer(), QgsCategorizedSymbolRenderer)
    assert polygon_layer[0].featureCount() == len(rows)
    if not saross_model:   # the starter was trained on procedural scenes; the real crops all hold a slick
        assert np.count_nonzero(classes == OIL) > 0


def test_detect_with_a_land_mask_layer(processing, tmp_path, sar_models):  # noqa: F811
    image, _ = write_real_crop(tmp_path / "crop.tif", index=2)
    land = write_land_gpkg(tmp_path / "land.gpkg")
    result = processing.run(DETECT, {
        "INPUT": str(image), "MODEL": str(sar_models.saross), "LAND_MASK": land, "OVERLAP": 0, "BATCH_SIZE": 8,
        "OUTPUT": str(tmp_path / "classes.tif"), "OUTPUT_POLYGONS": str(tmp_path / "slicks.gpkg"),
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif")})
    classes, probability = read1(result["OUTPUT"]), read1(result["OUTPUT_PROBABILITY"])
    on_land = np.zeros(classes.shape, bool)
    on_land[:, :LAND_COLUMNS] = True
    assert (classes[on_land] == LAND).all()
    np.testing.assert_array_equal(probability == 0, on_land)   # softmax is never exactly 0 off the mask
    rows, _ = read_polygons(result["OUTPUT_POLYGONS"])
    x0, y0 = CROP_ORIGIN
    land_utm = box(x0, y0 - 2560, x0 + LAND_COLUMNS * CROP_RESOLUTION, y0)
    assert rows and all(r["geometry"].intersection(land_utm).area == 0 for r in rows)


def test_model_of_another_task_is_a_processing_error_and_writes_nothing(processing, tmp_path, sar_models):  # noqa: F811
    image, _ = write_real_crop(tmp_path / "crop.tif")
    before = files_in(tmp_path)
    with pytest.raises(QgsProcessingException, match="is a 'sar-jointnet' model, but this tool needs a 'saross'"):
        processing.run(DETECT, {"INPUT": str(image), "MODEL": str(sar_models.jointnet),
                                "OUTPUT": str(tmp_path / "classes.tif"), "OUTPUT_POLYGONS": str(tmp_path / "s.gpkg")})
    assert files_in(tmp_path) == before


def test_synthesize_sar_pairs_through_processing(processing, tmp_path, jointnet_model):
    parameters = {"COUNT": 2, "STEPS": 2, "SEED": 3, "OUTPUT_FOLDER": str(tmp_path / "pairs")}
    if jointnet_model:
        parameters["MODEL"] = jointnet_model
    result = processing.run(SYNTHESIZE, parameters)
    folder = tmp_path / "pairs"
    assert result["PAIRS"] == 2 and result["OUTPUT_FOLDER"] == str(folder)
    assert result["INDEX"] == str(folder / "index.csv") and result["PREVIEW"] == str(folder / "preview.png")
    assert files_in(folder) == {"images", "masks", "soft", "classes.json", "index.csv", "preview.png"}
    names = {"sar_00000.tif", "sar_00001.tif"}
    assert files_in(folder / "images") == files_in(folder / "masks") == files_in(folder / "soft") == names
    with rasterio.open(folder / "soft" / "sar_00001.tif") as soft:
        np.testing.assert_allclose(soft.read().sum(0), 1.0, atol=1e-5)
    assert set(np.unique(read1(folder / "masks" / "sar_00000.tif"))) <= {c.value for c in SAR_CLASSES}


def test_filter_sar_pairs_through_processing(processing, tmp_path, sar_models):
    """Generated pairs scored by a SAROSS-Net (the judge) and the best-agreeing share copied; a cancelled or refused
    run writes nothing."""
    processing.run(SYNTHESIZE, {"MODEL": str(sar_models.jointnet), "COUNT": 4, "STEPS": 2, "SEED": 3,
                                "OUTPUT_FOLDER": str(tmp_path / "pairs")})
    result = processing.run(FILTER, {"MODEL": str(sar_models.saross), "PAIRS": str(tmp_path / "pairs"),
                                     "KEEP": 0.5, "OUTPUT_FOLDER": str(tmp_path / "kept")})
    assert (result["PAIRS"], result["KEPT"]) == (4, 2) and result["MIOU_KEPT"] >= result["MIOU_ALL"]
    kept = files_in(tmp_path / "kept" / "images")
    assert len(kept) == 2 and kept < files_in(tmp_path / "pairs" / "images")
    assert files_in(tmp_path / "kept") == {"images", "masks", "soft", "classes.json"}
    assert files_in(tmp_path / "kept" / "masks") == files_in(tmp_path / "kept" / "soft") == kept

    with pytest.raises(QgsProcessingException, match="not empty"):
        processing.run(FILTER, {"MODEL": str(sar_models.saross), "PAIRS": str(tmp_path / "pairs"),
                                "OUTPUT_FOLDER": str(tmp_path / "kept")})
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    assert processing.run(FILTER, {"MODEL": str(sar_models.saross), "PAIRS": str(tmp_path / "pairs"),
                                   "OUTPUT_FOLDER": str(tmp_path / "cancelled")}, feedback=feedback) == {}
    assert not (tmp_path / "cancelled").exists() or not files_in(tmp_path / "cancelled")


# --- the dock tab ---------------------------------------------------------------------------------

@pytest.fixture
def oil_tab(qtbot, project):
    from rs_diffusion_plugin.dock import RsDiffusionDock
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    yield dock.oilspill_tab   # not return: the dock must live as long as its tab


def test_tab_runs_and_adds_styled_classes_and_slicks(qtbot, oil_tab, project, tmp_path, saross_model):
    tab = oil_tab
    image, _ = write_real_crop(tmp_path / "crop.tif", index=1)
    layer = add_raster_layer(image, "Sentinel-1 VV", project)
    land = write_land_gpkg(tmp_path / "land.gpkg")
    project.addMapLayer(land)
    tab.layer_combo.setLayer(layer)
    tab.land_combo.setLayer(land)
    assert tab.band_combo.currentBand() == 1 and tab.kind_combo.currentText() == "auto"
    assert tab.polygons_check.isChecked()
    if saross_model:
        tab.model_picker.set_path(saross_model)
    assert tab.model_picker.path() == (saross_model or str(starter_model_dir("saross")))
    assert "oil" in tab.model_picker.label.text()
    tab.output_widget.setFilePath(str(tmp_path / "out" / "crop_oil.tif"))   # a folder that does not exist yet

    tab.run_button.click()
    assert not tab.run_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=120000)
    assert "Error" not in tab.log.toPlainText(), tab.log.toPlainText()
    assert "Added 'crop_oil'" in tab.log.toPlainText() and tab.progress_bar.value() == 100

    classes = project.mapLayersByName("crop_oil")
    assert len(classes) == 1 and classes[0].crs() == layer.crs() and classes[0].extent() == layer.extent()
    assert isinstance(classes[0].renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in classes[0].renderer().classes()] == CLASS_NAMES
    assert (read1(tmp_path / "out" / "crop_oil.tif")[:, :LAND_COLUMNS] == LAND).all()
    slicks = project.mapLayersByName("crop_oil polygons")
    assert len(slicks) == 1 and slicks[0].source().split("|")[0] == str(tmp_path / "out" / "crop_oil_slicks.gpkg")
    assert isinstance(slicks[0].renderer(), QgsCategorizedSymbolRenderer)
    assert slicks[0].renderer().classAttribute() == "class_id"
    assert slicks[0].fields().names()[-5:] == POLYGON_FIELDS
    assert f"{slicks[0].featureCount()} slick(s)" in tab.log.toPlainText()
    assert files_in(tmp_path / "out") == {"crop_oil.tif", "crop_oil_slicks.gpkg"}


def test_tab_without_polygons_writes_a_temporary_class_raster(qtbot, oil_tab, project, tmp_path, sar_models):  # noqa: F811
    tab = oil_tab
    image, _ = write_real_crop(tmp_path / "crop.tif", index=4)
    tab.layer_combo.setLayer(add_raster_layer(image, "vv", project))
    tab.model_picker.set_path(str(sar_models.saross))
    tab.kind_combo.setCurrentText("amplitude")
    tab.polygons_check.setChecked(False)
    tab.run_button.click()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=60000)
    assert "Error" not in tab.log.toPlainText(), tab.log.toPlainText()
    added = project.mapLayersByName("vv_oil")
    assert len(added) == 1 and not project.mapLayersByName("vv_oil polygons")
    assert added[0].source().endswith("vv_oil.tif") and not added[0].source().startswith(str(tmp_path))
    assert "amplitude input" in tab.log.toPlainText()


def test_tab_without_a_layer_says_so(qtbot, oil_tab, project):
    oil_tab.layer_combo.setLayer(None)
    oil_tab.run_button.click()
    assert "Error: No valid raster layer selected." in oil_tab.log.toPlainText()
    assert oil_tab.run_button.isEnabled() and QgsApplication.taskManager().countActiveTasks() == 0


def test_tab_cancel_adds_nothing_and_writes_nothing(qtbot, oil_tab, project, tmp_path, sar_models):  # noqa: F811
    tab = oil_tab
    crop, _ = write_real_crop(tmp_path / "crop.tif", index=6)
    big = tmp_path / "big.tif"   # 512 x 512 px: 225 tiles of the tiny model, time enough to cancel
    with rasterio.open(crop) as src:
        write_geotiff(big, np.tile(src.read(1), (2, 2)), crs_wkt=SAR_WKT, transform=tuple(src.transform)[:6])
    tab.layer_combo.setLayer(add_raster_layer(big, "big", project))
    tab.model_picker.set_path(str(sar_models.saross))
    tab.output_widget.setFilePath(str(tmp_path / "out" / "big_oil.tif"))
    before = set(project.mapLayers())
    run_then_cancel(qtbot, tab, timeout=30000)
    assert set(project.mapLayers()) == before
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()
