"""One error surface for `python -m training` (issue 17): known failures print one line, "error: <message>",
and exit with code 2; --debug shows the traceback; a bug in a library call still shows its traceback."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.data.scenes import write_scene_dataset
from training.__main__ import is_user_error
from training.trainer import STATE_NAME, Trainer, TrainingError, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
SEGMENT = {"arch": "FPN", "encoder": "tu-mobilenetv3_small_100", "patch_size": 64, "batch_size": 2,
           "decoder": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
           "samples_per_image": 1, "steps": 2, "val_every": 0, "device": "cpu"}


def training(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.count("error: ") == 1, proc.stderr
    assert all(fragment in errors[0] for fragment in fragments), errors[0]


@pytest.fixture
def config(tmp_path):
    data = write_scene_dataset(tmp_path / "scenes", count=2, size=64, seed=2)
    path = tmp_path / "segment.json"
    path.write_text(json.dumps(dict(SEGMENT, data=str(data), output=str(tmp_path / "run"))))
    return path


def test_a_missing_data_folder_is_one_line_and_debug_shows_the_traceback(tmp_path, config):
    missing = tmp_path / "no_such_folder"
    assert_one_error_line(training("segment", "--config", str(config), "--data", str(missing)),
                          str(missing), "does not exist", "check --data")
    debug = training("segment", "--config", str(config), "--data", str(missing), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "TrainingError" in debug.stderr


def test_a_corrupt_training_state_is_one_line_naming_the_file(tmp_path, config):
    (tmp_path / "run").mkdir()
    state = tmp_path / "run" / STATE_NAME
    state.write_bytes(b"PK\x03\x04 not a training state, cut short by a full disk")
    assert_one_error_line(training("segment", "--config", str(config), "--resume"),
                          str(state), "damaged", "Delete it to start over")


def test_config_model_and_dataset_errors_are_one_line(tmp_path, config):
    unknown = tmp_path / "typo.json"
    unknown.write_text(json.dumps(dict(json.loads(config.read_text()), stpes=3)))
    assert_one_error_line(training("segment", "--config", str(unknown)), "Unknown key", "stpes")
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    assert_one_error_line(training("changedet-evaluate", "--model", str(not_a_model), "--data", str(tmp_path),
                                   "--device", "cpu"), str(not_a_model))


def test_a_pickled_payload_in_the_training_state_is_refused_not_run(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    run = tmp_path / "run"
    run.mkdir()
    with open(run / STATE_NAME, "wb") as f:
        pickle.dump({"step": 3, "model": Payload()}, f, protocol=2)
    with pytest.raises(TrainingError, match=f"Cannot resume from {run / STATE_NAME}.*Delete it to start over"):
        Trainer(torch.nn.Linear(2, 2), TrainSettings(run_dir=str(run), device="cpu", resume=True))
    assert not marker.exists()


def test_a_training_state_of_another_model_is_refused_with_what_to_do(tmp_path):
    Trainer(torch.nn.Linear(2, 2), TrainSettings(run_dir=str(tmp_path), device="cpu")).save_state()
    with pytest.raises(TrainingError, match="does not fit this run's model or config.*delete it to start over"):
        Trainer(torch.nn.Linear(3, 2), TrainSettings(run_dir=str(tmp_path), device="cpu", resume=True))


def test_only_our_own_value_errors_count_as_user_errors():
    from core.data.sar import make_sar_scene
    with pytest.raises(ValueError) as ours:
        make_sar_scene(0, 64, seed=1)
    with pytest.raises(ValueError) as library:
        torch.nn.GroupNorm(32, 16)
    assert is_user_error(ours.value) and not is_user_error(library.value)
