"""SAR training from the command line (`python -m training ...` through training.__main__.main) on tiny
data: SAR-JointNet stages 1-3, pair generation, SAROSS-Net with and without DAKD, evaluation on the real
sample crops, and the OSD layout."""
import csv
import json
import math

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from safetensors.torch import load_file

from core.checkpoint import load_card
from core.data.sar import SAR_BANDS, SAR_CLASSES, SarCropDataset, open_sar_dataset, write_sar_dataset
from core.data.sar_scaling import SarScaling
from core.oilspill import jointnet
from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
from tests.conftest import shared_data
from tests.sar_fixtures import TINY_DATA, TINY_JOINTNET, TINY_SAROSS, sar_models, write_real_crop  # noqa: F401
from training.__main__ import main as training_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_sar_dataset(tmp_path_factory.mktemp("sar") / "scenes", **TINY_DATA)


def toml(path, **values) -> str:
    """A config file (TOML: strings quoted, lists and numbers as they are)."""
    path.write_text("\n".join(f"{key} = {json.dumps(value)}" for key, value in values.items()) + "\n")
    return str(path)


def losses(run) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_jointnet_three_stages_from_the_command_line(tmp_path, data, capsys):
    config = toml(tmp_path / "jointnet.toml", data=str(data), output=str(tmp_path / "unused"), **TINY_JOINTNET)
    runs = {stage: tmp_path / f"stage{stage}" for stage in (1, 2, 3)}
    training_main(["sar-jointnet", "--config", config, "--stage", "1", "--output", str(runs[1])])
    assert training_main(["sar-jointnet", "--config", config, "--stage", "2", "--output",
                          str(tmp_path / "no_init")]) == 2
    assert "Stage 2 starts from the previous stage's model: give --init DIR" in capsys.readouterr().err
    training_main(["sar-jointnet", "--config", config, "--stage", "2", "--init", str(runs[1] / "model"),
                   "--output", str(runs[2])])
    training_main(["sar-jointnet", "--config", config, "--stage", "3", "--init", str(runs[2] / "model"),
                   "--output", str(runs[3]), "--lr", "1e-5"])
    assert training_main(["sar-jointnet", "--config", config, "--stage", "2", "--init", str(runs[3] / "model"),
                          "--output", str(tmp_path / "wrong_init")]) == 2
    assert "is a stage-3 model; stage 2 starts from stage 1" in capsys.readouterr().err
    assert not (tmp_path / "no_init" / "model").exists() and not (tmp_path / "wrong_init" / "model").exists()

    # b (Eq. 20) of this data, recomputed: crops of the whole 64 px scenes, rotations and flips do not change it
    crops = SarCropDataset(open_sar_dataset(data), SarScaling(), 64, samples_per_image=1, train=False)
    balance = jointnet.balancing_factor(((x, y) for x, y, _ in torch.utils.data.DataLoader(crops, batch_size=3)),
                                        len(SAR_CLASSES))
    cards = {stage: load_card(run / "model", task="sar-jointnet") for stage, run in runs.items()}
    for stage, card in cards.items():
        assert card.extra["stage"] == stage and [s["stage"] for s in card.extra["stages"]] == list(range(1, stage + 1))
        assert card.classes == SAR_CLASSES and card.bands == SAR_BANDS and card.tile_size == 64
        assert card.architecture["balance"] > 0
        assert card.architecture["balance"] == pytest.approx(balance, rel=1e-5)
        assert card.extra["sar_scaling"] == {"to_db": True, "clip_percentiles": [1.0, 99.0]}
        assert all(math.isfinite(loss) for loss in losses(runs[stage]))
    assert cards[3].extra["stages"][-1]["lr"] == 1e-5
    assert not list(runs[1].glob("samples_*.png"))   # val_every = 0: no DDIM preview grids

    weights = {stage: load_file(run / "model" / "model.safetensors") for stage, run in runs.items()}
    sar_net = [k for k in weights[1] if k.startswith("sar_net.")]
    assert all(torch.equal(weights[2][k], weights[1][k]) for k in sar_net)        # stage 2 freezes SAR-Net
    assert not all(torch.equal(weights[3][k], weights[2][k]) for k in sar_net)    # stage 3 trains everything


