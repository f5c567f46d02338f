"""synthesize_pairs: the dataset folder it writes, reproducibility, refusals and cancellation.

Models here are small random ones (the file layer is under test, not sample quality); the
starter models are exercised through Processing and the dock.
"""
import csv

import numpy as np
import pytest
import rasterio
import torch

from core.checkpoint import ClassInfo, ModelCard, ModelError, Normalization, save_model
from core.data.folder import FolderDataset
from core.progress import Cancelled, Progress
from core.raster import RasterError
from core.data.generated import to_raw
from core.synthesis.generate import SynthesisParams, synthesize_pairs
from core.synthesis.satsynth import SR_TASK, TASK, architecture_for, build_denoiser, sr_architecture_for

CLASSES = [ClassInfo(10, "field", "#aa8800"), ClassInfo(20, "forest", "#006600"), ClassInfo(30, "water", "#0000cc")]
BANDS = ["red", "green", "blue", "nir"]


def tiny_model(path, task=TASK, classes=CLASSES, dtype="uint16"):
    arch = (sr_architecture_for if task == SR_TASK else architecture_for)("small", len(BANDS), len(classes))
    arch["unet"]["sample_size"] = 16 if task == TASK else 32
    torch.manual_seed(0)
    card = ModelCard(task=task, name=f"tiny {task}", architecture=arch, bands=BANDS,
                     normalization=Normalization(offset=[100.0] * 4, scale=[4000.0] * 4), classes=classes,
                     tile_size=16, ground_resolution=2.0 if task == TASK else 1.0, extra={"dtype": dtype})
    return save_model(path, card, build_denoiser(arch).state_dict())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return tiny_model(root / "base"), tiny_model(root / "sr", SR_TASK)


def run(models, out, **kwargs):
    base, sr = models
    params = dict(output_dir=str(out), count=3, model_dir=str(base), sr_model_dir=str(sr), steps=2, sr_steps=2,
                  batch_size=2, seed=5)
    return synthesize_pairs(SynthesisParams(**{**params, **kwargs}))


def test_writes_a_dataset_folder_the_trainers_read(models, tmp_path):
    result = run(models, tmp_path / "pairs", super_resolution=True)
    data = FolderDataset.open(result.output_dir)
    assert len(data.pairs) == 3 and data.bands == BANDS and [c.value for c in data.classes] == [10, 20, 30]
    with rasterio.open(data.pairs[0][0]) as image, rasterio.open(data.pairs[0][1]) as mask:
        assert (image.count, image.width, image.height, image.dtypes[0]) == (4, 32, 32, "uint16")
        assert image.crs is None and image.res == (1.0, 1.0)   # the x2 model's 1 m
        assert set(np.unique(mask.read(1))) <= {10, 20, 30} and mask.colormap(1)[20][:3] == (0, 102, 0)
    with open(result.index_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [f"images/pair_{i:05d}.tif" for i in range(3)]
    assert all(abs(sum(float(r[f"fraction_{c.name}"]) for c in CLASSES) - 1) < 1e-3 for r in rows)
    assert rows[0]["sampler"] == "ddim-2" and rows[0]["ddim_eta"] == "1"
    assert rows[0]["super_resolution"].endswith("(ddim-2)")
    assert (tmp_path / "pairs" / "preview.png").stat().st_size > 100


def test_same_seed_same_pairs_other_seed_other_pairs(models, tmp_path):
    def pixels(result):
        return [rasterio.open(image).read() for image, _ in result.pairs]
    a, b = pixels(run(models, tmp_path / "a")), pixels(run(models, tmp_path / "b"))
    c = pixels(run(models, tmp_path / "c", seed=6))
    assert all((x == y).all() for x, y in zip(a, b)) and not (a[0] == c[0]).all()


def test_scaling_back_to_the_training_data_range_and_type():
    card = ModelCard(task=TASK, name="m", architecture={}, bands=["b"], normalization=Normalization([10.0], [200.0]),
                     classes=CLASSES, tile_size=8, extra={"dtype": "uint8"})
    raw = to_raw(torch.tensor([[[[0.0, 0.5, 1.0, 1.2]]]]), card)
    assert raw.dtype == np.uint8 and raw.ravel().tolist() == [10, 110, 210, 210]   # model images end at 1


@pytest.mark.parametrize("dtype, low, span, expected", [
    ("uint8", 0.0, 255.0, [1, 128, 255]),          # 0 stays free: it is our rasters' nodata
    ("uint16", 0.0, 4000.0, [1, 2000, 4000]),
    ("int16", -1000.0, 2000.0, [-1000, 0, 1000]),  # signed data keeps its negative values
    ("float32", -1.0, 2.0, [-1.0, 0.0, 1.0]),
])
def test_raw_values_one_conversion_for_every_generator(dtype, low, span, expected):
    card = ModelCard(task=TASK, name="m", architecture={}, bands=["b"], normalization=Normalization([low], [span]),
                     classes=CLASSES, tile_size=8, extra={"dtype": dtype})
    raw = to_raw(torch.tensor([[[[-0.1, 0.5, 1.0]]]]), card)
    assert raw.dtype == np.dtype(dtype) and raw.ravel().tolist() == expected


def test_refuses_a_non_empty_folder_and_a_mismatched_sr_model(models, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RasterError, match="not empty"):
        run(models, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    other = tiny_model(tmp_path / "sr2", SR_TASK, classes=CLASSES[:2])
    with pytest.raises(ModelError, match="does not match base model"):
        run(models, tmp_path / "x", super_resolution=True, sr_model_dir=str(other))
    with pytest.raises(ModelError, match="'satsynth' model"):
        run((models[1], models[1]), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cancel_leaves_no_folder(models, tmp_path):
    class CancelSecondBatch(Progress):
        fractions = []

        def set_fraction(self, fraction):
            self.fractions.append(fraction)

        def is_canceled(self):
            return any(f >= 0.5 for f in self.fractions)

    with pytest.raises(Cancelled):
        synthesize_pairs(SynthesisParams(str(tmp_path / "out"), count=4, model_dir=str(models[0]), steps=2,
                                         batch_size=2), CancelSecondBatch())
    assert list(tmp_path.iterdir()) == []


def test_command_line_generates_the_same_folder(models, tmp_path):
    from training.__main__ import main as training_main
    training_main(["synthesize", "--output", str(tmp_path / "cli"), "--count", "2", "--model", str(models[0]),
                   "--steps", "2", "--sr", "--sr-model", str(models[1]), "--sr-steps", "2", "--seed", "5", "--batch-size", "2"])
    reference = run(models, tmp_path / "api", count=2, super_resolution=True)
    with rasterio.open(tmp_path / "cli" / "images" / "pair_00001.tif") as cli, \
            rasterio.open(reference.pairs[1][0]) as api:
        assert cli.width == 32 and (cli.read() == api.read()).all()
