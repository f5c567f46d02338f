"""The evaluators (issue 17): images without a label are skipped with a warning naming them (an error when
none is left), and sar-evaluate scores every class of the model under the card's names."""
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.data.change import write_change_dataset
from core.data.sar import SAR_CLASSES, write_sar_dataset
from training.__main__ import main as training_main

MODELS = Path(__file__).resolve().parents[1] / "resources" / "models"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluate(command: str, model: Path, data: Path, scores: Path) -> int:
    return training_main([command, "--model", str(model), "--data", str(data), "--output", str(scores),
                          "--device", "cpu"])


def test_changedet_evaluate_skips_pairs_without_a_label(tmp_path, caplog, capsys):
    data = write_change_dataset(tmp_path / "change", count=3, size=64, seed=4)
    unlabelled = sorted((data / "label").iterdir())[1]
    unlabelled.unlink()
    with caplog.at_level(logging.WARNING):
        assert evaluate("changedet-evaluate", MODELS / "changedet_starter", data, tmp_path / "scores.json") == 0
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipping 1 image(s) with no label" in warning and unlabelled.name in warning
    assert {"IoU", "F1", "precision", "recall", "accuracy"} <= set(json.loads((tmp_path / "scores.json").read_text()))

    shutil.rmtree(data / "label")
    (data / "label").mkdir()
    capsys.readouterr()
    assert evaluate("changedet-evaluate", MODELS / "changedet_starter", data, tmp_path / "none.json") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no image has a label" in error and "nothing to score" in error
    assert not (tmp_path / "none.json").exists()


def test_sar_evaluate_skips_unlabelled_images_and_scores_every_model_class(tmp_path, caplog):
    data = write_sar_dataset(tmp_path / "sar", count=3, size=64, seed=8)
    unlabelled = sorted((data / "masks").iterdir())[0]
    unlabelled.unlink()
    with caplog.at_level(logging.WARNING):
        assert evaluate("sar-evaluate", MODELS / "saross_starter", data, tmp_path / "scores.json") == 0
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipping 1 image(s) with no mask in masks/" in warning and unlabelled.stem in warning
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert {f"IoU/{c.name}" for c in SAR_CLASSES} <= set(scores)


def test_sar_evaluate_does_not_fold_other_classes_into_sea(tmp_path):
    """A model that calls every pixel "land", scored on binary sea / oil labels: sea IoU is 0 (the former
    evaluator counted "land" as sea and reported the sea fraction, about 0.9), and land shows as a class."""
    model = tmp_path / "all_land"
    model.mkdir()
    shutil.copy(MODELS / "saross_starter" / "model.json", model / "model.json")
    weights = load_file(MODELS / "saross_starter" / "model.safetensors")
    weights["segmentation_head.0.weight"] = torch.zeros_like(weights["segmentation_head.0.weight"])
    weights["segmentation_head.0.bias"] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])   # land
    save_file(weights, model / "model.safetensors")
    data = write_sar_dataset(tmp_path / "binary", count=2, size=64, seed=3)
    table = json.loads((data / "classes.json").read_text())
    table["classes"] = table["classes"][:2]      # sea and oil; the other mask values are not labelled
    (data / "classes.json").write_text(json.dumps(table))

    assert evaluate("sar-evaluate", model, data, tmp_path / "scores.json") == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["IoU/sea"] == scores["IoU/land"] == scores["accuracy"] == 0.0
    assert not scores["IoU/oil"] > 0     # 0, or NaN where these scenes hold no oil
