"""A tiny fusion prior trained for real (training/fusion.py, a few steps on procedural IR/visible
pairs) and georeferenced IR/visible pairs, for tests of everything that fuses.

Import the fixtures into a test module (`from tests.fusion_fixtures import tiny_prior  # noqa: F401`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.data.irvis import write_irvis_dataset, write_irvis_pair
from training.fusion import FusionPriorTrainConfig, train_fusion_prior

# val_every 0: no preview grid.
TINY_PRIOR = {"preset": "small", "patch_size": 32, "batch_size": 2, "samples_per_image": 1, "steps": 2,
              "val_every": 0, "checkpoint_every": 1000, "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory) -> Path:
    """A 'small' fusion-prior model folder (model.json + model.safetensors), 2 training steps."""
    root = tmp_path_factory.mktemp("fusion_prior")
    data = write_irvis_dataset(root / "pairs", count=2, size=64, seed=3)
    return train_fusion_prior(FusionPriorTrainConfig(data=str(data), output=str(root / "run"), name="tiny prior",
                                                     **TINY_PRIOR))


@pytest.fixture
def irvis_pair(tmp_path) -> tuple[Path, Path]:
    """(infrared, visible) GeoTIFFs on the same UTM grid, 72 x 60 px (not a multiple of the prior's 8)."""
    infrared, visible = tmp_path / "ir.tif", tmp_path / "vi.tif"
    write_irvis_pair(infrared, visible, 60, 72, seed=21)
    return infrared, visible