@pytest.fixture(scope="module")
def generated(tmp_path_factory, sar_models):  # noqa: F811
    out = tmp_path_factory.mktemp("generated") / "pairs"
    training_main(["sar-synthesize", "--model", str(sar_models.jointnet), "--output", str(out), "--count", "3",
                   "--steps", "2", "--batch-size", "2", "--seed", "7", "--device", "cpu"])
    return out


def test_synthesize_writes_the_dataset_folder(generated, capsys):
    names = [f"sar_{k:05d}.tif" for k in range(3)]
    for sub in ("images", "masks", "soft"):
        assert sorted(p.name for p in (generated / sub).iterdir()) == names
    assert json.loads((generated / "classes.json").read_text())["classes"] == [
        {"value": c.value, "name": c.name, "color": c.color} for c in SAR_CLASSES]
    assert (generated / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(generated / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"images/{n}" for n in names]
    assert [int(r["seed"]) for r in rows] == [7, 7, 9] and {r["ddim_steps"] for r in rows} == {"2"}
    for name, row in zip(names, rows):
        with rasterio.open(generated / "images" / name) as image:
            assert image.count == 1 and image.dtypes[0] == "uint8" and image.crs is None
            assert image.read().min() >= 1 and image.shape == (64, 64)
        with rasterio.open(generated / "masks" / name) as mask:
            labels = mask.read(1)
        with rasterio.open(generated / "soft" / name) as soft_file:
            assert soft_file.count == len(SAR_CLASSES) and soft_file.dtypes[0] == "float32"
            soft = soft_file.read()
        np.testing.assert_allclose(soft.sum(0), 1.0, atol=1e-5)
        assert set(np.unique(labels)) <= {c.value for c in SAR_CLASSES}
        np.testing.assert_array_equal(labels, soft.argmax(0))   # the hard mask is the soft label's argmax
        fractions = [float(row[f"fraction_{c.name}"]) for c in SAR_CLASSES]
        np.testing.assert_allclose(fractions, np.bincount(labels.ravel(), minlength=5) / labels.size, atol=1e-4)
    dataset = open_sar_dataset(generated)
    assert dataset.layout == "folder" and all(s.soft is not None for s in dataset.samples)


def saross_config(tmp_path, data, **changes) -> str:
    return toml(tmp_path / "saross.toml", **dict(TINY_SAROSS, data=str(data), output=str(tmp_path / "run"), **changes))


def test_saross_with_generated_pairs_distils(tmp_path, data, generated):
    training_main(["saross", "--config", saross_config(tmp_path, data), "--synthetic", str(generated)])
    card = load_card(tmp_path / "run" / "model", task="saross")
    assert "3 generated pairs from pairs (DAKD" in card.training_data and "T=2" in card.training_data
    assert card.classes == SAR_CLASSES and card.tile_size == 64 and card.extra["steps"] == 2
    assert card.extra["loss_weights"] == [1.0, 0.5, 0.1]
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run")) and len(losses(tmp_path / "run")) == 2


def test_saross_without_generated_pairs(tmp_path, data):
    training_main(["saross", "--config", saross_config(tmp_path, data, skip_block="conv", steps=1)])
    card = load_card(tmp_path / "run" / "model", task="saross")
    assert card.training_data == "scenes (folder): 3 train / 1 val images"
    assert card.architecture["skip_block"] == "conv" and "mIoU" in card.metrics
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run"))


def test_sar_evaluate_scores_the_real_crops(tmp_path, sar_models, capsys):  # noqa: F811
    scores_file = tmp_path / "scores.json"
    training_main(["sar-evaluate", "--model", str(sar_models.saross), "--data", str(shared_data("sar_oilspill")),
                   "--split", "test", "--output", str(scores_file), "--device", "cpu"])
    scores = json.loads(scores_file.read_text())
    assert {"mIoU", "mF1", "accuracy", "IoU/sea", "IoU/oil", "F1/oil"} <= set(scores)
    assert {f"IoU/{c.name}" for c in load_card(sar_models.saross).classes} <= set(scores)   # every model class
    assert all(0 <= scores[key] <= 1 for key in ("mIoU", "accuracy", "IoU/sea", "IoU/oil"))
    printed = capsys.readouterr().out
    assert f"mIoU  {scores['mIoU']:.4f}" in printed and f"IoU/oil  {scores['IoU/oil']:.4f}" in printed


def test_sar_evaluate_of_the_models_own_detections(tmp_path, sar_models):  # noqa: F811
    """A side-by-side set whose masks are what detect_oil_spills found (black = oil): the evaluation reads
    the layout, matches sea / oil to the model's classes by name and scores oil perfectly; sea pixels the
    model called look-alike, ship or land count against sea (they are not folded into it)."""
    crop, _ = write_real_crop(tmp_path / "crop.tif", index=3)
    result = detect_oil_spills(OilSpillParams(input_path=str(crop), output_path=str(tmp_path / "classes.tif"),
                                              model_dir=str(sar_models.saross), tile_size=256, overlap=0))
    with rasterio.open(crop) as image, rasterio.open(result.output_path) as classes:
        grey, predicted = image.read(1), classes.read(1)
    oil, sea = predicted == 1, predicted == 0
    assert 0 < oil.sum() < oil.size
    (tmp_path / "sbs" / "test").mkdir(parents=True)
    Image.fromarray(np.hstack([grey, np.where(oil, 0, 255).astype(np.uint8)])).save(tmp_path / "sbs/test/crop.png")
    training_main(["sar-evaluate", "--model", str(sar_models.saross), "--data", str(tmp_path / "sbs"),
                   "--output", str(tmp_path / "scores.json"), "--device", "cpu"])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["IoU/oil"] == 1.0
    assert scores["IoU/sea"] == pytest.approx(sea.sum() / (~oil).sum())
    assert scores["accuracy"] == pytest.approx((sea.sum() + oil.sum()) / oil.size)


def write_osd(root, count=3, size=64):
    """OSD layout (Krestenitis 2019): train/images/*.jpg and train/labels_1D/*.png holding class ids 0..4."""
    for k in range(count):
        rng = np.random.default_rng(k)
        ids = np.zeros((size, size), np.uint8)
        ids[10:20, 5:40], ids[30:34, :], ids[50, 50], ids[:, 56:] = 1, 2, 3, 4
        grey = np.select([ids == 1, ids == 2, ids == 4], [30, 50, 200], 120) + rng.integers(0, 20, ids.shape)
        (root / "train" / "images").mkdir(parents=True, exist_ok=True)
        (root / "train" / "labels_1D").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([grey.astype(np.uint8)] * 3, -1)).save(root / "train" / "images" / f"img_{k}.jpg")
        Image.fromarray(ids).save(root / "train" / "labels_1D" / f"img_{k}.png")
    return root


