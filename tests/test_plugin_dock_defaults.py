"""The dock's defaults guide the analyst, in a real QgsApplication with real layers: two-input tabs start
on two different layers, pickers list only the layers that fit, every form field explains itself on
hover, and the model pickers list models by name."""
import numpy as np
import pytest
from qgis.PyQt.QtWidgets import QFormLayout

from core.catalog import starter_model_dir
from core.checkpoint import load_card
from rs_diffusion_plugin.dock import RsDiffusionDock
from rs_diffusion_plugin.widgets import ModelPicker
from tests.conftest import write_test_raster
from tests.plugin_helpers import add_raster_layer

pytestmark = pytest.mark.qgis


@pytest.fixture
def dock(qtbot, project):
    widget = RsDiffusionDock()
    qtbot.addWidget(widget)
    return widget


def tabs(dock):
    return [dock.tabs.widget(i) for i in range(dock.tabs.count())]


def listed(combo) -> list[str]:
    return [combo.layer(row).name() for row in range(combo.count())]


def add_rgb(tmp_path, name, project):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    return add_raster_layer(write_test_raster(tmp_path / f"{name}.tif", pixels), name, project)


def add_classes(tmp_path, name, project):
    """A single-band uint8 classification with the classes 1, 2 and 3."""
    classes = (np.arange(32 * 32).reshape(1, 32, 32) % 3 + 1).astype(np.uint8)
    return add_raster_layer(write_test_raster(tmp_path / f"{name}.tif", classes), name, project)


def test_two_input_tabs_start_on_two_different_layers(dock, project, tmp_path):
    first, second = add_rgb(tmp_path, "rgb one", project), add_rgb(tmp_path, "rgb two", project)
    pairs = {"fusion": (dock.fusion_tab.infrared_combo, dock.fusion_tab.visible_combo),
             "change": (dock.change_tab.layer_a_combo, dock.change_tab.layer_b_combo)}
    for name, (one, two) in pairs.items():
        assert {one.currentLayer(), two.currentLayer()} == {first, second}, name
    # Refine: two RGB layers hold no classification; with one added, the image is not that classification
    assert dock.refine_tab.classification_combo.currentLayer() is None
    classes = add_classes(tmp_path, "a classes", project)
    assert dock.refine_tab.classification_combo.currentLayer() is classes
    assert dock.refine_tab.image_combo.currentLayer() in (first, second)


def test_a_dock_made_after_the_layers_also_keeps_them_apart(qtbot, project, tmp_path):
    add_rgb(tmp_path, "rgb one", project), add_rgb(tmp_path, "rgb two", project)
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    assert dock.fusion_tab.infrared_combo.currentLayer() is not dock.fusion_tab.visible_combo.currentLayer()
    assert dock.change_tab.layer_a_combo.currentLayer() is not dock.change_tab.layer_b_combo.currentLayer()


def test_pickers_list_only_fitting_layers(dock, project, tmp_path):
    add_rgb(tmp_path, "rgb", project)
    add_classes(tmp_path, "classes", project)
    add_raster_layer(write_test_raster(tmp_path / "sar.tif", np.full((1, 32, 32), 0.05, np.float32)), "sar",
                     project)
    refine = dock.refine_tab
    assert listed(refine.classification_combo) == ["classes"]
    assert refine.classification_combo.currentLayer().name() == "classes"
    assert [value for value, _ in refine.layer_values] == [1, 2, 3]   # not the values of an RGB band
    assert refine.image_combo.currentLayer().name() != "classes"
    assert sorted(listed(dock.oilspill_tab.layer_combo)) == ["classes", "sar"]
    assert sorted(listed(dock.segment_tab.layer_combo)) == ["classes", "rgb", "sar"]


def test_every_form_field_explains_itself(dock):
    missing = []
    for tab in tabs(dock):
        for form in tab.findChildren(QFormLayout):
            for row in range(form.rowCount()):
                field = form.itemAt(row, QFormLayout.ItemRole.FieldRole).widget()
                label = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
                label_text = label.widget().text() if label is not None and label.widget() is not None else ""
                if not field.toolTip().strip():
                    missing.append(f"{tab.title}: {label_text or type(field).__name__}")
                elif label_text and not label.widget().toolTip().strip():
                    missing.append(f"{tab.title}: the label '{label_text}'")
    assert missing == []


def test_model_pickers_list_models_by_name(dock, tmp_path):
    pickers = [picker for tab in tabs(dock) for picker in tab.findChildren(ModelPicker)]
    assert len(pickers) == 8
    for picker in pickers:
        starter = starter_model_dir(picker.task)
        assert picker.combo.itemText(0) == load_card(starter).name
        assert picker.path() == str(starter)
        assert picker.label.text().startswith(f"{load_card(starter).name}: {picker.task} model")
    segment = dock.segment_tab.model_picker
    assert "bare soil" in segment.label.text() and "0.5 m ground resolution" in segment.label.text()
    segment.set_path(str(tmp_path))
    assert segment.combo.currentText() == tmp_path.name and segment.path() == str(tmp_path)
    assert "model.json not found" in segment.label.text()
    assert ModelPicker("segmentation").combo.findData(str(tmp_path)) >= 0   # browsed models stay for the session
