"""Infrared / visible fusion in real QGIS: rsdiffusion:fuse_ir_visible through Processing (same grid,
another grid, a bad band, a real RoadScene pair) and the dock's "Fusion" tab (QgsTask, layers added,
prior label, cancel), all with the tiny prior of tests/fusion_fixtures.py."""
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from PIL import Image
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsSingleBandGrayRenderer
from rasterio.enums import Resampling
from rasterio.windows import Window

from core.catalog import starter_model_dir
from core.data.irvis import write_irvis_pair
from tests.conftest import REPO, UTM33, files_in, shared_data, write_test_raster
from tests.fusion_fixtures import irvis_pair, tiny_prior  # noqa: F401
from tests.plugin_helpers import add_raster_layer, run_then_cancel

pytestmark = [pytest.mark.qgis, pytest.mark.usefixtures("one_torch_thread")]
FUSE = "rsdiffusion:fuse_ir_visible"
FAST = {"STEPS": 4, "DIG_INTERVAL": 2}   # DIG recomputations at steps 0 and 2


def grid(path):
    with rasterio.open(path) as src:
        return src.crs, src.transform, src.width, src.height


def feedback_log() -> tuple[QgsProcessingFeedback, list[str]]:
    feedback, log = QgsProcessingFeedback(), []
    feedback.pushInfo = log.append
    feedback.pushWarning = log.append
    return feedback, log


def test_algorithm_is_registered_with_the_documented_parameters(processing):
    from core.fusion.em import EM_MODES
    from core.fusion.prior import TASK
    from core.fusion.sampler import DIG_DISTANCES, DIG_KINDS, FUSION_MODES
    from rs_diffusion_plugin.algorithms import fuse_ir_visible as adapter
    assert (adapter.TASK, adapter.FUSION_MODES, adapter.DIG_KINDS, adapter.DIG_DISTANCES, adapter.EM_MODES) == (
        TASK, FUSION_MODES, DIG_KINDS, DIG_DISTANCES, EM_MODES)
    alg = QgsApplication.processingRegistry().algorithmById(FUSE)
    assert alg is not None and alg.group() == "Image fusion"
    assert [p.name() for p in alg.parameterDefinitions()] == [
        "INFRARED", "VISIBLE", "MODEL", "STEPS", "DIG_INTERVAL", "MODE", "OUTPUT", "OUTPUT_WEIGHTS", "DIG_KIND",
        "DIG_DISTANCE", "DIG_TEMPERATURE", "DDFM_MODE", "INFRARED_BAND", "SEED", "TILE_SIZE", "OVERLAP", "DEVICE"]
    p = alg.parameterDefinition
    assert p("MODEL").defaultValue() == str(starter_model_dir("fusion-prior"))
    assert (p("STEPS").defaultValue(), p("STEPS").minimum(), p("STEPS").maximum()) == (25, 2, 1000)
    assert (p("DIG_INTERVAL").defaultValue(), p("DIG_INTERVAL").minimum()) == (10, 1)
    assert (p("MODE").options(), p("MODE").defaultValue()) == (["dig", "ddfm"], "dig")
    assert (p("DIG_KIND").options(), p("DIG_KIND").defaultValue()) == (["scalar", "spatial"], "scalar")
    assert (p("DDFM_MODE").options(), p("DDFM_MODE").defaultValue()) == (["paper", "code"], "paper")
    assert (p("DIG_DISTANCE").options(), p("DIG_DISTANCE").defaultValue()) == (["l2", "squared_l2", "mse"], "l2")
    assert p("DIG_TEMPERATURE").defaultValue() == 1.0
    assert p("OUTPUT_WEIGHTS").flags() & p("OUTPUT_WEIGHTS").FlagOptional and not p("OUTPUT_WEIGHTS").createByDefault()
    assert p("INFRARED_BAND").parentLayerParameterName() == "INFRARED" and p("INFRARED_BAND").defaultValue() == 1
    assert (p("SEED").defaultValue(), p("TILE_SIZE").defaultValue(), p("TILE_SIZE").minimum()) == (0, 256, 32)
    assert p("OVERLAP").defaultValue() == 32
    for name in ("DIG_KIND", "DIG_DISTANCE", "DIG_TEMPERATURE", "DDFM_MODE", "INFRARED_BAND", "SEED", "TILE_SIZE",
                 "OVERLAP"):
        assert p(name).flags() & p(name).FlagAdvanced, name
    assert {"OUTPUT", "OUTPUT_WEIGHTS", "PRIOR"} <= {o.name() for o in alg.outputDefinitions()}
    assert "256x256_diffusion_uncond.pt" in alg.shortHelpString() and "resampled" in alg.shortHelpString()


