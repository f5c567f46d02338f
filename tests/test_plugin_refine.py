"""IDGBR refinement in real QGIS: rsdiffusion:refine_classification through processing.run and the
dock's Refine tab (value mapping table, QgsTask, styled result, cancel), with a tiny random model."""
import numpy as np
import pytest
import rasterio
from qgis.core import QgsApplication, QgsPalettedRasterRenderer, QgsProcessingException

from core.raster import hex_to_rgba, write_geotiff
from rs_diffusion_plugin.layers import style_class_layer
from tests.conftest import UTM33, files_in
from tests.idgbr_fixtures import make_refiner_dir

from tests.plugin_helpers import add_raster_layer, run_then_cancel

pytestmark = pytest.mark.qgis
ALG = "rsdiffusion:refine_classification"
MODEL_CLASSES = [(1, "field", "#e0c060"), (2, "forest", "#207020"), (4, "water", "#2060c0")]
NODATA = 255
TRANSFORM = (0.5, 0, 500000, 0, -0.5, 5600000)


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return make_refiner_dir(tmp_path_factory.mktemp("refiner"), classes=MODEL_CLASSES, tile_size=32)


def write_pair(folder, values=(1, 2, 4), size=(32, 32)):
    """An RGB uint8 image and a class raster (three vertical stripes, a nodata corner, a colour table)."""
    height, width = size
    rng = np.random.default_rng(0)
    stripes = np.repeat(np.array(values, np.uint8), -(-width // len(values)))[:width]
    classes = np.tile(stripes, (height, 1))
    classes[:6, :6] = NODATA
    image = (stripes[None, None, :] * 50 + rng.integers(0, 40, (3, height, width))).astype(np.uint8)
    colours = {value: hex_to_rgba(colour) for value, (_, _, colour) in zip(values, MODEL_CLASSES)}
    image_path = write_geotiff(folder / "image.tif", image, crs_wkt=UTM33, transform=TRANSFORM)
    classes_path = write_geotiff(folder / "classes.tif", classes, crs_wkt=UTM33, transform=TRANSFORM,
                                 nodata=NODATA, colormap=colours)
    return image_path, classes_path


def legend(layer) -> list[tuple[int, str]]:
    return [(int(c.value), c.label) for c in layer.renderer().classes()]


def test_algorithm_is_registered_with_the_documented_parameters(processing):
    from core.catalog import starter_model_dir
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg is not None and alg.group() == "Refinement"
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"INPUT", "CLASSIFICATION", "MODEL", "SAMPLES", "OUTPUT", "OUTPUT_UNCERTAINTY", "VALUE_MAP", "STEPS",
            "GUIDANCE", "BANDS", "SEED", "BATCH_SIZE", "DEVICE"} <= names
    assert alg.parameterDefinition("MODEL").defaultValue() == str(starter_model_dir("idgbr"))
    assert "CHANGED_FRACTION" in {o.name() for o in alg.outputDefinitions()}


def test_refine_keeps_grid_values_and_nodata_and_loads_styled(processing, project, tmp_path, refiner):
    image, classes = write_pair(tmp_path)
    classification = add_raster_layer(classes, "my classes", project)
    style_class_layer(classification, [{"value": v, "name": f"{n} (mine)", "color": c} for v, n, c in MODEL_CLASSES])
    result = processing.runAndLoadResults(ALG, {
        "INPUT": str(image), "CLASSIFICATION": classification, "MODEL": str(refiner), "SAMPLES": 2, "STEPS": 2,
        "SEED": 3, "OUTPUT": str(tmp_path / "refined.tif"), "OUTPUT_UNCERTAINTY": str(tmp_path / "uncertainty.tif")})

    assert 0.0 <= result["CHANGED_FRACTION"] <= 1.0
    with rasterio.open(classes) as src, rasterio.open(tmp_path / "refined.tif") as out:
        assert (out.crs, out.transform, out.shape, out.dtypes, out.nodata) == (
            src.crs, src.transform, src.shape, src.dtypes, src.nodata)
        assert out.colormap(1)[4] == src.colormap(1)[4]
        before, after = src.read(1), out.read(1)
    assert set(np.unique(after)) <= {1, 2, 4, NODATA}
    assert ((after == NODATA) == (before == NODATA)).all()
    with rasterio.open(tmp_path / "uncertainty.tif") as uncertainty:
        assert uncertainty.count == 2 and uncertainty.dtypes[0] == "float32" and uncertainty.shape == before.shape
        values = uncertainty.read(masked=True)
        assert values.min() >= 0.0 and values.max() <= 1.0

    loaded = [layer for layer in project.mapLayers().values() if layer.source() == str(tmp_path / "refined.tif")]
    assert len(loaded) == 1
    assert isinstance(loaded[0].renderer(), QgsPalettedRasterRenderer)
    assert legend(loaded[0]) == legend(classification)


def test_value_map_for_other_raster_values(processing, tmp_path, refiner):
    image, classes = write_pair(tmp_path, values=(10, 20, 40))
    result = processing.run(ALG, {"INPUT": str(image), "CLASSIFICATION": str(classes), "MODEL": str(refiner),
                                  "STEPS": 2, "VALUE_MAP": "10:1, 20:2, 40:4", "OUTPUT": str(tmp_path / "out.tif")})
    with rasterio.open(result["OUTPUT"]) as out:
        assert set(np.unique(out.read(1))) <= {10, 20, 40, NODATA}
    assert "OUTPUT_UNCERTAINTY" not in result


def test_unmapped_value_and_bad_value_map_are_clear_errors(processing, tmp_path, refiner):
    image, classes = write_pair(tmp_path, values=(1, 2, 9))
    before = files_in(tmp_path)
    classification = add_raster_layer(classes, "odd classes")
    parameters = {"INPUT": str(image), "CLASSIFICATION": classification, "MODEL": str(refiner), "STEPS": 2,
                  "OUTPUT": str(tmp_path / "out.tif")}
    with pytest.raises(QgsProcessingException, match=r"(?s)(odd classes.*\b9\b|\b9\b.*odd classes)"):
        processing.run(ALG, parameters)
    with pytest.raises(QgsProcessingException, match="expected .raster value:model class value."):
        processing.run(ALG, dict(parameters, VALUE_MAP="9 -> 4"))
    assert files_in(tmp_path) == before


@pytest.fixture
def refine_tab(qtbot, project, refiner):
    from rs_diffusion_plugin.dock import RsDiffusionDock
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    tab = dock.refine_tab
    tab.model_picker.set_path(str(refiner))
    yield tab   # not return: the dock must live as long as its tab


def mapping_rows(tab) -> list[tuple[str, object]]:
    table = tab.mapping_table
    return [(table.item(row, 0).text(), table.cellWidget(row, 1).currentData()) for row in range(table.rowCount())]


def test_refine_tab_maps_values_runs_and_adds_styled_layers(qtbot, refine_tab, project, tmp_path):
    tab = refine_tab
    image, classes = write_pair(tmp_path)
    image_layer = add_raster_layer(image, "scene", project)
    classification = add_raster_layer(classes, "landcover")   # styled as it loads, like a layer with its .qml
    style_class_layer(classification, [{"value": v, "name": n.upper(), "color": c} for v, n, c in MODEL_CLASSES])
    project.addMapLayer(classification)
    tab.image_combo.setLayer(image_layer)
    tab.classification_combo.setLayer(classification)
    assert "field" in tab.model_picker.label.text()
    assert mapping_rows(tab) == [("1 FIELD", 1), ("2 FOREST", 2), ("4 WATER", 4)]   # automatic, nodata not listed
    tab.steps_spin.setValue(2)
    tab.samples_spin.setValue(2)
    tab.uncertainty_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "refined.tif"))

    tab.run_button.click()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=60000)
    assert "Error" not in tab.log.toPlainText()
    refined = project.mapLayersByName("landcover (refined)")
    assert len(refined) == 1 and refined[0].extent() == classification.extent()
    assert isinstance(refined[0].renderer(), QgsPalettedRasterRenderer)
    assert legend(refined[0]) == legend(classification)
    uncertainty = project.mapLayersByName("landcover (uncertainty)")
    assert len(uncertainty) == 1 and uncertainty[0].bandCount() == 2
    assert uncertainty[0].renderer().type() == "singlebandgray"   # entropy, 0..1
    assert "of the pixels changed class" in tab.log.toPlainText() and tab.progress_bar.value() == 100


