import json

import pytest
import torch

from core.checkpoint import (ClassInfo, ModelCard, ModelError, Normalization, load_card, load_for_inference, load_into,
                             load_weights, save_model)
from core.segmentation.model import build_segmenter

ARCH = {"arch": "FPN", "encoder": "tu-mobilenetv3_small_100", "in_channels": 3, "classes": 2,
        "decoder": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}}


def card(task="segmentation", **kw):
    return ModelCard(task=task, name="tiny", architecture=ARCH, bands=["red", "green", "blue"],
                     normalization=Normalization([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]),
                     classes=[ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ffffff")], **kw)


@pytest.fixture
def saved(tmp_path):
    model = build_segmenter(ARCH)
    return save_model(tmp_path / "m", card(), model.state_dict()), model


def test_save_and_load_round_trip(saved):
    path, model = saved
    loaded = load_card(path, task="segmentation")
    assert loaded == card()
    fresh = load_into(build_segmenter(loaded.architecture), path)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]


def test_wrong_task_is_refused(saved):
    path, _ = saved
    with pytest.raises(ModelError, match="is a 'segmentation' model, but this tool needs a 'fusion' model"):
        load_card(path, task="fusion")


def test_missing_and_corrupt_weights(saved):
    path, _ = saved
    weights = path / "model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="corrupt or not safetensors"):
        load_weights(path)
    weights.unlink()
    with pytest.raises(ModelError, match="Weights file missing"):
        load_weights(path)


def test_weights_not_matching_the_card(saved):
    path, _ = saved
    other = dict(ARCH, classes=3)
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_into(build_segmenter(other), path)


def test_not_a_model_directory_and_bad_cards(tmp_path, saved):
    with pytest.raises(ModelError, match="not a model directory"):
        load_card(tmp_path)
    path, _ = saved
    data = json.loads((path / "model.json").read_text())
    data["surprise"] = 1
    (path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="Unknown field"):
        load_card(path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="invalid"):
        load_card(path)


def test_save_replaces_atomically(tmp_path, saved):
    path, model = saved
    save_model(path, card(tile_size=128), model.state_dict())
    assert load_card(path).tile_size == 128
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("field, edit, message", [
    ("classes", lambda data: data["classes"].pop(), "'classes' field lists 1 classes, but its architecture"),
    ("bands", lambda data: data.update(bands=["red", "green", "blue", "nir"],
                                       normalization={"offset": [0.0] * 4, "scale": [1.0] * 4}),
     "'bands' field lists 4 bands, but its architecture"),
])
def test_a_card_that_disagrees_with_its_architecture_is_refused_naming_the_field(saved, field, edit, message):
    path, _ = saved
    data = json.loads((path / "model.json").read_text())
    edit(data)
    (path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        load_card(path)


def test_every_shipped_card_agrees_with_its_architecture():
    from pathlib import Path
    cards = sorted((Path(__file__).resolve().parent.parent / "resources" / "models").glob("*/model.json"))
    assert len(cards) >= 9
    for path in cards:
        load_card(path.parent)


def test_cards_written_with_the_former_normalization_names_still_load(saved):
    path, _ = saved
    data = json.loads((path / "model.json").read_text())
    assert set(data["normalization"]) == {"offset", "scale"}
    data["normalization"] = {"mean": data["normalization"]["offset"], "std": data["normalization"]["scale"]}
    (path / "model.json").write_text(json.dumps(data))
    assert load_card(path).normalization == Normalization(offset=[1.0, 2.0, 3.0], scale=[1.0, 1.0, 1.0])


def test_inference_models_are_built_once_and_reloaded_when_the_folder_changes(saved):
    """Repeated runs reuse the loaded model; a model saved again in the same folder is never served stale."""
    path, model = saved
    builds = []

    def build():
        builds.append(1)
        return build_segmenter(ARCH)

    first = load_for_inference(path, build)
    assert load_for_inference(path, build) is first and len(builds) == 1
    assert not first.training
    retrained = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_model(path, card(), retrained)
    again = load_for_inference(path, build)
    assert again is not first and len(builds) == 2
    name = next(k for k, v in retrained.items() if v.is_floating_point())
    assert torch.equal(again.state_dict()[name], retrained[name])
