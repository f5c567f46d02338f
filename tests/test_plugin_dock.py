"""The dock's Segment tab in a real QgsApplication: pick a layer, run in a QgsTask, get a
styled class layer on the input's grid; cancel leaves nothing behind."""
import pytest
from qgis.core import QgsApplication, QgsPalettedRasterRenderer

from rs_diffusion_plugin.dock import RsDiffusionDock
from tests.conftest import files_in, make_scene_raster

from tests.plugin_helpers import add_raster_layer, run_then_cancel

pytestmark = pytest.mark.qgis


@pytest.fixture
def dock(qtbot, project):
    widget = RsDiffusionDock()
    qtbot.addWidget(widget)
    return widget


def test_segment_tab_adds_a_styled_class_layer(qtbot, dock, project, tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(150, 170))
    layer = add_raster_layer(image, "my scene", project)
    tab = dock.segment_tab
    tab.layer_combo.setLayer(layer)
    tab.output_widget.setFilePath(str(tmp_path / "classes.tif"))
    tab.polygons_check.setChecked(True)
    assert "bare soil" in tab.model_picker.label.text()

    with qtbot.waitSignal(project.layersAdded, timeout=120000):
        tab.run_button.click()
        assert not tab.run_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=10000)

    added = project.mapLayersByName("classes")
    assert len(added) == 1
    result = added[0]
    assert result.crs() == layer.crs() and result.extent() == layer.extent()
    assert result.width() == layer.width() and result.height() == layer.height()
    renderer = result.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == ["bare soil", "vegetation", "water", "road", "building"]
    assert project.mapLayersByName("classes polygons")
    assert tab.progress_bar.value() == 100
    assert "Added 'classes'" in tab.log.toPlainText()


def test_cancel_adds_no_layer_and_leaves_no_file(qtbot, dock, project, tmp_path, starter_model):
    image, _ = make_scene_raster(tmp_path, size=(900, 900))
    layer = add_raster_layer(image, "big", project)
    tab = dock.segment_tab
    tab.layer_combo.setLayer(layer)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "classes.tif"))
    tab.tile_spin.setValue(64)
    tab.overlap_spin.setValue(8)
    before = set(project.mapLayers())
    run_then_cancel(qtbot, tab, timeout=60000)
    assert set(project.mapLayers()) == before
    out = tmp_path / "out"
    assert not out.exists() or files_in(out) == set()


def test_bad_layer_is_reported_in_the_panel(qtbot, dock, project, tmp_path, starter_model):
    import numpy as np
    from tests.conftest import write_test_raster
    two = write_test_raster(tmp_path / "two.tif", np.zeros((2, 64, 64), np.uint8))
    layer = add_raster_layer(two, "two bands", project)
    tab = dock.segment_tab
    tab.layer_combo.setLayer(layer)
    tab.output_widget.setFilePath(str(tmp_path / "c.tif"))
    tab.run_button.click()
    qtbot.waitUntil(lambda: "Error" in tab.log.toPlainText(), timeout=60000)
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=10000)
    assert "'two bands' has 2 band(s) but the model needs 3 (red, green, blue)" in tab.log.toPlainText()
    assert files_in(tmp_path) == {"two.tif"}


def test_no_layer_selected(qtbot, dock, project):
    dock.segment_tab.layer_combo.setLayer(None)
    dock.segment_tab.run_button.click()
    assert "No valid raster layer selected" in dock.segment_tab.log.toPlainText()
    assert QgsApplication.taskManager().countActiveTasks() == 0


def test_synthesize_tab_previews_pairs_and_adds_them_as_layers(qtbot, dock, project, tmp_path, satsynth_starters):
    tab = dock.synthesize_tab
    assert "SatSynth" in tab.model_picker.label.text() and not tab.sr_picker.isEnabled()
    tab.count_spin.setValue(2)
    tab.steps_spin.setValue(3)
    tab.sr_check.setChecked(True)
    tab.add_layers_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "pairs"))
    tab.run_button.click()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=120000)

    assert tab.preview.pixmap() is not None and not tab.preview.pixmap().isNull()
    assert "2 pairs of 128 px written" in tab.log.toPlainText()
    group = project.layerTreeRoot().findGroup("Synthetic pairs")
    layers = [node.layer() for node in group.findLayers()]
    assert sorted(layer.name() for layer in layers) == ["pair_00000 image", "pair_00000 mask",
                                                       "pair_00001 image", "pair_00001 mask"]
    masks = [layer for layer in layers if layer.name().endswith("mask")]
    assert all(isinstance(m.renderer(), QgsPalettedRasterRenderer) for m in masks)
    assert all(layer.width() == 128 for layer in layers)


def test_synthesize_tab_cancel_writes_nothing(qtbot, dock, project, tmp_path, satsynth_starters):
    tab = dock.synthesize_tab
    tab.sampler_combo.setCurrentIndex(tab.sampler_combo.findData("ddpm"))
    assert not tab.steps_spin.isEnabled()
    tab.count_spin.setValue(2)
    tab.output_widget.setFilePath(str(tmp_path / "out"))
    run_then_cancel(qtbot, tab, timeout=60000)
    assert list(tmp_path.iterdir()) == []
