"""The dock's Train tab in real QGIS: a procedural scene and its class raster as layers, a tiny training budget,
the fine-tuned model lands in a temporary model library, the Segment tab's picker lists it by name, the live curve
received the losses and held-out scores, and the Segment tab runs with the new model."""
from pathlib import Path

import pytest
import rasterio

from core import catalog
from core.checkpoint import load_card
from rs_diffusion_plugin.algorithms.train_common import DEFAULT_STEPS
from rs_diffusion_plugin.dock import RsDiffusionDock
from rs_diffusion_plugin.train_tab import TrainTab
from rs_diffusion_plugin.widgets import ModelPicker
from tests.conftest import REPO, make_scene_raster
from tests.plugin_helpers import add_raster_layer

pytestmark = pytest.mark.qgis
SCREENSHOT = REPO / "tests" / "artifacts" / "train_tab.png"


@pytest.fixture
def library(qapp, tmp_path, monkeypatch):
    """An empty user model library (the repository's starters stay behind it), no folders browsed to earlier."""
    monkeypatch.setattr(ModelPicker, "browsed", {})
    before = catalog.model_library()
    catalog.set_model_library(tmp_path / "library")
    yield tmp_path / "library"
    catalog.set_model_library(before)


@pytest.fixture
def dock(qtbot, project, library):
    widget = RsDiffusionDock()
    qtbot.addWidget(widget)
    return widget


def test_the_form_follows_the_task(dock, starter_model):
    tab = dock.train_tab
    assert tab.run_button.text() == "Train"
    for index, (task, card_task, shows_b, shows_land) in enumerate([("segmentation", "segmentation", False, False),
                                                                    ("oilspill", "saross", False, True),
                                                                    ("change", "changedet", True, False)]):
        tab.task_combo.setCurrentIndex(index)
        assert tab.fit_task() == task and tab.steps_spin.value() == DEFAULT_STEPS[task]
        assert tab.model_picker.task == card_task
        assert tab.model_picker.path() == str(catalog.starter_model_dir(card_task))
        assert (not tab.image_b_combo.isHidden(), not tab.land_combo.isHidden()) == (shows_b, shows_land)
    tab.name_edit.setText("")
    tab.run_button.click()
    assert "Error: Model name: give the new model a name" in tab.log.toPlainText() and not tab.running


def test_train_a_tiny_model_then_segment_with_it(qtbot, dock, project, library, tmp_path, starter_model):
    image, labels = make_scene_raster(tmp_path, size=(384, 384))
    scene = add_raster_layer(image, "scene", project)
    classes = add_raster_layer(labels, "scene classes", project)
    tab = dock.train_tab
    tab.image_combo.setLayer(scene)
    tab.labels_combo.setLayer(classes)
    assert tab.class_field_combo.isHidden()   # a class raster needs no class field
    tab.steps_spin.setValue(2)
    tab.name_edit.setText("My fields")
    dock.tabs.setCurrentWidget(tab)
    dock.resize(480, 1000)
    dock.show()

    tab.run_button.click()
    assert tab.running and not tab.run_button.isEnabled()
    qtbot.waitUntil(lambda: not tab.running, timeout=300000)
    log = tab.log.toPlainText()
    assert "Error" not in log, log
    model = library / "My_fields"
    assert (model / "model.json").is_file()
    card = load_card(model)
    assert card.name == "My fields" and card.extra["fine_tuning"]["base_model"] == load_card(starter_model).name
    assert "choose it by name in the Segment tab" in log and "Held-out mIoU: base model" in log
    assert "fine-tuned" in log
    assert [step for step, _ in tab.curve.losses] == [1, 2] and tab.curve.scores
    assert tab.curve.score_name == "mIoU"

    segment = dock.segment_tab
    index = segment.model_picker.combo.findText("My fields")
    assert index >= 0 and segment.model_picker.combo.itemData(index) == str(model)
    listed = [segment.model_picker.combo.itemData(i) for i in range(segment.model_picker.combo.count())]
    assert [path for path in listed if path.startswith(str(library))] == [str(model)]   # not the run folder
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert dock.grab().save(str(SCREENSHOT))

    segment.layer_combo.setLayer(scene)
    segment.model_picker.combo.setCurrentIndex(index)
    segment.output_widget.setFilePath(str(tmp_path / "map.tif"))
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.running, timeout=120000)
    assert "Added 'map'" in segment.log.toPlainText(), segment.log.toPlainText()
    with rasterio.open(tmp_path / "map.tif") as src:
        assert src.shape == (384, 384)
        assert set(int(v) for v in src.read(1).ravel()[::97]) <= {c.value for c in card.classes} | {src.nodata}
    assert Path(project.mapLayersByName("map")[0].source()) == tmp_path / "map.tif"


def test_cancel_keeps_the_last_step_and_train_again_goes_on(qtbot, dock, project, library, tmp_path):
    image, labels = make_scene_raster(tmp_path, size=(256, 256))
    tab = dock.train_tab
    tab.image_combo.setLayer(add_raster_layer(image, "scene", project))
    tab.labels_combo.setLayer(add_raster_layer(labels, "scene classes", project))
    tab.steps_spin.setValue(50)
    tab.name_edit.setText("resumed")
    tab.run_button.click()
    qtbot.waitUntil(lambda: bool(tab.curve.losses), timeout=120000)   # a step has finished
    tab.cancel_button.click()
    qtbot.waitUntil(lambda: not tab.running, timeout=120000)
    assert tab.log.toPlainText().endswith(TrainTab.cancelled_message)
    assert (library / ".resumed.fit" / "training_state.pt").is_file() and not (library / "resumed").exists()

    done = len(tab.curve.losses)
    tab.steps_spin.setValue(done + 1)
    tab.log.clear()
    tab.run_button.click()
    qtbot.waitUntil(lambda: not tab.running, timeout=120000)
    assert ", resuming)" in tab.log.toPlainText() and "Error" not in tab.log.toPlainText()
    assert [step for step, _ in tab.curve.losses] == [done + 1]   # only the step left was trained
    assert (library / "resumed" / "model.json").is_file()
