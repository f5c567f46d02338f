"""rsdiffusion:segment_raster in real QGIS Processing: processing.run, a model, batch-style
repeated runs, and the qgis_process command line with the packaged plugin."""
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest
import rasterio
from qgis.core import (QgsProcessingContext, QgsProcessingFeedback, QgsProcessingModelAlgorithm,
                       QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                       QgsProcessingModelParameter, QgsProcessingParameterRasterLayer, QgsProject, QgsRasterLayer)

from core.model_pack import install_pack
from rs_diffusion_plugin.library import model_library_dir
from rs_diffusion_plugin.packaging import build_release, install_into_profile
from tests.conftest import files_in, make_scene_raster, shared_data

pytestmark = pytest.mark.qgis
ALG = "rsdiffusion:segment_raster"


def test_algorithm_is_registered_with_the_documented_parameters(processing, starter_model):
    from qgis.core import QgsApplication
    alg = QgsApplication.processingRegistry().algorithmById(ALG)
    assert alg is not None
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"INPUT", "MODEL", "OUTPUT", "DEVICE", "TILE_SIZE", "OVERLAP", "OUTPUT_POLYGONS"} <= names
    assert alg.parameterDefinition("MODEL").defaultValue() == str(starter_model)


def test_processing_run_on_a_layer(processing, tmp_path, scene_raster, starter_model):
    layer = QgsRasterLayer(str(scene_raster), "scene")
    feedback = QgsProcessingFeedback()
    log = []
    feedback.pushInfo = lambda text: log.append(text)
    result = processing.run(ALG, {"INPUT": layer, "OUTPUT": str(tmp_path / "classes.tif"),
                                  "OUTPUT_POLYGONS": str(tmp_path / "polys.gpkg")}, feedback=feedback)
    out = QgsRasterLayer(result["OUTPUT"], "out")
    assert out.isValid() and out.crs() == layer.crs() and out.extent() == layer.extent()
    assert os.path.isfile(result["OUTPUT_POLYGONS"])
    assert any("on cpu" in line for line in log)


def test_bad_input_gives_a_clear_processing_error(processing, tmp_path, starter_model):
    from qgis.core import QgsProcessingException
    from tests.conftest import write_test_raster
    two = write_test_raster(tmp_path / "two.tif", np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(QgsProcessingException, match=r"has 2 band\(s\) but the model needs 3"):
        processing.run(ALG, {"INPUT": str(two), "OUTPUT": str(tmp_path / "c.tif")})
    assert files_in(tmp_path) == {"two.tif"}


def test_runs_inside_a_processing_model(processing, tmp_path, scene_raster, starter_model):
    """The algorithm as a step of a graphical-modeler model (model input -> segment -> output)."""
    model = QgsProcessingModelAlgorithm("segment model", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "image"),
                            QgsProcessingModelParameter("image"))
    child = QgsProcessingModelChildAlgorithm(ALG)
    child.setChildId("segment")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    from qgis.core import QgsProcessingModelOutput
    output = QgsProcessingModelOutput("classes", "classes")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"classes": output})
    model.addChildAlgorithm(child)
    model.initAlgorithm()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    dest = str(tmp_path / "model_classes.tif")
    outputs, ok = model.run({"image": str(scene_raster), "segment:classes": dest}, context, QgsProcessingFeedback())
    assert ok, outputs
    with rasterio.open(dest) as dst, rasterio.open(scene_raster) as src:
        assert dst.transform == src.transform


def test_batch_of_inputs(processing, tmp_path, starter_model):
    """What the batch dialog does: the same algorithm over several layers."""
    outputs = []
    for i in range(2):
        image, _ = make_scene_raster(tmp_path, size=(96, 96), seed=i, name=f"s{i}")
        outputs.append(processing.run(ALG, {"INPUT": str(image), "OUTPUT": str(tmp_path / f"c{i}.tif")})["OUTPUT"])
    assert all(os.path.isfile(o) for o in outputs)


