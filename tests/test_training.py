"""Training smoke tests: real subcommands on tiny procedural data."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from core.checkpoint import load_card, load_into
from core.data.scenes import write_scene_dataset
from core.segmentation.model import build_segmenter
from training.__main__ import main as training_main
from training.config import load_config
from training.segment import SegmentTrainConfig, split_pairs
from training.trainer import TrainingError

TINY = {"arch": "FPN", "encoder": "tu-mobilenetv3_small_100", "patch_size": 64, "batch_size": 4,
        "decoder": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
        "samples_per_image": 1, "val_every": 2, "checkpoint_every": 2, "ema_decay": 0.9, "val_fraction": 0.25}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_scene_dataset(tmp_path_factory.mktemp("data") / "scenes", count=8, size=64, seed=5)


def write_config(path, dataset, run, **overrides):
    config = dict(TINY, data=str(dataset), output=str(run), **overrides)
    path.write_text(json.dumps(config))
    return path


def log_steps(run):
    with open(run / "log.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_segment_trains_writes_loadable_model_and_resumes(tmp_path, dataset):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.json", dataset, run, steps=4)
    training_main(["segment", "--config", str(config)])
    card = load_card(run / "model", task="segmentation")
    assert card.architecture["in_channels"] == 3 and [c.name for c in card.classes][0] == "bare soil"
    assert len(card.normalization.offset) == 3 and "mIoU" in card.metrics
    assert card.extra["steps"] == 4
    load_into(build_segmenter(card.architecture), run / "model")
    assert log_steps(run) == [1, 2, 3, 4] and (run / "curves.png").stat().st_size > 1000
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert state["step"] == 4

    training_main(["segment", "--config", str(config), "--steps", "6", "--resume"])
    assert log_steps(run) == [1, 2, 3, 4, 5, 6]
    assert load_card(run / "model").extra["steps"] == 6


def test_training_reduces_the_loss(tmp_path, dataset):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.json", dataset, run, steps=40, lr=3e-3, val_every=100)
    training_main(["segment", "--config", str(config)])
    with open(run / "log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


def test_split_is_image_level_and_deterministic():
    pairs = list(range(10))
    train, val = split_pairs(pairs, 0.2, seed=1)
    assert len(val) == 2 and not set(train) & set(val) and split_pairs(pairs, 0.2, seed=1) == (train, val)


def test_unknown_config_key_is_reported(tmp_path, dataset):
    config = write_config(tmp_path / "c.json", dataset, tmp_path / "run", stpes=3)
    with pytest.raises(TrainingError, match="Unknown key.*stpes"):
        load_config(SegmentTrainConfig, str(config))


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path, dataset):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.json", dataset, run, steps=3, device="cpu")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "training", "segment", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert log_steps(run) == [1, 2, 3]
    load_into(build_segmenter(load_card(run / "model").architecture), run / "model")


def test_png_datasets_train_too(tmp_path):
    """The folder format accepts PNG pairs (no georeferencing needed for training)."""
    from PIL import Image

    from core.data.scenes import SCENE_CLASSES, make_scene
    root = tmp_path / "png"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        image, labels = make_scene(64, 64, seed=i)
        Image.fromarray(image.transpose(1, 2, 0)).save(root / "images" / f"t{i}.png")
        Image.fromarray(labels).save(root / "masks" / f"t{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": SCENE_CLASSES}))
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.json", root, run, steps=2)
    training_main(["segment", "--config", str(config)])
    card = load_card(run / "model")
    assert card.bands == ["band 1", "band 2", "band 3"] and card.ground_resolution is None
