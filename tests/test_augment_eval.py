"""Balanced real/synthetic batches and `python -m training augment-eval`."""
import csv
import json
from collections import Counter

import pytest
import torch

from core.checkpoint import load_weights
from core.data.balanced import BalancedBatchSampler
from core.data.scenes import write_scene_dataset
from training.__main__ import main as training_main
from training.segment import SegmentTrainConfig, train_segmenter
from training.trainer import TrainingError


@pytest.mark.parametrize("ratio,batch,expected", [(1, 8, [4] * 5), (3, 8, [6] * 5), (0.5, 6, [2] * 5)])
def test_every_batch_holds_the_requested_ratio(ratio, batch, expected):
    sampler = BalancedBatchSampler(n_real=20, n_synthetic=1000, batch_size=batch, ratio=ratio, seed=0)
    batches = list(sampler)
    synthetic = [sum(i >= 20 for i in b) for b in batches]
    assert synthetic[:5] == expected and all(len(b) == batch for b in batches)
    real = Counter(i for b in batches for i in b if i < 20)
    assert set(real) == set(range(20))       # an epoch covers the real set
    total = sum(synthetic) / sum(len(b) for b in batches)
    assert abs(total - ratio / (1 + ratio)) <= 1 / (batch * len(batches))


def test_fractional_share_alternates_to_stay_exact():
    sampler = BalancedBatchSampler(n_real=100, n_synthetic=100, batch_size=8, ratio=0.5, seed=0)  # 8/3 per batch
    counts = [sampler.synthetic_in_batch(b) for b in range(30)]
    assert set(counts) == {2, 3} and sum(counts) == 80


def test_torchrun_processes_split_the_batches():
    def batches(rank):
        return list(BalancedBatchSampler(16, 40, 4, 1, seed=3, rank=rank, world=2))
    all_batches = list(BalancedBatchSampler(16, 40, 4, 1, seed=3))
    assert batches(0) == all_batches[0::2] and batches(1) == all_batches[1::2]


def tiny_data(tmp_path):
    real = write_scene_dataset(tmp_path / "real", count=6, size=64, seed=1)
    synthetic = write_scene_dataset(tmp_path / "synthetic", count=6, size=64, seed=99)
    return real, synthetic


def tiny_segment_config(tmp_path, real, **extra):
    return SegmentTrainConfig(data=str(real), output=str(tmp_path / extra.pop("run", "run")), arch="FPN",
                              decoder={}, patch_size=32, batch_size=4, samples_per_image=1, steps=3,
                              val_every=3, checkpoint_every=3, val_fraction=0.34, **extra)


def test_ratio_zero_is_plain_training_and_a_ratio_changes_it(tmp_path):
    real, synthetic = tiny_data(tmp_path)
    plain = load_weights(train_segmenter(tiny_segment_config(tmp_path, real, run="plain")))
    zero = load_weights(train_segmenter(tiny_segment_config(tmp_path, real, run="zero", synthetic=str(synthetic),
                                                            synthetic_ratio=0)))
    three = load_weights(train_segmenter(tiny_segment_config(tmp_path, real, run="three", synthetic=str(synthetic),
                                                             synthetic_ratio=3)))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not all(torch.equal(plain[k], three[k]) for k in plain)


def test_synthetic_with_unknown_classes_is_refused(tmp_path):
    real, synthetic = tiny_data(tmp_path)
    table = json.loads((synthetic / "classes.json").read_text())
    table["classes"][0]["value"] = 42
    (synthetic / "classes.json").write_text(json.dumps(table))
    with pytest.raises(TrainingError, match=r"class values \[42\]"):
        train_segmenter(tiny_segment_config(tmp_path, real, synthetic=str(synthetic), synthetic_ratio=1))


def test_augment_eval_writes_table_and_plot(tmp_path):
    real, synthetic = tiny_data(tmp_path)
    held_out = write_scene_dataset(tmp_path / "held_out", count=2, size=64, seed=7)
    config = tmp_path / "augment.json"
    config.write_text(json.dumps({
        "data": str(real), "synthetic": str(synthetic), "eval_data": str(held_out), "output": str(tmp_path / "out"),
        "ratios": [0, 1], "segmenter": {"arch": "FPN", "decoder": {}, "patch_size": 32, "batch_size": 4,
                                        "samples_per_image": 1, "steps": 2, "val_every": 2}}))
    training_main(["augment-eval", "--config", str(config)])
    with open(tmp_path / "out" / "augment_eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["R"]) for r in rows] == [0, 1]
    assert all(0 <= float(r["mIoU"]) <= 1 for r in rows)
    assert (tmp_path / "out" / "augment_eval.png").stat().st_size > 1000
    assert "| R | mIoU | mF1 | accuracy |" in (tmp_path / "out" / "augment_eval.md").read_text()
    card = json.loads((tmp_path / "out" / "R1" / "model" / "model.json").read_text())
    assert "synthetic, R=1" in card["training_data"] and "6 train / 0 val" in card["training_data"]
