"""The models pack in real QGIS: a dock without any model installed (the plugin ZIP alone) says so on every
tab and offers "Install starter models…"; the dialog installs a pack from a file in a QgsTask through
core.model_pack, and the pickers then list its models by name; a tampered pack is refused in the dialog."""
import shutil
import zipfile

import pytest

from core import catalog
from core.catalog import set_model_library
from core.checkpoint import load_card
from core.model_pack import build_pack
from rs_diffusion_plugin.dock import RsDiffusionDock
from rs_diffusion_plugin.install_dialog import InstallModelsDialog
from rs_diffusion_plugin.widgets import ModelPicker

pytestmark = pytest.mark.qgis


@pytest.fixture
def empty_profile(qapp, tmp_path, monkeypatch):
    """A model library with nothing in it and no repository models behind it, as after installing the plugin
    ZIP (nor folders browsed to by earlier tests); the Processing defaults are made again from the real
    locations afterwards."""
    monkeypatch.setattr(ModelPicker, "browsed", {})
    repository = catalog.STARTER_MODELS_DIR
    catalog.STARTER_MODELS_DIR = tmp_path / "no_repository_models"
    set_model_library(tmp_path / "profile" / "rs_diffusion" / "models")
    try:
        yield catalog.model_library()
    finally:
        catalog.STARTER_MODELS_DIR = repository
        set_model_library(None)
        from qgis.core import QgsApplication
        provider = QgsApplication.processingRegistry().providerById("rsdiffusion")
        if provider is not None:
            provider.refreshAlgorithms()


@pytest.fixture
def segmentation_pack(tmp_path, starter_model):
    models = tmp_path / "pack_models"
    models.mkdir()
    shutil.copytree(starter_model, models / starter_model.name)
    return build_pack(models, tmp_path / "rs_diffusion_models-0.0.1.zip", "0.0.1")


def pickers(dock) -> list[ModelPicker]:
    return [p for i in range(dock.tabs.count()) for p in dock.tabs.widget(i).findChildren(ModelPicker)]


def install_from_dialog(qtbot, source) -> InstallModelsDialog:
    dialog = InstallModelsDialog()
    qtbot.addWidget(dialog)
    dialog.file_widget.setFilePath(str(source))
    dialog.install_button.click()
    qtbot.waitUntil(lambda: dialog.install_button.isEnabled(), timeout=60000)
    return dialog


def test_every_tab_says_no_model_is_installed_and_offers_the_pack(qtbot, empty_profile):
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    assert len(pickers(dock)) == 8
    for picker in pickers(dock):
        assert picker.combo.count() == 0 and picker.path() == ""
        assert f"No '{picker.task}' model is installed yet" in picker.label.text()
        assert not picker.install_button.isHidden() and picker.install_button.text() == "Install starter models…"


def test_the_dialog_installs_a_pack_from_a_file_and_the_pickers_list_it(qtbot, empty_profile, segmentation_pack,
                                                                      starter_model):
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    picker = dock.segment_tab.model_picker
    dialog = install_from_dialog(qtbot, segmentation_pack)
    assert "Installed models pack 0.0.1: segmentation_starter" in dialog.status_label.text()
    assert dialog.progress_bar.value() == 100
    installed = empty_profile / "starters" / starter_model.name
    name = load_card(starter_model).name
    assert picker.combo.count() == 1 and picker.combo.itemText(0) == name and picker.path() == str(installed)
    assert picker.label.text().startswith(f"{name}: segmentation model") and picker.install_button.isHidden()
    assert ModelPicker("segmentation").path() == str(installed)   # a tab opened later lists it too
    fusion = dock.fusion_tab.model_picker   # the pack held no fusion prior
    assert fusion.path() == "" and not fusion.install_button.isHidden()
    assert [p.name for p in empty_profile.iterdir()] == ["starters"]


def test_a_tampered_pack_is_refused_in_the_dialog(qtbot, empty_profile, segmentation_pack, tmp_path):
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(segmentation_pack) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name.endswith(".safetensors") else data)
    picker = ModelPicker("segmentation")
    qtbot.addWidget(picker)
    dialog = install_from_dialog(qtbot, tampered)
    assert dialog.status_label.text().startswith("Not installed: ")
    assert "does not match its SHA-256" in dialog.status_label.text()
    assert picker.path() == "" and not empty_profile.joinpath("starters").exists()
