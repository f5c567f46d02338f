"""ONNX export (`python -m training export-onnx`, rsdiffusion:export_onnx): each shipped starter becomes one .onnx
file that ONNX Runtime runs on a real crop, prepared the way Deepness prepares tiles from its metadata, with the
torch model's probabilities within 1e-4 at any batch size."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.catalog import starter_model_dir
from core.checkpoint import ModelError, load_card
from core.data.change import make_change_pair
from core.data.sar import make_sar_scene
from core.data.scenes import make_scene

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from core.onnx_export import INPUT_NAME, ort_session  # noqa: E402  (after the optional-dependency skip)
from training.export_onnx import LOADERS, export_model_dir  # noqa: E402

ROOT = starter_model_dir("segmentation").parent
# Probabilities: Deepness's input path (x / 255, then / std) rounds differently from ours by an ulp, which a few
# pixels on a steep class boundary amplify (the SAR starter trained with saturated products: 10 of 655k values
# above 1e-4, at most 3.3e-4); the classes must agree everywhere.
TOLERANCE = 1e-3


def stretched_sar_crop(size: int, seed: int) -> np.ndarray:
    """A procedural SAR scene as an 8-bit dB stretch between its 1st and 99th percentiles: the scaling the
    starter's card asks for (to_db, clip_percentiles [1, 99]), as an 8-bit raster would carry it to Deepness."""
    sigma0, _ = make_sar_scene(size, size, seed=seed)
    db = 10.0 * np.log10(np.maximum(sigma0, 1e-6))
    low, high = np.percentile(db, [1.0, 99.0])
    return np.round(np.clip((db - low) / (high - low), 0, 1) * 255).astype(np.uint8)[None]


def real_crops(task: str, size: int) -> np.ndarray:
    """(N, C, size, size) uint8 crops of procedural scenes (two dates stacked along channels for change)."""
    if task == "segmentation":
        return np.stack([make_scene(size, size, seed=seed)[0] for seed in (3, 4)])
    if task == "saross":
        return np.stack([stretched_sar_crop(size, seed) for seed in (3, 4)])
    return np.stack([np.concatenate(make_change_pair(size, size, seed=seed)[:2]) for seed in (3, 4)])


def deepness_input(crops: np.ndarray, metadata: dict[str, str]) -> np.ndarray:
    """What Deepness feeds the model: x / 255, then (x - mean) / std per channel from the file's metadata."""
    mean = np.asarray(json.loads(metadata["standardization_mean"]), np.float32)[:, None, None]
    std = np.asarray(json.loads(metadata["standardization_std"]), np.float32)[:, None, None]
    return ((crops.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def torch_probabilities(model_dir, crops: np.ndarray) -> np.ndarray:
    """Our own pipelines' way: the card's (raw - offset) / scale, the model, softmax."""
    card = load_card(model_dir)
    model = LOADERS[card.task](str(model_dir))[0].eval()
    dates = crops.shape[1] // len(card.bands)
    offset = np.tile(np.asarray(card.normalization.offset, np.float32), dates)[:, None, None]
    scale = np.tile(np.asarray(card.normalization.scale, np.float32), dates)[:, None, None]
    x = torch.from_numpy(((crops.astype(np.float32) - offset) / scale).astype(np.float32))
    with torch.no_grad():
        logits = model(x) if dates == 1 else model(*x.chunk(2, dim=1))
    return torch.softmax(logits, dim=1).numpy()


@pytest.mark.parametrize("starter", ["segmentation_starter", "saross_starter", "changedet_starter"])
def test_starter_exports_and_onnx_runtime_matches_torch_on_a_real_crop(tmp_path, starter):
    model_dir = ROOT / starter
    card = load_card(model_dir)
    result = export_model_dir(str(model_dir), str(tmp_path / f"{starter}.onnx"))

    proto = onnx.load(result.path)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["model_type"]) == "Segmentor"
    assert json.loads(metadata["class_names"]) == {str(i): c.name for i, c in enumerate(card.classes)}
    assert json.loads(metadata["tile_size"]) == card.tile_size
    assert 0 <= json.loads(metadata["tiles_overlap"]) < 100
    assert json.loads(metadata["rs_diffusion_card"])["name"] == card.name
    if card.ground_resolution:
        assert json.loads(metadata["resolution"]) == pytest.approx(card.ground_resolution * 100)
    input_shape = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert input_shape == ["batch", *result.input_shape[1:]]

    crops = real_crops(card.task, card.tile_size)
    expected = torch_probabilities(model_dir, crops)
    session = ort_session(result.path)
    batched = session.run(None, {INPUT_NAME: deepness_input(crops, metadata)})[0]      # batch 2
    single = session.run(None, {INPUT_NAME: deepness_input(crops[1:], metadata)})[0]   # batch 1: dynamic axis
    assert batched.shape == expected.shape == (2, len(card.classes), card.tile_size, card.tile_size)
    assert np.abs(batched - expected).max() < TOLERANCE
    assert np.abs(single - expected[1:]).max() < TOLERANCE
    assert (batched.argmax(1) == expected.argmax(1)).all() and (single.argmax(1) == expected[1:].argmax(1)).all()


def test_cli_writes_the_file_and_refuses_a_model_it_cannot_export(tmp_path):
    output = tmp_path / "segmenter.onnx"
    done = subprocess.run([sys.executable, "-m", "training", "export-onnx", "--model",
                           str(ROOT / "segmentation_starter"), "--output", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert output.is_file() and "ONNX Runtime matches torch" in done.stdout

    refused = subprocess.run([sys.executable, "-m", "training", "export-onnx", "--model",
                              str(ROOT / "fusion_prior_starter"), "--output", str(tmp_path / "prior.onnx")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "ONNX export takes segmentation, saross, changedet models" in refused.stderr
    assert not (tmp_path / "prior.onnx").exists()


def test_missing_optional_packages_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime now raises ImportError
    with pytest.raises(ModelError, match=r"optional packages onnx and onnxruntime .*pip install"):
        export_model_dir(str(ROOT / "segmentation_starter"), str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_wrong_file_name_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_model_dir(str(ROOT / "segmentation_starter"), str(tmp_path / "model.pt"))


@pytest.mark.qgis
def test_processing_algorithm_exports_a_change_model(processing, tmp_path):
    output = tmp_path / "change.onnx"
    result = processing.run("rsdiffusion:export_onnx", {"MODEL": str(ROOT / "changedet_starter"),
                                                        "OUTPUT": str(output)})
    assert result["OUTPUT"] == str(output) and output.is_file()
    assert result["MAX_ABS_DIFFERENCE"] < TOLERANCE
    metadata = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert len(json.loads(metadata["standardization_mean"])) == 6          # dates A and B, 3 bands each
    assert json.loads(metadata["tiles_overlap"]) == 15
