"""Exact resume (issue 17): a run killed with SIGKILL after a checkpoint and resumed logs the same losses and
ends with the same weights as an uninterrupted run, because the training state holds the RNG states and the
data position besides the weights, optimiser, schedule, scaler and EMA."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.data.scenes import write_scene_dataset
from training.satsynth import SatSynthTrainConfig, train_satsynth
from training.trainer import STATE_NAME, ResumableBatches, Trainer, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
# 6 training images x 2 samples / batch 4: 3 batches an epoch, so the checkpoint at step 4 falls mid-epoch.
# Random crops and flips, EMA and a validation every 4 steps all draw random numbers or carry state.
SEGMENT = {"arch": "FPN", "encoder": "tu-mobilenetv3_small_100", "patch_size": 64, "batch_size": 4,
           "decoder": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
           "samples_per_image": 2, "val_every": 4, "checkpoint_every": 4, "ema_decay": 0.9, "val_fraction": 0.25,
           "steps": STEPS, "num_workers": 0, "device": "cpu", "seed": 3}
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scene_dataset(tmp_path_factory.mktemp("resume") / "scenes", count=8, size=96, seed=1)


def segment_config(path: Path, data: Path, run: Path) -> Path:
    path.write_text(json.dumps(dict(SEGMENT, data=str(data), output=str(run))))
    return path


def training_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "segment", "--config", str(config), *extra]


def log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_a_run_killed_after_a_checkpoint_resumes_exactly(tmp_path, scenes):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    config = segment_config(tmp_path / "killed.json", scenes, killed)
    with open(tmp_path / "killed.log", "w") as output:
        proc = subprocess.Popen(training_command(config), cwd=ROOT, env=ENV, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 300
        while not (killed / STATE_NAME).is_file():   # written by os.replace: complete once visible
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    checkpoint = torch.load(killed / STATE_NAME, weights_only=True)["step"]
    assert checkpoint < STEPS and not (killed / "model").exists()

    resumed = subprocess.run(training_command(config, "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = subprocess.run(training_command(segment_config(tmp_path / "whole.json", scenes, whole)), cwd=ROOT,
                                   env=ENV, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    rows, reference = log_rows(killed), log_rows(whole)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert rows[checkpoint - 1:] == reference[checkpoint - 1:]   # loss, lr and validation scores, as text
    assert_same_weights(killed, whole)


def test_a_diffusion_run_stopped_and_resumed_ends_with_the_same_weights(tmp_path, scenes):
    """SatSynth draws noise and timesteps from torch's generator every step. Under 50 steps the LR is still
    warming up and does not depend on the total, so a 5-step run resumed to 9 steps must equal a 9-step run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def config(run: str, steps: int, resume: bool = False) -> SatSynthTrainConfig:
            # 8 images x 1 sample / batch 3: 2 full batches an epoch, so the stop at step 5 falls mid-epoch
            return SatSynthTrainConfig(data=str(scenes), output=str(tmp_path / run), patch_size=16, batch_size=3,
                                       samples_per_image=1, steps=steps, val_every=0, checkpoint_every=3,
                                       ema_decay=0.9, device="cpu", seed=2, resume=resume)
        train_satsynth(config("stopped", 5))
        train_satsynth(config("stopped", 9, resume=True))
        train_satsynth(config("whole", 9))
    finally:
        torch.set_num_threads(threads)
    assert log_rows(tmp_path / "stopped")[5:] == log_rows(tmp_path / "whole")[5:]
    assert_same_weights(tmp_path / "stopped", tmp_path / "whole")


def test_a_resumed_balanced_loader_skips_exactly_the_consumed_batches(tmp_path):
    """Real + synthetic batches are drawn from (seed, epoch): epoch 1 from batch 2 on is the tail of epoch 1."""
    trainer = Trainer(torch.nn.Linear(1, 1), TrainSettings(run_dir=str(tmp_path), device="cpu", seed=7))
    loader = trainer.balanced_loader(torch.arange(10.0), torch.arange(100.0, 130.0), batch_size=4, ratio=1.0)
    batches = loader.batch_sampler
    assert isinstance(batches, ResumableBatches)
    epochs = []
    for epoch in range(2):
        batches.set_position(epoch, 0)
        epochs.append([b.tolist() for b in loader])
    assert epochs[0] != epochs[1] and len(epochs[1]) == 5
    batches.set_position(1, 2)
    assert [b.tolist() for b in loader] == epochs[1][2:]
