"""RDF-MIG: the joint change image (FCF or concatenation), training with MSE / MCRD, triplet generation."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs
from core.change.rdfmig import architecture_for, build_denoiser, joint_image, load_rdfmig
from core.data.change import ChangePatchDataset, list_change_triplets, write_change_dataset
from training.fcf import FcfTrainConfig, train_fcf
from training.rdfmig import NoisyMasks, RdfmigTrainConfig, train_rdfmig
from training.trainer import TrainingError

TINY = {"preset": "small", "patch_size": 32, "batch_size": 2, "samples_per_image": 1, "steps": 2, "val_every": 0,
        "checkpoint_every": 1000, "device": "cpu"}


@pytest.fixture(scope="module", params=[False, True], ids=["rgb", "nir"])
def trained(request, tmp_path_factory):
    """(data folder, FCF-representation model trained with MCRD, concat model trained with MSE)."""
    root = tmp_path_factory.mktemp("rdfmig")
    data = write_change_dataset(root / "data", count=2, size=64, seed=5, nir=request.param)
    fcf = train_fcf(FcfTrainConfig(data=str(data), output=str(root / "fcf"), patch_size=32, batch_size=2,
                                   samples_per_image=1, steps=2, val_every=1000, checkpoint_every=1000, device="cpu"))
    with_fcf = train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(root / "rdfmig"), fcf=str(fcf), loss="mcrd",
                                              **TINY))
    concat = train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(root / "concat"), representation="concat",
                                            **TINY))
    return data, with_fcf, concat


def test_joint_image_channels():
    a, b = torch.rand(2, 4, 8, 8) * 2 - 1, torch.rand(2, 4, 8, 8) * 2 - 1
    mask = torch.randint(0, 2, (2, 8, 8))
    concat = architecture_for("small", "concat", 4)
    x0 = joint_image(concat, None, a, b, mask)
    assert x0.shape == (2, 9, 8, 8) and torch.equal(x0[:, 8], mask.float() * 2 - 1)
    assert build_denoiser(concat).config.in_channels == 9
    assert architecture_for("small", "fcf", 4)["unet"]["in_channels"] == 3
    with pytest.raises(ValueError, match="representation"):
        architecture_for("small", "stack", 3)


def test_trained_models_generate_triplets_in_the_data_bands(trained, tmp_path):
    data, with_fcf, concat = trained
    bands = ChangePatchDataset(list_change_triplets(data), 32).bands
    for model_dir in (with_fcf, concat):
        model, card = load_rdfmig(model_dir)
        assert (model.fcf is not None) == (card.architecture["representation"] == "fcf") and model.vae is None
        generated = model.sample(count=2, steps=2, seed=1, size=32)
        assert generated.a.shape == generated.b.shape == (2, bands, 32, 32)
        assert set(generated.mask.unique().tolist()) <= {0, 1}
    _, card = load_rdfmig(with_fcf)
    mcrd = card.extra["mcrd"]
    assert card.extra["loss"] == "mcrd" and mcrd["rho"] == pytest.approx(2 * mcrd["sigma"] ** 2)
    result = synthesize_change_pairs(ChangeSynthesisParams(str(tmp_path / "out"), count=3, model_dir=str(with_fcf),
                                                           steps=2, batch_size=2, device="cpu"))
    assert len(result.triplets) == 3 and (tmp_path / "out" / "preview.png").is_file()
    with rasterio.open(data / "A" / "pair_0000.tif") as src:
        names, dtype = src.descriptions, src.dtypes[0]
    for a, b, label in result.triplets:
        with rasterio.open(a) as image, rasterio.open(label) as mask:
            assert image.count == bands and image.descriptions == names and image.dtypes[0] == dtype
            assert set(np.unique(mask.read(1))) <= {0, 1}
    assert list_change_triplets(result.output_dir)   # the change layout every change trainer reads


def test_noisy_masks_corrupt_exactly_the_requested_share(trained):
    data, _, _ = trained
    dataset = ChangePatchDataset(list_change_triplets(data), 32, samples_per_image=10)
    noisy = NoisyMasks(dataset, 0.2, seed=0)
    assert len(noisy.wrong) == 4 and len(noisy) == len(dataset)
    index, source = next(iter(noisy.wrong.items()))
    assert noisy[index][2].shape == (32, 32)


def test_an_fcf_for_other_bands_is_refused(trained, tmp_path):
    data, _, _ = trained
    other = write_change_dataset(tmp_path / "other", count=1, size=64, seed=9,
                                 nir=ChangePatchDataset(list_change_triplets(data), 32).bands == 3)
    fcf = train_fcf(FcfTrainConfig(data=str(other), output=str(tmp_path / "fcf"), patch_size=32, batch_size=1,
                                   samples_per_image=1, steps=1, val_every=1000, checkpoint_every=1000, device="cpu"))
    with pytest.raises(TrainingError, match="FCF model"):
        train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(tmp_path / "run"), fcf=str(fcf), **TINY))


def test_an_fcf_with_two_code_channels_drives_a_five_channel_model(tmp_path):
    data = write_change_dataset(tmp_path / "data", count=2, size=64, seed=6)
    fcf = train_fcf(FcfTrainConfig(data=str(data), output=str(tmp_path / "fcf"), patch_size=32, batch_size=2,
                                   samples_per_image=1, steps=2, val_every=1000, checkpoint_every=1000, device="cpu",
                                   code_channels=2))
    model_dir = train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(tmp_path / "run"), fcf=str(fcf), **TINY))
    model, card = load_rdfmig(model_dir)
    assert card.architecture["unet"]["in_channels"] == 5 and model.fcf.code_channels == 2
    assert card.extra["fcf_architecture"]["code_channels"] == 2
    generated = model.sample(count=2, steps=2, seed=1, size=32)
    assert generated.a.shape == generated.b.shape == (2, 3, 32, 32) and generated.mask.shape == (2, 32, 32)
    assert architecture_for("small", "fcf", 3, code_channels=2)["unet"]["in_channels"] == 5
    result = synthesize_change_pairs(ChangeSynthesisParams(str(tmp_path / "out"), count=2, model_dir=str(model_dir),
                                                           steps=2, batch_size=2, device="cpu"))
    assert len(result.triplets) == 2   # the path the dock panel and Processing run
