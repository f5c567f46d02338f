"""The CPU fast path (core/device.py): every form BatchRunner may pick (channels_last, bfloat16 autocast where the
CPU has native bf16, ONNX Runtime) gives the classes plain torch gives on real tiles of the shipped starters; the
choice is logged and RS_DIFFUSION_CPU_PATH overrides it; tiny tiles and non-image batches stay on plain torch."""
import numpy as np
import pytest
import torch

from core.catalog import starter_model_dir
from core.change.pipeline import load_changedet
from core.checkpoint import ModelError
from core.data.change import make_change_pair
from core.data.scenes import make_scene
from core.device import (ARGMAX_AGREEMENT, CPU_PATH_ENV, BatchRunner, native_bf16, requested_cpu_path,
                         training_autocast_dtype)
from core.oilspill.pipeline import load_saross
from core.progress import Progress
from core.segmentation.model import load_segmenter

CPU = torch.device("cpu")


class Recorder(Progress):
    def __init__(self):
        self.messages = []

    def info(self, message):
        self.messages.append(message)

    def warning(self, message):
        self.messages.append(message)


def softmax_forward(model, x):
    return torch.softmax(model(x), dim=1)


def normalised(image: np.ndarray, card) -> torch.Tensor:
    offset = np.asarray(card.normalization.offset, np.float32)[:, None, None]
    scale = np.asarray(card.normalization.scale, np.float32)[:, None, None]
    return torch.from_numpy(((image - offset) / scale).astype(np.float32))


def segmenter_tiles():
    model, card = load_segmenter(starter_model_dir("segmentation"))
    return model, torch.stack([normalised(make_scene(256, 256, seed=s)[0], card) for s in (1, 2, 3)]), softmax_forward


def change_tiles():
    model, card = load_changedet(str(starter_model_dir("changedet")))
    pairs = [make_change_pair(128, 128, seed=s) for s in (1, 2, 3)]
    x = torch.stack([torch.cat([normalised(a, card), normalised(b, card)]) for a, b, _ in pairs])
    return model, x, lambda m, t: torch.softmax(m(t[:, :3], t[:, 3:]), dim=1)


def saross_tiles():
    model, _ = load_saross(str(starter_model_dir("saross")))
    x = torch.from_numpy(np.stack([make_scene(256, 256, seed=s)[0][:1] for s in (1, 2, 3)]).astype(np.float32) / 255)
    return model, x, softmax_forward


def plain(model, x, forward):
    with torch.inference_mode():
        return forward(model.eval(), x)


def forced(monkeypatch, name, model, x, forward, progress=None):
    monkeypatch.setenv(CPU_PATH_ENV, name)
    runner = BatchRunner(model, CPU, progress)
    return runner(x, forward), runner


@pytest.mark.parametrize("path", ["channels_last", "bf16", "onnxruntime"])
@pytest.mark.parametrize("tiles", [segmenter_tiles, saross_tiles, change_tiles], ids=["segmenter", "saross", "fcsiam"])
def test_every_path_gives_plain_torch_classes_on_real_tiles(monkeypatch, path, tiles):
    if path == "bf16" and not native_bf16():
        pytest.skip("this CPU has no native bf16: the path is never chosen here")
    if path == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model, x, forward = tiles()
    expected = plain(model, x, forward)
    got, runner = forced(monkeypatch, path, model, x, forward)
    assert runner.cpu_path.name == path
    assert got.shape == expected.shape
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= ARGMAX_AGREEMENT
    if path != "bf16":   # float32 paths: the same numbers up to summation order
        assert (got - expected).abs().max() < 1e-4


def test_auto_picks_an_agreeing_path_logs_it_and_remembers_it(monkeypatch):
    monkeypatch.delenv(CPU_PATH_ENV, raising=False)
    model, x, forward = segmenter_tiles()
    expected = plain(model, x, forward)
    progress = Recorder()
    runner = BatchRunner(model, CPU, progress)
    got = runner(x, forward)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= ARGMAX_AGREEMENT
    [line] = [m for m in progress.messages if m.startswith("CPU path: ")]
    assert runner.cpu_path.name in line and "plain torch on the first batch" in line and CPU_PATH_ENV in line
    again = Recorder()
    BatchRunner(model, CPU, again)(x, forward)   # same model and batch shape: no second trial
    assert not any("first batch" in m for m in again.messages)


def test_override_is_logged_and_a_bad_value_is_refused(monkeypatch):
    model, x, forward = segmenter_tiles()
    progress = Recorder()
    got, runner = forced(monkeypatch, "torch", model, x[:1], forward, progress)
    assert runner.cpu_path.name == "torch"
    assert torch.equal(got, plain(model, x[:1], forward))
    assert f"CPU path: torch (set by {CPU_PATH_ENV})." in progress.messages
    monkeypatch.setenv(CPU_PATH_ENV, "fp8")
    with pytest.raises(ValueError, match=f"{CPU_PATH_ENV}='fp8' is not a CPU path; use one of auto, torch"):
        requested_cpu_path()


