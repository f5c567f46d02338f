"""Shared fixtures: one real QgsApplication (also serving pytest-qt), Processing with our
provider, small georeferenced rasters, and the shipped starter model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
UTM33 = rasterio.crs.CRS.from_epsg(32633).to_wkt()


@pytest.fixture(scope="session")
def qapp():
    """The QgsApplication every Qt test runs in (pytest-qt uses this fixture)."""
    from qgis.core import QgsApplication
    app = QgsApplication.instance()
    if app is None:
        app = QgsApplication([], True)
        app.initQgis()
    return app


@pytest.fixture(scope="session")
def processing(qapp):
    """Processing initialised with the rsdiffusion provider registered."""
    from qgis.core import QgsApplication
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing
    Processing.initialize()
    from rs_diffusion_plugin.provider import RsDiffusionProvider
    registry = QgsApplication.processingRegistry()
    if registry.providerById("rsdiffusion") is None:
        _KEEP_ALIVE.append(RsDiffusionProvider())  # the Python object must outlive the registration
        registry.addProvider(_KEEP_ALIVE[-1])
    import processing as processing_module
    return processing_module


_KEEP_ALIVE: list = []


@pytest.fixture
def project(qapp):
    """The QGIS project, emptied before and after the test."""
    from qgis.core import QgsProject
    project = QgsProject.instance()
    project.clear()
    yield project
    project.clear()


@pytest.fixture(scope="session")
def starter_model():
    from core.catalog import starter_model_dir
    path = starter_model_dir("segmentation")
    assert (path / "model.json").is_file(), "starter model missing: run `make starter-models`"
    return path


@pytest.fixture(scope="session")
def satsynth_starters():
    """The shipped SatSynth base and x2 models."""
    from core.catalog import starter_model_dir
    paths = starter_model_dir("satsynth"), starter_model_dir("satsynth-sr")
    assert all((p / "model.json").is_file() for p in paths), "SatSynth starter missing: run `make starter-models`"
    return paths


@pytest.fixture(scope="session")
def idgbr_starter():
    """The shipped IDGBR refiner."""
    from core.catalog import starter_model_dir
    path = starter_model_dir("idgbr")
    assert (path / "model.json").is_file(), "IDGBR starter missing: run `make starter-models`"
    return path


@pytest.fixture(scope="session")
def sar_starters():
    """The shipped SAROSS-Net and SAR-JointNet starter models."""
    from core.catalog import starter_model_dir
    paths = starter_model_dir("saross"), starter_model_dir("sar-jointnet")
    assert all((p / "model.json").is_file() for p in paths), "SAR starters missing: run `make starter-models`"
    return paths


@pytest.fixture(scope="session")
def fusion_starter():
    """The shipped fusion prior."""
    from core.catalog import starter_model_dir
    path = starter_model_dir("fusion-prior")
    assert (path / "model.json").is_file(), "fusion-prior starter missing: run `make starter-models`"
    return path


@pytest.fixture(scope="session")
def change_starters():
    """The shipped change detector and RDF-MIG starter models."""
    from core.catalog import starter_model_dir
    paths = starter_model_dir("changedet"), starter_model_dir("rdfmig")
    assert all((p / "model.json").is_file() for p in paths), "change starters missing: run `make starter-models`"
    return paths


def make_scene_raster(folder: Path, size=(200, 260), seed=3, nodata_border=0, name="scene"):
    from core.data.scenes import write_scene
    image, labels = folder / f"{name}.tif", folder / f"{name}_labels.tif"
    write_scene(image, labels, size[0], size[1], seed=seed, nodata_border=nodata_border)
    return image, labels


@pytest.fixture
def scene_raster(tmp_path):
    """A 200 x 260 px procedural RGB scene (uint8, EPSG:32633, 0.5 m) with a nodata border."""
    return make_scene_raster(tmp_path, nodata_border=6)[0]


def files_in(folder: Path) -> set[str]:
    return {p.name for p in Path(folder).iterdir()}


def shared_data(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared sample data not available: {path}")
    return path


def write_test_raster(path, array, crs=UTM33, nodata=None, transform=(0.5, 0, 500000, 0, -0.5, 5600000)):
    from core.raster import write_geotiff
    return write_geotiff(path, np.asarray(array), crs_wkt=crs, transform=transform, nodata=nodata)


def read_polygons(path) -> tuple[list[dict], object]:
    """(feature properties with a shapely `geometry`, CRS) of a GeoPackage."""
    import fiona
    from shapely.geometry import shape
    with fiona.open(path) as src:
        rows = [dict(f["properties"], geometry=shape(f["geometry"])) for f in src]
        return rows, src.crs


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads; one thread avoids contention on a busy 2-core machine."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
