"""rsdiffusion:train_segmenter / train_oil_spill_detector / train_change_detector in real QGIS Processing and
under qgis_process: train a tiny model from layers, then apply the written folder as MODEL."""
import os
import shutil
import subprocess
import sysconfig

import fiona
import pytest
import rasterio
from shapely.geometry import box, mapping

from core.checkpoint import load_card
from tests.conftest import REPO, make_scene_raster

pytestmark = pytest.mark.qgis
TINY = {"STEPS": 2, "PATCH_SIZE": 64, "BATCH_SIZE": 2}


def test_the_algorithms_have_the_documented_parameters_and_budget(processing):
    from qgis.core import QgsApplication

    from rs_diffusion_plugin.algorithms import train_common
    from training import finetune
    assert train_common.DEFAULT_STEPS == finetune.DEFAULT_STEPS
    assert train_common.DEFAULT_BATCH == finetune.DEFAULT_BATCH
    expected = {("train_segmenter", "segmentation"): {"INPUT", "LABELS", "CLASS_FIELD", "BASE_MODEL", "OUTPUT_MODEL"},
                ("train_oil_spill_detector", "oilspill"): {"INPUT", "LABELS", "CLASS_FIELD", "BASE_MODEL",
                                                           "OUTPUT_MODEL"},
                ("train_change_detector", "change"): {"INPUT_A", "INPUT_B", "LABELS", "BASE_MODEL", "OUTPUT_MODEL"}}
    for (name, task), documented in expected.items():
        alg = QgsApplication.processingRegistry().algorithmById(f"rsdiffusion:{name}")
        definitions = {p.name(): p for p in alg.parameterDefinitions()}
        assert documented <= set(definitions)
        assert definitions["STEPS"].defaultValue() == finetune.DEFAULT_STEPS[task]


def test_train_segmenter_then_segment_with_the_new_model(processing, tmp_path, starter_model):
    image, labels = make_scene_raster(tmp_path, size=(256, 256))
    result = processing.run("rsdiffusion:train_segmenter", {"INPUT": str(image), "LABELS": str(labels),
                                                            "OUTPUT_MODEL": str(tmp_path / "mine"), **TINY})
    assert result["OUTPUT_MODEL"] == str(tmp_path / "mine") and result["SCORE"] is not None
    assert load_card(result["OUTPUT_MODEL"]).extra["fine_tuning"]["base_model"] == load_card(starter_model).name
    out = processing.run("rsdiffusion:segment_raster", {"INPUT": str(image), "MODEL": result["OUTPUT_MODEL"],
                                                        "OUTPUT": str(tmp_path / "map.tif")})
    with rasterio.open(out["OUTPUT"]) as dst:
        assert dst.shape == (256, 256)


def test_a_missing_class_field_is_a_processing_error(processing, tmp_path):
    from qgis.core import QgsProcessingException
    image, _ = make_scene_raster(tmp_path, size=(128, 128))
    polygons = tmp_path / "labels.gpkg"
    with fiona.open(polygons, "w", driver="GPKG", schema={"geometry": "Polygon", "properties": {"kind": "str"}},
                    crs="EPSG:32633") as dst:
        with rasterio.open(image) as src:
            dst.write({"geometry": mapping(box(*src.bounds)), "properties": {"kind": "water"}})
    with pytest.raises(QgsProcessingException, match="Polygons need a class field"):
        processing.run("rsdiffusion:train_segmenter", {"INPUT": str(image), "LABELS": str(polygons),
                                                       "OUTPUT_MODEL": str(tmp_path / "mine"), **TINY})
    assert not (tmp_path / "mine").exists()


def test_train_oil_spill_and_change_detectors_then_apply_them(processing, tmp_path, sar_starters, change_starters):
    from core.data.change import write_change_pair
    from core.data.sar import write_sar_scene
    sar, sar_labels = tmp_path / "sar.tif", tmp_path / "sar_labels.tif"
    write_sar_scene(sar, sar_labels, 192, 192, seed=7, kind="db")
    oil = processing.run("rsdiffusion:train_oil_spill_detector", {
        "INPUT": str(sar), "LABELS": str(sar_labels), "OUTPUT_MODEL": str(tmp_path / "oil"), **TINY})
    detected = processing.run("rsdiffusion:detect_oil_spills", {"INPUT": str(sar), "MODEL": oil["OUTPUT_MODEL"],
                                                                "OUTPUT": str(tmp_path / "oil.tif")})
    assert os.path.isfile(detected["OUTPUT"])
    a, b, change = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "change.tif"
    write_change_pair(a, b, change, 192, 192, seed=3)
    model = processing.run("rsdiffusion:train_change_detector", {
        "INPUT_A": str(a), "INPUT_B": str(b), "LABELS": str(change), "OUTPUT_MODEL": str(tmp_path / "cd"), **TINY})
    changes = processing.run("rsdiffusion:detect_changes", {"INPUT_A": str(a), "INPUT_B": str(b),
                                                            "MODEL": model["OUTPUT_MODEL"],
                                                            "OUTPUT": str(tmp_path / "changes.tif")})
    assert os.path.isfile(changes["OUTPUT"])


@pytest.mark.slow
def test_qgis_process_trains_then_applies_a_segmenter(tmp_path):
    """A developer profile (the plugin folder + the starters in its model library) driven by qgis_process; the
    repository is on PYTHONPATH for training/, which the plugin ZIP does not vendor yet."""
    from rs_diffusion_plugin.packaging import install_into_profile
    binary = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not os.path.exists(binary):
        pytest.skip("qgis_process.bin not installed")
    profiles = tmp_path / "profiles"
    install_into_profile(profiles)
    image, labels = make_scene_raster(tmp_path, size=(256, 256))
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(profiles), "QT_QPA_PLATFORM": "offscreen",
           "RS_DIFFUSION_SITE_PACKAGES": sysconfig.get_paths()["purelib"], "PYTHONPATH": str(REPO)}
    model = tmp_path / "my model"
    run = subprocess.run([binary, "run", "rsdiffusion:train_segmenter", "--", f"INPUT={image}", f"LABELS={labels}",
                          f"OUTPUT_MODEL={model}", "STEPS=2", "PATCH_SIZE=64", "BATCH_SIZE=2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (model / "model.json").is_file()
    out = tmp_path / "map.tif"
    run = subprocess.run([binary, "run", "rsdiffusion:segment_raster", "--", f"INPUT={image}", f"MODEL={model}",
                          f"OUTPUT={out}"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with rasterio.open(out) as dst, rasterio.open(image) as src:
        assert dst.crs == src.crs and dst.shape == src.shape
