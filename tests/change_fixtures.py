"""Tiny change models trained for real (training/changedet.py, training/fcf.py, training/rdfmig.py, a few steps
each on 2 procedural 64 px triplets) and a georeferenced procedural pair, for tests of everything that
detects or synthesises changes.

Import the fixtures into a test module (`from tests.change_fixtures import tiny_changedet  # noqa: F401`).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.data.change import write_change_dataset, write_change_pair
from training.changedet import ChangeDetTrainConfig, train_changedet
from training.fcf import FcfTrainConfig, train_fcf
from training.rdfmig import RdfmigTrainConfig, train_rdfmig

TINY_DATA = {"count": 2, "size": 64, "seed": 7}
# 40 steps (~2 s): the fewest after which the detector marks some change on the test pair (a few polygons, IoU
# ~0.2); after 2 it marks none and every polygon check would pass vacuously. val_fraction 0: both triplets train.
TINY_CHANGEDET = {"preset": "small", "patch_size": 64, "batch_size": 2, "samples_per_image": 1, "steps": 40,
                  "lr": 3e-3, "val_fraction": 0.0, "val_every": 1000, "checkpoint_every": 1000, "device": "cpu"}
TINY_FCF = {"patch_size": 32, "batch_size": 2, "samples_per_image": 1, "steps": 2, "val_every": 1000,
            "checkpoint_every": 1000, "device": "cpu"}
# val_every 0: no preview grid.
TINY_RDFMIG = {"preset": "small", "patch_size": 32, "batch_size": 2, "samples_per_image": 1, "steps": 2,
               "val_every": 0, "checkpoint_every": 1000, "device": "cpu"}
PAIR_HEIGHT, PAIR_WIDTH = 72, 96    # not multiples of the detector's 16 px: padded tiles are exercised


@pytest.fixture(scope="session")
def change_data(tmp_path_factory) -> Path:
    """Two procedural RGB triplets of 64 px in the change folder layout (A/, B/, label/)."""
    return write_change_dataset(tmp_path_factory.mktemp("change_data") / "data", **TINY_DATA)


def _one_thread(train, config):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_changedet(tmp_path_factory, change_data) -> Path:
    """A 'small' FC-Siam-conc change detector folder (RGB, 64 px tiles), 40 training steps."""
    run = tmp_path_factory.mktemp("changedet") / "run"
    return _one_thread(train_changedet, ChangeDetTrainConfig(data=str(change_data), output=str(run),
                                                             name="tiny changedet", **TINY_CHANGEDET))


@pytest.fixture(scope="session")
def tiny_rdfmig(tmp_path_factory, change_data) -> Path:
    """A 'small' RDF-MIG model folder (FCF representation, 32 px triplets) on a tiny FCF, 2 steps each."""
    root = tmp_path_factory.mktemp("rdfmig")
    fcf = _one_thread(train_fcf, FcfTrainConfig(data=str(change_data), output=str(root / "fcf"), name="tiny fcf",
                                                **TINY_FCF))
    return _one_thread(train_rdfmig, RdfmigTrainConfig(data=str(change_data), output=str(root / "rdfmig"),
                                                       fcf=str(fcf), name="tiny rdfmig", **TINY_RDFMIG))


@pytest.fixture
def change_pair(tmp_path) -> tuple[Path, Path, Path]:
    """(date A, date B, 0/1 change label) GeoTIFFs on one UTM 33N grid (0.5 m), 96 x 72 px."""
    a, b, label = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "label.tif"
    write_change_pair(a, b, label, PAIR_HEIGHT, PAIR_WIDTH, seed=9)
    return a, b, label