def test_fuse_through_processing_keeps_the_visible_grid(processing, project, tmp_path, irvis_pair, tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    feedback, log = feedback_log()
    result = processing.runAndLoadResults(FUSE, {
        "INFRARED": str(infrared), "VISIBLE": str(visible), "MODEL": str(tiny_prior), **FAST,
        "OUTPUT": str(tmp_path / "fused.tif"), "OUTPUT_WEIGHTS": str(tmp_path / "weights.tif")}, feedback=feedback)

    assert result["OUTPUT"] == str(tmp_path / "fused.tif") and result["PRIOR"].startswith("'tiny prior'")
    assert grid(result["OUTPUT"]) == grid(visible)
    with rasterio.open(result["OUTPUT"]) as out:
        assert out.count == 3 and out.dtypes[0] == "uint8"   # the visible layer's colours and data type
        assert out.read().std() > 0
    with rasterio.open(result["OUTPUT_WEIGHTS"]) as weights:
        assert (weights.crs, weights.transform, weights.width, weights.height) == grid(visible)
        assert weights.count == 2   # steps 0 and 2 of 4
        values = weights.read()
        assert ((values >= 0) & (values <= 1)).all()
    assert any("tiny prior" in line for line in log) and not any("resampled" in line for line in log)
    assert any("Fusing infrared 'ir' with visible 'vi'" in line for line in log), log
    assert any(line.startswith("Expected work:") for line in log), log
    loaded = {layer.source(): layer for layer in project.mapLayers().values()}
    assert str(tmp_path / "fused.tif") in loaded
    assert isinstance(loaded[str(tmp_path / "weights.tif")].renderer(), QgsSingleBandGrayRenderer)


def test_infrared_on_another_grid_is_resampled_onto_the_visible_grid(processing, tmp_path, irvis_pair,  # noqa: F811
                                                                      tiny_prior):  # noqa: F811
    infrared, visible = irvis_pair
    other = tmp_path / "ir_coarse.tif"   # a crop at 1.25x the pixel size: another size, origin and resolution
    with rasterio.open(infrared) as src:
        window = Window(6, 5, 60, 50)
        data = src.read(window=window, out_shape=(1, 40, 48), resampling=Resampling.bilinear)
        transform = src.window_transform(window) * src.window_transform(window).scale(60 / 48, 50 / 40)
        write_test_raster(other, data, crs=src.crs.to_wkt(), transform=tuple(transform)[:6])
    assert grid(other) != grid(visible)
    feedback, log = feedback_log()
    result = processing.run(FUSE, {"INFRARED": str(other), "VISIBLE": str(visible), "MODEL": str(tiny_prior), **FAST,
                                   "OUTPUT": str(tmp_path / "fused.tif")}, feedback=feedback)
    assert grid(result["OUTPUT"]) == grid(visible)
    assert any("'ir_coarse' is on another grid: resampled" in line for line in log), log


@pytest.mark.parametrize("parameters, message", [
    ({"INFRARED_BAND": 2}, "Infrared layer 'ir' has bands 1..1; band 2 does not exist."),
    ({"MODE": "ddfm", "OUTPUT_WEIGHTS": "weights.tif"}, "Weight maps exist only in the 'dig' mode"),
])
def test_bad_parameters_are_processing_errors_and_write_nothing(processing, tmp_path, irvis_pair, tiny_prior,  # noqa: F811
                                                                parameters, message):
    infrared, visible = irvis_pair
    before = files_in(tmp_path)
    parameters = {k: str(tmp_path / v) if k == "OUTPUT_WEIGHTS" else v for k, v in parameters.items()}
    with pytest.raises(QgsProcessingException, match=message.replace(".", r"\.")):
        processing.run(FUSE, {"INFRARED": str(infrared), "VISIBLE": str(visible), "MODEL": str(tiny_prior), **FAST,
                              "OUTPUT": str(tmp_path / "fused.tif"), **parameters})
    assert files_in(tmp_path) == before


def test_real_roadscene_pair_through_processing(processing, tmp_path, tiny_prior):  # noqa: F811
    folder = shared_data("irvis_roadscene")
    name = sorted(os.listdir(folder / "ir"))[0]
    infrared = np.asarray(Image.open(folder / "ir" / name).convert("L"))
    visible = np.asarray(Image.open(folder / "vi" / name).convert("RGB")).transpose(2, 0, 1)
    assert infrared.shape == visible.shape[1:]
    transform = (0.5, 0, 500000, 0, -0.5, 5600000)   # any UTM grid: 0.5 m pixels in UTM 33N
    write_test_raster(tmp_path / "ir.tif", infrared, transform=transform)
    write_test_raster(tmp_path / "vi.tif", visible, transform=transform)
    result = processing.run(FUSE, {
        "INFRARED": str(tmp_path / "ir.tif"), "VISIBLE": str(tmp_path / "vi.tif"), "MODEL": str(tiny_prior),
        "STEPS": 3, "TILE_SIZE": 512, "OUTPUT": str(tmp_path / "fused.tif")})
    assert grid(result["OUTPUT"]) == grid(tmp_path / "vi.tif")
    with rasterio.open(result["OUTPUT"]) as out:
        assert out.crs.to_wkt() == UTM33 and out.count == 3
        fused = out.read().astype(np.float32)
    assert fused.std() > 0
    # Both sources show in the result: standardised least squares fused ~ a infrared + b visible, a and b > 0
    # (plain correlations would not do: this pair's infrared and visible are anticorrelated)
    sources = [infrared.astype(np.float32), visible.astype(np.float32).mean(0), fused.mean(0)]
    ir_z, vi_z, fused_z = [((s - s.mean()) / s.std()).ravel() for s in sources]
    a, b = np.linalg.lstsq(np.stack([ir_z, vi_z], 1), fused_z, rcond=None)[0]
    assert a > 0.1 and b > 0.1, (a, b)


# --- the dock tab ---------------------------------------------------------------------------------

@pytest.fixture
def fusion_tab(qtbot, project):
    from rs_diffusion_plugin.dock import RsDiffusionDock
    dock = RsDiffusionDock()
    qtbot.addWidget(dock)
    assert dock.tabs.tabText(dock.tabs.indexOf(dock.fusion_tab)) == "Fusion"
    yield dock.fusion_tab   # not return: the dock must live as long as its tab


def test_tab_shows_the_prior_and_dig_options(fusion_tab, tmp_path, tiny_prior):  # noqa: F811
    tab = fusion_tab
    assert tab.model_picker.path() == str(starter_model_dir("fusion-prior"))
    assert (tab.steps_spin.value(), tab.interval_spin.value()) == (25, 10)
    assert [tab.mode_combo.itemText(i) for i in range(tab.mode_combo.count())] == ["dig", "ddfm"]
    assert [tab.kind_combo.itemText(i) for i in range(tab.kind_combo.count())] == ["scalar", "spatial"]
    tab.model_picker.set_path(str(tiny_prior))
    assert tab.model_picker.label.text().startswith("tiny prior: fusion-prior model")
    tab.model_picker.set_path(str(tmp_path))
    assert "model.json not found" in tab.model_picker.label.text()
    tab.mode_combo.setCurrentText("ddfm")
    assert not (tab.interval_spin.isEnabled() or tab.kind_combo.isEnabled() or tab.weights_check.isEnabled())
    tab.mode_combo.setCurrentText("dig")
    assert tab.interval_spin.isEnabled() and tab.kind_combo.isEnabled() and tab.weights_check.isEnabled()


def test_tab_runs_and_adds_the_fused_layer_and_weights(qtbot, fusion_tab, project, tmp_path, irvis_pair,  # noqa: F811
                                                       tiny_prior):  # noqa: F811
    tab = fusion_tab
    infrared, visible = irvis_pair
    tab.infrared_combo.setLayer(add_raster_layer(infrared, "thermal", project))
    tab.visible_combo.setLayer(add_raster_layer(visible, "rgb", project))
    assert tab.band_combo.currentBand() == 1
    tab.model_picker.set_path(str(tiny_prior))
    tab.steps_spin.setValue(4)
    tab.interval_spin.setValue(2)
    tab.weights_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "fused.tif"))   # a folder that does not exist yet

    tab.run_button.click()
    assert not tab.run_button.isEnabled() and tab.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=60000)
    log = tab.log.toPlainText()
    assert "Error" not in log, log
    assert "Added 'fused'" in log and "Prior used: 'tiny prior'" in log and tab.progress_bar.value() == 100
    fused = project.mapLayersByName("fused")
    assert len(fused) == 1 and fused[0].crs() == project.mapLayersByName("rgb")[0].crs()
    assert fused[0].extent() == project.mapLayersByName("rgb")[0].extent() and fused[0].bandCount() == 3
    weights = project.mapLayersByName("fused infrared weights")
    assert len(weights) == 1 and weights[0].bandCount() == 2
    assert isinstance(weights[0].renderer(), QgsSingleBandGrayRenderer)
    assert files_in(tmp_path / "out") == {"fused.tif", "fused_weights.tif"}