def test_real_georeferenced_landsat_raster(processing, tmp_path, starter_model):
    """Any raster works: a 300 m Landsat RGB with nodata 0 (not what the starter was trained on)."""
    src = shared_data("raster_georef", "RGB.byte.tif")
    result = processing.run(ALG, {"INPUT": str(src), "OUTPUT": str(tmp_path / "landsat.tif")})
    with rasterio.open(src) as a, rasterio.open(result["OUTPUT"]) as b:
        assert a.crs == b.crs and a.transform == b.transform
        nodata_in = (a.read(1) == 0) & (a.read(2) == 0) & (a.read(3) == 0)
        assert (b.read(1)[nodata_in] == b.nodata).all()


@pytest.mark.slow
def test_qgis_process_with_the_packaged_plugin(tmp_path, starter_model, satsynth_starters, idgbr_starter,
                                               sar_starters, fusion_starter, change_starters):
    """The release zip unzipped into a clean profile, torch & co. from RS_DIFFUSION_SITE_PACKAGES, no model
    reachable until the models pack is installed into the profile's model library (no repository checkout
    on the path: the ZIP carries core, the pack carries the models)."""
    binary = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not os.path.exists(binary):
        pytest.skip("qgis_process.bin not installed")
    profiles = tmp_path / "profiles"
    plugin_zip, models_pack = build_release(tmp_path / "dist")
    profile = install_into_profile(profiles, zip_path=plugin_zip)
    image, _ = make_scene_raster(tmp_path, size=(128, 160))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(profiles), QT_QPA_PLATFORM="offscreen",
               RS_DIFFUSION_SITE_PACKAGES=sysconfig.get_paths()["purelib"])
    listing = subprocess.run([binary, "list"], capture_output=True, text=True, env=env, timeout=300)
    assert ALG in listing.stdout, listing.stdout[-2000:] + listing.stderr[-2000:]
    out = tmp_path / "qp.tif"
    run = subprocess.run([binary, "run", ALG, "--", f"INPUT={image}", f"OUTPUT={out}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0 and not out.exists()   # the plugin ZIP alone holds no model
    said = run.stdout + run.stderr
    assert "No 'segmentation' model is installed" in said and "install the starter models pack" in said, said[-2000:]
    installed = install_pack(models_pack, model_library_dir(profile))
    assert installed.folder == profile / "rs_diffusion" / "models" / "starters"
    run = subprocess.run([binary, "run", ALG, "--", f"INPUT={image}", f"OUTPUT={out}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with rasterio.open(out) as dst, rasterio.open(image) as src:
        assert dst.crs == src.crs and dst.shape == src.shape
    refined = tmp_path / "qp_refined.tif"   # the starter segmenter's map, refined by the starter IDGBR model
    run = subprocess.run([binary, "run", "rsdiffusion:refine_classification", "--", f"INPUT={image}",
                          f"CLASSIFICATION={out}", "STEPS=2", f"OUTPUT={refined}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with rasterio.open(refined) as dst, rasterio.open(out) as coarse:
        assert dst.crs == coarse.crs and dst.transform == coarse.transform and dst.shape == coarse.shape
        assert set(np.unique(dst.read(1))) <= set(np.unique(coarse.read(1)))
    pairs = tmp_path / "qp_pairs"
    run = subprocess.run([binary, "run", "rsdiffusion:synthesize_pairs", "--", "COUNT=1", "SAMPLER=ddim", "STEPS=2",
                          "SR=true", f"OUTPUT_FOLDER={pairs}"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with rasterio.open(pairs / "masks" / "pair_00000.tif") as mask:   # the installed pack's base + x2 models
        assert mask.width == 128
    from core.data.sar import write_land_mask, write_sar_scene
    sar, sar_labels = tmp_path / "sar.tif", tmp_path / "sar_labels.tif"
    write_sar_scene(sar, sar_labels, 192, 224, seed=4, kind="db")
    land = write_land_mask(sar_labels, tmp_path / "land.gpkg")
    oil, slicks = tmp_path / "qp_oil.tif", tmp_path / "qp_slicks.gpkg"
    run = subprocess.run([binary, "run", "rsdiffusion:detect_oil_spills", "--", f"INPUT={sar}", f"LAND_MASK={land}",
                          f"OUTPUT={oil}", f"OUTPUT_POLYGONS={slicks}"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with rasterio.open(oil) as dst, rasterio.open(sar) as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
    assert slicks.is_file()
    sar_pairs = tmp_path / "qp_sar_pairs"
    run = subprocess.run([binary, "run", "rsdiffusion:synthesize_sar_pairs", "--", "COUNT=1", "STEPS=2",
                          f"OUTPUT_FOLDER={sar_pairs}"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (sar_pairs / "soft" / "sar_00000.tif").is_file()   # the installed pack's SAR-JointNet
    from core.data.irvis import write_irvis_pair
    ir, vi = tmp_path / "ir.tif", tmp_path / "vi.tif"
    write_irvis_pair(ir, vi, 60, 72, seed=21)
    fused = tmp_path / "qp_fused.tif"
    run = subprocess.run([binary, "run", "rsdiffusion:fuse_ir_visible", "--", f"INFRARED={ir}", f"VISIBLE={vi}",
                          "STEPS=3", f"OUTPUT={fused}"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "PRIOR:" in run.stdout and "starter" in run.stdout     # the installed pack's fusion prior
    with rasterio.open(fused) as dst, rasterio.open(vi) as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape and dst.count == 3
    from core.data.change import write_change_pair
    date_a, date_b, change_label = tmp_path / "date_a.tif", tmp_path / "date_b.tif", tmp_path / "change_label.tif"
    write_change_pair(date_a, date_b, change_label, 72, 96, seed=9)
    changes, change_polygons = tmp_path / "qp_changes.tif", tmp_path / "qp_changes.gpkg"
    run = subprocess.run([binary, "run", "rsdiffusion:detect_changes", "--", f"INPUT_A={date_a}", f"INPUT_B={date_b}",
                          f"OUTPUT={changes}", f"OUTPUT_POLYGONS={change_polygons}"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "CHANGED_AREA_KM2:" in run.stdout and change_polygons.is_file()   # the installed pack's detector
    with rasterio.open(changes) as dst, rasterio.open(date_a) as src:
        assert dst.crs == src.crs and dst.transform == src.transform and dst.shape == src.shape
    change_set = tmp_path / "qp_change_set"
    run = subprocess.run([binary, "run", "rsdiffusion:build_change_training_set", "--", f"INPUT_A={date_a}",
                          f"INPUT_B={date_b}", f"CHANGES={change_label}", "PATCH_SIZE=32", "STRIDE=32",
                          f"OUTPUT_FOLDER={change_set}"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(list((change_set / "label").iterdir())) == 6
    triplets = tmp_path / "qp_triplets"
    run = subprocess.run([binary, "run", "rsdiffusion:synthesize_change_pairs", "--", "COUNT=1", "STEPS=2",
                          f"OUTPUT_FOLDER={triplets}"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (triplets / "label" / "change_00000.tif").is_file()   # the installed pack's RDF-MIG
    bundled = profile / "python" / "plugins" / "rs_diffusion_plugin" / "vendor"
    assert (bundled / "core").is_dir() and not (bundled / "resources" / "models").exists()


def test_build_training_set_from_layers(processing, tmp_path):
    """rsdiffusion:build_training_set with a polygon layer (GeoPackage) and with a class raster."""
    import fiona
    from qgis.core import QgsVectorLayer
    from shapely.geometry import box, mapping

    from core.data.folder import FolderDataset
    image, labels = make_scene_raster(tmp_path, size=(128, 128))
    with rasterio.open(image) as src:
        left, top, crs = src.transform.c, src.transform.f, src.crs.to_wkt()
    schema = {"geometry": "Polygon", "properties": {"cls": "int"}}
    with fiona.open(tmp_path / "polys.gpkg", "w", driver="GPKG", schema=schema, crs=crs, layer="fields") as dst:
        dst.write({"geometry": mapping(box(left + 2, top - 10, left + 12, top - 4)), "properties": {"cls": 3}})
    vector = QgsVectorLayer(f"{tmp_path / 'polys.gpkg'}|layername=fields", "fields", "ogr")
    assert vector.isValid()
    out = processing.run("rsdiffusion:build_training_set", {
        "INPUT": str(image), "LABELS": vector, "CLASS_FIELD": "cls", "PATCH_SIZE": 64, "STRIDE": 64,
        "OUTPUT_FOLDER": str(tmp_path / "from_polygons")})
    assert out["PATCHES"] == 4 and out["SKIPPED"] == 0
    mask = rasterio.open(tmp_path / "from_polygons" / "masks" / "scene_r000000_c000000.tif").read(1)
    assert (mask[8:20, 4:24] == 3).all() and mask.sum() == 3 * 12 * 20

    out = processing.run("rsdiffusion:build_training_set", {
        "INPUT": str(image), "LABELS": str(labels), "PATCH_SIZE": 64, "STRIDE": 32,
        "OUTPUT_FOLDER": str(tmp_path / "from_raster")})
    data = FolderDataset.open(out["OUTPUT_FOLDER"])
    assert len(data.pairs) == out["PATCHES"] == 9 and data.bands == ["red", "green", "blue"]
    with rasterio.open(labels) as full, rasterio.open(data.pairs[4][1]) as patch:
        np.testing.assert_array_equal(patch.read(1), full.read(1)[32:96, 32:96])


def test_synthesize_pairs_with_the_starter_models(processing, tmp_path, satsynth_starters):
    from core.data.folder import FolderDataset
    out = processing.run("rsdiffusion:synthesize_pairs", {
        "COUNT": 3, "SAMPLER": "ddim", "STEPS": 4, "SR": True, "SEED": 7, "OUTPUT_FOLDER": str(tmp_path / "pairs")})
    assert out["PAIRS"] == 3 and out["OUTPUT_FOLDER"] == str(tmp_path / "pairs")
    data = FolderDataset.open(out["OUTPUT_FOLDER"])
    assert len(data.pairs) == 3 and data.bands == ["red", "green", "blue"]
    with rasterio.open(data.pairs[0][0]) as image, rasterio.open(data.pairs[0][1]) as mask:
        assert (image.width, image.height, image.dtypes[0], image.crs) == (128, 128, "uint8", None)
        assert set(mask.read(1).ravel()) <= {c.value for c in data.classes}
    index = (tmp_path / "pairs" / "index.csv").read_text().splitlines()
    assert len(index) == 4 and index[0].startswith("id,image,mask") and ",ddim-4," in index[1]


def test_synthesize_pairs_ddpm_and_refusals(processing, tmp_path, satsynth_starters):
    from qgis.core import QgsProcessingException
    out = processing.run("rsdiffusion:synthesize_pairs", {
        "COUNT": 1, "SAMPLER": "ddpm", "OUTPUT_FOLDER": str(tmp_path / "ddpm")})
    assert ",ddpm-1000," in (tmp_path / "ddpm" / "index.csv").read_text()
    with rasterio.open(tmp_path / "ddpm" / "images" / "pair_00000.tif") as image:
        assert image.width == 64
    with pytest.raises(QgsProcessingException, match="not empty"):
        processing.run("rsdiffusion:synthesize_pairs", {"COUNT": 1, "STEPS": 2, "OUTPUT_FOLDER": out["OUTPUT_FOLDER"]})
    with pytest.raises(QgsProcessingException, match="'satsynth' model"):
        processing.run("rsdiffusion:synthesize_pairs", {"MODEL": str(satsynth_starters[1]), "COUNT": 1,
                                                        "OUTPUT_FOLDER": str(tmp_path / "wrong")})
    assert not (tmp_path / "wrong").exists()