def test_forced_onnxruntime_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    model, x, forward = segmenter_tiles()
    with pytest.raises(ModelError, match="pip install"):
        forced(monkeypatch, "onnxruntime", model, x[:1], forward)


def test_onnx_runtime_retraces_when_the_forward_closes_over_other_values(monkeypatch):
    """Pipelines pass a new closure per batch (IDGBR's seeds, a band count): a trace must never outlive it."""
    pytest.importorskip("onnxruntime")
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 128, 128)
    monkeypatch.setenv(CPU_PATH_ENV, "onnxruntime")
    runner = BatchRunner(model, CPU)
    for factor in (1.0, 3.0):
        forward = (lambda f: lambda m, t: m(t) * f)(factor)
        assert (runner(x, forward) - plain(model, x, forward)).abs().max() < 1e-4


def test_tiny_tiles_and_non_image_batches_stay_on_plain_torch(monkeypatch):
    monkeypatch.delenv(CPU_PATH_ENV, raising=False)
    model = torch.nn.Conv2d(3, 2, 3, padding=1)
    progress = Recorder()
    runner = BatchRunner(model, CPU, progress)
    runner(torch.randn(2, 3, 32, 32), softmax_forward)
    assert runner.cpu_path.name == "torch" and progress.messages == []
    rows = BatchRunner(model, CPU, progress)
    rows(torch.arange(3), lambda m, r: r.float()[:, None] * 2)   # the refiner hands over row indices
    assert rows.cpu_path.name == "torch"


def test_trainers_mixed_precision_is_bf16_on_gpus_that_have_it_float16_with_scaler_elsewhere_none_on_cpu(tmp_path):
    from training.trainer import Trainer, TrainSettings
    cuda = torch.device("cuda", 0)
    assert training_autocast_dtype(cuda, bf16_supported=True) == torch.bfloat16
    assert training_autocast_dtype(cuda, bf16_supported=False) == torch.float16
    assert training_autocast_dtype(torch.device("cpu")) is None
    trainer = Trainer(torch.nn.Linear(2, 1), TrainSettings(run_dir=str(tmp_path), device="cpu", ema_decay=0))
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()


def satsynth_samples(monkeypatch, path, steps, progress=None):
    from core.synthesis.generate import load_denoiser
    from core.synthesis.satsynth import sample
    monkeypatch.setenv(CPU_PATH_ENV, path)
    model = load_denoiser(str(starter_model_dir("satsynth")), "satsynth", CPU)[0]
    return sample(model, 2, steps=steps, seed=3, progress=progress)


@pytest.mark.parametrize("path", ["auto", "onnxruntime"])
def test_samplers_fast_path_gives_torchs_samples(monkeypatch, path):
    """FastForward (the samplers' denoiser calls) under ONNX Runtime, with the time step an input of the export:
    the SatSynth starter's DDIM-25 pairs match plain torch's (images within 1%, labels on >= 99.5% of pixels)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr("core.device._FAST_SESSIONS", {})   # no choice remembered from another test
    reference = satsynth_samples(monkeypatch, "torch", 25)
    progress = Recorder()
    fast = satsynth_samples(monkeypatch, path, 25, progress)
    [line] = [m for m in progress.messages if m.startswith("Sampler CPU path: ")]
    assert path == "auto" or line.startswith("Sampler CPU path: onnxruntime")
    error = ((fast.images - reference.images).norm() / reference.images.norm()).item()
    assert error <= 0.01
    assert (fast.labels == reference.labels).float().mean() >= ARGMAX_AGREEMENT
    again = satsynth_samples(monkeypatch, path, 25)   # the choice is made before the first output: same samples
    assert torch.equal(again.images, fast.images) and torch.equal(again.labels, fast.labels)


def test_short_chains_and_the_torch_override_stay_on_plain_torch(monkeypatch):
    from core.device import FastForward
    model = torch.nn.Conv2d(1, 1, 3)
    assert FastForward(model, lambda m, x: m(x), calls=5).choice == "torch"
    monkeypatch.setenv(CPU_PATH_ENV, "torch")
    assert FastForward(model, lambda m, x: m(x), calls=500).choice == "torch"
    monkeypatch.setenv(CPU_PATH_ENV, "auto")
    if __import__("importlib").util.find_spec("onnxruntime"):
        assert FastForward(model, lambda m, x: m(x), calls=500).choice is None   # decided by its first two calls