def test_tab_without_layers_says_so(fusion_tab, project):
    fusion_tab.run_button.click()
    assert "Error: No valid raster layer selected." in fusion_tab.log.toPlainText()
    assert fusion_tab.run_button.isEnabled() and QgsApplication.taskManager().countActiveTasks() == 0


def test_tab_cancel_adds_nothing_and_writes_nothing(qtbot, fusion_tab, project, tmp_path, tiny_prior):  # noqa: F811
    tab = fusion_tab
    write_irvis_pair(tmp_path / "ir.tif", tmp_path / "vi.tif", 192, 192, seed=5)   # 40 steps: time to cancel
    tab.infrared_combo.setLayer(add_raster_layer(tmp_path / "ir.tif", "ir", project))
    tab.visible_combo.setLayer(add_raster_layer(tmp_path / "vi.tif", "vi", project))
    tab.model_picker.set_path(str(tiny_prior))
    tab.steps_spin.setValue(40)   # dig: at most 45 distinct non-uniform steps
    tab.weights_check.setChecked(True)
    tab.output_widget.setFilePath(str(tmp_path / "out" / "fused.tif"))
    before = set(project.mapLayers())
    run_then_cancel(qtbot, tab, timeout=30000)
    assert set(project.mapLayers()) == before
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == set()


def test_creating_the_tab_loads_no_fusion_model_code():
    """The tab reads the prior's card only: core.fusion and diffusers load when a run starts."""
    code = ("import sys\n"
            "from qgis.core import QgsApplication\n"
            "app = QgsApplication([], False)\n"
            "from rs_diffusion_plugin.fusion_tab import FusionTab\n"
            "tab = FusionTab()\n"
            "print(tab.model_picker.label.text())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers' or m.startswith('core.fusion')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(REPO)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == "[]", run.stdout