def test_saross_trains_on_the_osd_layout(tmp_path):
    osd = write_osd(tmp_path / "osd")
    training_main(["saross", "--config", saross_config(tmp_path, osd, steps=1, val_fraction=0.34)])
    card = load_card(tmp_path / "run" / "model", task="saross")
    assert card.training_data == "osd (osd): 2 train / 1 val images"
    assert card.classes == SAR_CLASSES and all(math.isfinite(loss) for loss in losses(tmp_path / "run"))


def test_filter_pairs_keeps_those_the_real_data_model_agrees_with_best(tmp_path, generated, sar_models, capsys):  # noqa: F811
    """Each pair scored alone by sar-evaluate: the filter keeps the best-scored one, with its soft label."""
    from training.sar import evaluate_saross
    alone = {}
    for name in sorted(p.name for p in (generated / "images").iterdir()):
        folder = tmp_path / "alone" / name
        for sub in ("images", "masks", "soft"):
            (folder / sub).mkdir(parents=True)
            (folder / sub / name).symlink_to(generated / sub / name)
        (folder / "classes.json").symlink_to(generated / "classes.json")
        alone[name] = evaluate_saross(str(sar_models.saross), str(folder), device="cpu")["mIoU"]
    out = tmp_path / "kept"
    training_main(["sar-filter-pairs", "--model", str(sar_models.saross), "--pairs", str(generated),
                   "--output", str(out), "--keep", "0.34", "--device", "cpu"])
    assert "kept 1 of 3 pairs" in capsys.readouterr().out
    best = max(alone, key=alone.get)
    for sub in ("images", "masks", "soft"):
        assert [p.name for p in (out / sub).iterdir()] == [best]
    assert len(open_sar_dataset(out).samples) == 1 and open_sar_dataset(out).samples[0].soft is not None
    # a non-empty output folder is refused, nothing overwritten
    assert training_main(["sar-filter-pairs", "--model", str(sar_models.saross), "--pairs", str(generated),
                          "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in (out / "images").iterdir()] == [best]
