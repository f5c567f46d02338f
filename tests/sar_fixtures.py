"""Tiny SAR oil-spill models trained for real (training/sar.py on procedural scenes, a few steps each)
and the real sample crops written as georeferenced GeoTIFFs, for tests of everything that runs them.

Import the fixtures into a test module (`from tests.sar_fixtures import sar_models  # noqa: F401`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from core.data.sar import SAR_CRS, open_sar_dataset, write_sar_dataset
from core.raster import write_geotiff
from training.sar import SarJointNetTrainConfig, SarossTrainConfig, train_jointnet, train_saross

SAR_WKT = rasterio.crs.CRS.from_string(SAR_CRS).to_wkt()
CROP_ORIGIN = (400_000.0, 4_200_000.0)   # UTM 34N, the Ionian Sea
CROP_RESOLUTION = 10.0
# Four 64 px scenes: the smallest procedural set on which every stage runs (the "small" SAR-JointNet is 64 px).
TINY_DATA = {"count": 4, "size": 64, "seed": 11}
# val_every 0: no DDIM-50 preview grids (about 20 s each on a busy CPU).
TINY_JOINTNET = {"preset": "small", "batch_size": 2, "samples_per_image": 1, "steps": 1, "val_every": 0,
                 "checkpoint_every": 1000, "device": "cpu"}
TINY_SAROSS = {"preset": "small", "patch_size": 64, "batch_size": 2, "samples_per_image": 1, "steps": 2,
               "val_fraction": 0.25, "val_every": 1000, "checkpoint_every": 1000, "device": "cpu"}


@dataclass
class SarModels:
    data: Path          # the procedural training set (folder format, SAR_CLASSES)
    saross: Path        # SAROSS-Net model directory
    jointnet: Path      # SAR-JointNet stage 3 model directory (stages 1, 2, 3 trained in turn)


@pytest.fixture(scope="session")
def sar_models(tmp_path_factory) -> SarModels:
    """A tiny SAROSS-Net and a tiny stage-3 SAR-JointNet, trained on 4 procedural 64 px scenes."""
    root = tmp_path_factory.mktemp("sar_models")
    data = write_sar_dataset(root / "data", **TINY_DATA)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = None
        for stage in (1, 2, 3):
            model = train_jointnet(SarJointNetTrainConfig(
                data=str(data), output=str(root / f"jointnet_{stage}"), stage=stage, init=str(model or ""),
                name=f"tiny stage {stage}", **TINY_JOINTNET))
        saross = train_saross(SarossTrainConfig(data=str(data), output=str(root / "saross"), name="tiny saross",
                                                **TINY_SAROSS))
    finally:
        torch.set_num_threads(threads)
    return SarModels(data, saross, model)


def real_crops(split: str = "test"):
    """The shared side-by-side sample set (skips when absent)."""
    from tests.conftest import shared_data
    return open_sar_dataset(shared_data("sar_oilspill"), split)


def write_real_crop(path: str | Path, index: int = 0, split: str = "test", resolution: float = CROP_RESOLUTION,
                    origin: tuple[float, float] = CROP_ORIGIN) -> tuple[Path, np.ndarray]:
    """The SAR (left) half of a real crop as a uint8 GeoTIFF in UTM 34N; returns (path, oil mask of the right half)."""
    raw, valid, labels, _ = real_crops(split).read(index)
    assert valid.all()
    image = np.clip(np.round(raw), 0, 255).astype(np.uint8)
    transform = (resolution, 0.0, origin[0], 0.0, -resolution, origin[1])
    path = write_geotiff(path, image, crs_wkt=SAR_WKT, transform=transform, band_names=["VV"])
    return Path(path), labels == 1
