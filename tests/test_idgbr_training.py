"""IDGBR training commands on a tiny procedural dataset: embedding -> VAE -> refiner, coarse maps, evaluation.

The three stages are trained once per module (a handful of steps each) and chained, as the starter is.
"""
import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors.torch import save_file

from core.checkpoint import load_card
from core.data.scenes import write_scene_dataset
from core.raster import RasterError
from core.refinement.embedding import LabelEmbedding
from core.refinement.model import load_refiner, refine
from training import idgbr, idgbr_data

TINY_VIT = "vit_tiny_patch16_224"   # stands in for DINOv2 (same timm loading path, random local weights)


def run(add_arguments, main, argv):
    """What `python -m training <command> ARGV` does, without training/__main__.py."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    main(parser.parse_args([str(a) for a in argv]))


def write_config(path, **values):
    path.write_text(json.dumps(values, default=str))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("idgbr")


@pytest.fixture(scope="module")
def dataset(workdir):
    """Three 64 px scenes with coarse maps made by boundary degradation of the masks."""
    data = write_scene_dataset(workdir / "data", count=3, size=64, seed=4)
    run(idgbr_data.add_coarse_arguments, idgbr_data.main_coarse, ["--data", data, "--degrade", 3, "--seed", 1])
    return data


@pytest.fixture(scope="module")
def embedding_dir(workdir, dataset):
    config = write_config(workdir / "embed.json", data=dataset, output=workdir / "embed", map_size=16,
                          batch_size=16, steps=30, lr=0.1, val_every=30, checkpoint_every=30, device="cpu")
    run(idgbr.add_embed_arguments, idgbr.main_embed, ["--config", config])
    return workdir / "embed" / "model"


@pytest.fixture(scope="module")
def vae_dir(workdir, dataset, embedding_dir):
    config = write_config(workdir / "vae.json", data=dataset, output=workdir / "vae", embedding=embedding_dir,
                          patch_size=32, batch_size=2, steps=2, val_every=2, checkpoint_every=2, device="cpu")
    run(idgbr.add_vae_arguments, idgbr.main_vae, ["--config", config])
    return workdir / "vae" / "model"


@pytest.fixture(scope="module")
def dinov2_file(workdir):
    torch.manual_seed(0)
    path = workdir / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_VIT).state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def refiner_config(workdir, dataset, embedding_dir, vae_dir, dinov2_file):
    """Two steps with REPA (first step only), a preview grid at step 2; the run directory is workdir/idgbr."""
    config = write_config(workdir / "idgbr.json", data=dataset, output=workdir / "idgbr", embedding=embedding_dir,
                          vae=vae_dir, dinov2=dinov2_file, dinov2_model=TINY_VIT, repa_steps=1, patch_size=32,
                          batch_size=2, steps=2, val_every=2, checkpoint_every=2, ema_decay=0.9, device="cpu")
    run(idgbr.add_arguments, idgbr.main, ["--config", config])
    return config


def test_embedding_learns_a_lossless_round_trip(embedding_dir, dataset):
    card = load_card(embedding_dir, task=idgbr.EMBEDDING_TASK)
    assert card.architecture == {"classes": 5} and [c.value for c in card.classes] == [0, 1, 2, 3, 4]
    assert card.bands == ["red", "green", "blue"] and len(card.normalization.offset) == 3
    torch.manual_seed(0)
    assert idgbr.round_trip_accuracy(LabelEmbedding(5)) < 0.9   # random init: classes collide
    trained = idgbr.load_embedding(str(embedding_dir), card.classes)
    assert idgbr.round_trip_accuracy(trained) > 0.99
    assert card.metrics["round_trip_accuracy"] > 0.99


def test_vae_exports_its_latent_scaling_factor(vae_dir):
    card = load_card(vae_dir, task=idgbr.VAE_TASK)
    factor = card.architecture["vae"]["scaling_factor"]
    assert factor > 0 and abs(factor - 1) > 1e-3
    assert set(card.metrics) == {"image_psnr", "label_accuracy"} and 0 <= card.metrics["label_accuracy"] <= 1
    assert card.tile_size == 32 and "KL" in card.extra["loss"]


def test_refiner_run_writes_a_loadable_model_and_resumes(workdir, refiner_config, vae_dir):
    model_dir = workdir / "idgbr" / "model"
    model, card = load_refiner(model_dir)
    vae_card = load_card(vae_dir)
    assert card.architecture["vae"]["scaling_factor"] == vae_card.architecture["vae"]["scaling_factor"]
    assert card.architecture["repa_dim"] == 192 and card.extra["repa"].startswith("on")
    assert card.extra["steps"] == 2 and card.extra["dtype"] == "uint8" and card.tile_size == 32
    assert card.extra["sampling_steps"] == 25 and card.extra["guidance_scale"] == 3.0
    assert "degraded boundaries" in card.extra["coarse_source"]
    assert card.normalization.offset[0] >= 0 and card.normalization.scale[0] <= 255
    assert (workdir / "idgbr" / "samples_000002.png").is_file() and "refined_accuracy" in card.metrics
    probabilities = refine(model, torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long), steps=2)
    assert probabilities.shape == (1, 5, 32, 32)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 32, 32))

    run(idgbr.add_arguments, idgbr.main, ["--config", refiner_config, "--steps", 3, "--resume"])
    assert load_card(model_dir).extra["steps"] == 3
    with open(workdir / "idgbr" / "log.csv") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_coarse_labels_degrade_boundaries_of_the_masks(dataset, tmp_path):
    coarse = dataset / "coarse"
    assert "0..3 px" in (coarse / "source.txt").read_text()
    changed = 0
    for mask in sorted((dataset / "masks").iterdir()):
        with rasterio.open(mask) as truth, rasterio.open(coarse / mask.name) as degraded:
            assert (degraded.shape, degraded.transform, degraded.crs) == (truth.shape, truth.transform, truth.crs)
            true_labels, coarse_labels = truth.read(1), degraded.read(1)
        assert set(np.unique(coarse_labels)) <= set(np.unique(true_labels))
        changed += (coarse_labels != true_labels).sum()
    assert changed > 0
    with pytest.raises(RasterError, match="not empty"):
        idgbr_data.write_coarse_labels(str(dataset), degrade=2)
    # the default source: the starter segmenter's predictions, with the dataset's class values
    run(idgbr_data.add_coarse_arguments, idgbr_data.main_coarse, ["--data", dataset, "--output", tmp_path / "pred"])
    assert "segmentation model" in (tmp_path / "pred" / "source.txt").read_text()
    with rasterio.open(tmp_path / "pred" / "scene_0000.tif") as predicted:
        assert predicted.shape == (64, 64) and set(np.unique(predicted.read(1))) <= {0, 1, 2, 3, 4}


def test_degradation_moves_boundaries_by_at_most_the_shift():
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 10:30] = 7
    out = idgbr_data.degrade_boundaries(labels, 3, np.random.default_rng(0))
    square = np.argwhere(out == 7)
    assert set(np.unique(out)) <= {0, 7} and len(square)
    assert square.min() >= 10 - 3 and square.max() <= 29 + 3
    inner = labels.copy()
    inner[:] = 0
    inner[13:27, 13:27] = 7
    assert (out[inner == 7] == 7).all()   # nothing deeper than 3 px inside the square changes


def test_evaluate_refinement_writes_both_rows(workdir, refiner_config, dataset, tmp_path):
    output = tmp_path / "evaluation"
    run(idgbr_data.add_evaluate_arguments, idgbr_data.main_evaluate,
        ["--data", dataset, "--output", output, "--model", workdir / "idgbr" / "model", "--steps", 2, "--limit", 2,
         "--tile-size", 32, "--device", "cpu"])
    assert sorted(p.name for p in (output / "refined").iterdir()) == ["scene_0000.tif", "scene_0001.tif"]
    with open(output / "metrics.csv") as f:
        rows = {row["source"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"coarse", "refined"} and {"mIoU", "WFm@3", "bIoU@5/water"} <= set(rows["coarse"])
    assert float(rows["coarse"]["accuracy"]) < 1
    table = (output / "metrics.md").read_text()
    for metric in idgbr_data.REPORTED_METRICS:
        assert f"| {metric} |" in table
    # which model, which data (and how its coarse maps were made), which settings
    model_name = load_card(workdir / "idgbr" / "model").name
    assert f"- model: '{model_name}' ({(workdir / 'idgbr' / 'model').resolve()})" in table
    assert (f"- data: {dataset.resolve()}: 2 images, coarse maps: true masks with degraded boundaries: each class "
            "region") in table
    assert "2 DDIM steps" in table and "tiles of 32 px" in table and "source unknown" not in table
    with pytest.raises(RasterError, match="not empty"):
        idgbr_data.evaluate_refinement(str(dataset), str(output), str(workdir / "idgbr" / "model"), steps=2)


def test_evaluation_names_coarse_maps_of_unknown_origin(workdir, refiner_config, dataset, tmp_path):
    copy = tmp_path / "copy"
    for sub in ("images", "masks", "coarse"):
        (copy / sub).mkdir(parents=True)
        for path in (dataset / sub).glob("scene_0000.tif"):
            (copy / sub / path.name).write_bytes(path.read_bytes())
    (copy / "classes.json").write_bytes((dataset / "classes.json").read_bytes())
    table = idgbr_data.evaluate_refinement(str(copy), str(tmp_path / "evaluation"), str(workdir / "idgbr" / "model"),
                                           steps=2, device="cpu", tile_size=32)
    assert "coarse maps: origin not recorded (no coarse/source.txt)" in table and "tiles of 32 px" in table


def test_refiner_can_start_from_a_trained_refiner(workdir, refiner_config, dataset, tmp_path):
    """`init`: all weights and the architecture of an idgbr model; embedding and autoencoder stay as they were.
    The stage-3b settings of the starter: coarse maps from another folder, strength, siamese copy trained."""
    start = workdir / "idgbr" / "model"
    elsewhere = shutil.copytree(Path(dataset) / "coarse", tmp_path / "other_coarse")
    (elsewhere / "source.txt").write_text("out-of-fold maps of another run\n")
    config = write_config(tmp_path / "ft.json", data=dataset, output=tmp_path / "ft", init=start, patch_size=32,
                          coarse=elsewhere, strength=0.3, train_siamese=True, sampling_choice="measured",
                          max_entropy=0.2, batch_size=2, steps=1, val_every=0, checkpoint_every=1, device="cpu")
    run(idgbr.add_arguments, idgbr.main, ["--config", config])
    before, _ = load_refiner(start)
    after, card = load_refiner(tmp_path / "ft" / "model")
    assert card.extra["init"] == f"{load_card(start).name} (model)"
    assert card.extra["init_steps"] == load_card(start).extra["steps"]
    assert card.extra["embedding"] == load_card(start).extra["embedding"]
    assert card.extra["coarse_source"] == "out-of-fold maps of another run"
    assert (card.extra["strength"], card.extra["siamese"], card.extra["sampling_choice"],
            card.extra["max_entropy"]) == (0.3, "trained", "measured", 0.2)
    for part in ("label_embedding", "vae"):
        for (name, a), b in zip(getattr(before, part).state_dict().items(), getattr(after, part).state_dict().values()):
            assert torch.equal(a, b), f"{part}.{name} changed"
    for part in ("unet", "siamese"):
        assert any(not torch.equal(a, b) for a, b in zip(getattr(before, part).parameters(),
                                                         getattr(after, part).parameters())), f"{part} unchanged"
    bad = write_config(tmp_path / "bad.json", data=dataset, output=tmp_path / "bad", init=start,
                       embedding=workdir / "embed" / "model", steps=1, device="cpu")
    with pytest.raises(idgbr.TrainingError, match="brings its own label embedding"):
        run(idgbr.add_arguments, idgbr.main, ["--config", bad])