def test_refine_tab_other_values_need_a_model_class(qtbot, refine_tab, project, tmp_path):
    tab = refine_tab
    image, classes = write_pair(tmp_path, values=(1, 2, 9))
    tab.image_combo.setLayer(add_raster_layer(image, "scene", project))
    tab.classification_combo.setLayer(add_raster_layer(classes, "odd", project))
    assert mapping_rows(tab) == [("1", 1), ("2", 2), ("9", None)]
    tab.run_button.click()
    assert "Value 9 of layer 'odd' has no model class" in tab.log.toPlainText()
    assert tab.run_button.isEnabled() and QgsApplication.taskManager().countActiveTasks() == 0
    combo = tab.mapping_table.cellWidget(2, 1)
    combo.setCurrentIndex(combo.findData(4))
    assert tab.value_map("odd") == {1: 1, 2: 2, 9: 4}


def test_refine_tab_cancel_adds_nothing_and_writes_nothing(qtbot, refine_tab, project, tmp_path):
    tab = refine_tab
    image, classes = write_pair(tmp_path, size=(96, 96))
    tab.image_combo.setLayer(add_raster_layer(image, "scene", project))
    tab.classification_combo.setLayer(add_raster_layer(classes, "big", project))
    tab.output_widget.setFilePath(str(tmp_path / "out" / "refined.tif"))
    tab.uncertainty_check.setChecked(True)
    before = set(project.mapLayers())
    run_then_cancel(qtbot, tab, timeout=30000)
    assert set(project.mapLayers()) == before
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()
