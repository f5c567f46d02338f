"""RDF-MIG's latent variant: the FCF feature image through a local SD-layout VAE or our change-vae."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
import torch
from diffusers import AutoencoderKL

from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs
from core.change.latent import SMALL_VAE, load_vae
from core.change.fcf import load_fcf
from core.change.rdfmig import RdfmigModel, architecture_for, build_denoiser, joint_image, load_rdfmig
from core.checkpoint import ModelError, load_card, load_weights
from core.data.change import ChangePatchDataset, list_change_triplets, write_change_dataset
from core.diffusion.sampling import denoise
from training.fcf import FcfTrainConfig, train_fcf
from training.rdfmig import ChangeVaeTrainConfig, RdfmigTrainConfig, train_change_vae, train_rdfmig
from training.trainer import TrainingError, stacked

TINY = {"preset": "small", "patch_size": 32, "batch_size": 2, "samples_per_image": 1, "steps": 2, "val_every": 0,
        "checkpoint_every": 1000, "device": "cpu"}


def tiny_vae(in_channels: int = 3) -> AutoencoderKL:
    """Stable Diffusion's VAE layout at a test size (two levels: 2x)."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=in_channels, out_channels=in_channels, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.5)


@pytest.fixture(scope="module")
def change_data(tmp_path_factory):
    """(change folder with NIR, its FCF)."""
    root = tmp_path_factory.mktemp("latent")
    data = write_change_dataset(root / "data", count=2, size=64, seed=5, nir=True)
    fcf = train_fcf(FcfTrainConfig(data=str(data), output=str(root / "fcf"), patch_size=32, batch_size=2,
                                   samples_per_image=1, steps=2, val_every=1000, checkpoint_every=1000, device="cpu"))
    return data, fcf


def test_a_local_stable_diffusion_vae_drives_the_latent_variant(change_data, tmp_path):
    data, fcf = change_data
    sd = tmp_path / "stable-diffusion"
    tiny_vae().save_pretrained(sd / "vae")
    model_dir = train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(tmp_path / "run"), fcf=str(fcf),
                                               vae=str(sd), **TINY))
    card = load_card(model_dir)
    unet = card.architecture["unet"]
    assert unet["in_channels"] == unet["out_channels"] == 4 and unet["sample_size"] == 16   # 32 px / 2
    assert card.architecture["vae"]["scaling_factor"] == 0.5 and "stable-diffusion/vae" in card.extra["latent"]
    assert {k.split(".")[0] for k in load_weights(model_dir)} == {"denoiser", "fcf", "vae"}
    shutil.rmtree(sd)   # the model folder holds the VAE: the SD folder is no longer needed
    model, _ = load_rdfmig(str(model_dir))
    reference = tiny_vae()
    assert all(torch.equal(p, q) for p, q in zip(model.vae.state_dict().values(), reference.state_dict().values()))
    generated = model.sample(count=2, steps=2, seed=1, size=32)
    assert generated.a.shape == generated.b.shape == (2, 4, 32, 32)
    assert set(generated.mask.unique().tolist()) <= {0, 1}
    result = synthesize_change_pairs(ChangeSynthesisParams(str(tmp_path / "out"), count=2, model_dir=str(model_dir),
                                                           steps=2, device="cpu"))
    with rasterio.open(result.triplets[0][0]) as image:
        assert image.count == 4 and image.width == 32


def test_the_target_is_the_scaled_latent_of_the_feature_image(change_data):
    data, fcf_dir = change_data
    fcf, _ = load_fcf(str(fcf_dir))
    vae = tiny_vae().eval()
    architecture = architecture_for("small", "fcf", 4, vae, 32)
    model = RdfmigModel(architecture, build_denoiser(architecture), fcf, vae)
    a, b, mask = stacked(ChangePatchDataset(list_change_triplets(data), 32, train=False))
    x0 = model.target(a * 2 - 1, b * 2 - 1, mask)
    feature = joint_image(architecture, fcf, a * 2 - 1, b * 2 - 1, mask)
    expected = vae.encode(feature).latent_dist.mode() * 0.5
    assert x0.shape[1:] == (4, 16, 16) and torch.allclose(x0, expected)


def test_change_vae_trains_and_serves_as_the_autoencoder(change_data, tmp_path):
    data, fcf = change_data
    vae_dir = train_change_vae(ChangeVaeTrainConfig(data=str(data), output=str(tmp_path / "vae"), fcf=str(fcf),
                                                    patch_size=32, batch_size=2, samples_per_image=1, steps=2,
                                                    val_every=2, checkpoint_every=1000, device="cpu"))
    card = load_card(vae_dir)
    assert card.task == "change-vae" and card.architecture["vae"]["scaling_factor"] > 0
    assert {"feature_psnr", "mask_accuracy"} <= set(card.metrics)
    vae, source = load_vae(vae_dir)
    assert list(vae.config.block_out_channels) == SMALL_VAE["block_out_channels"] and "change-vae" in source
    model_dir = train_rdfmig(RdfmigTrainConfig(data=str(data), output=str(tmp_path / "run"), fcf=str(fcf),
                                               vae=str(vae_dir), **{**TINY, "patch_size": 64}))
    model, card = load_rdfmig(str(model_dir))
    assert card.architecture["unet"]["sample_size"] == 8 and card.tile_size == 64   # 8x: 64 px -> 8 latents
    assert model.sample(count=1, steps=2, seed=0).a.shape == (1, 4, 64, 64)


def test_latent_variant_errors_say_what_is_wrong(change_data, tmp_path):
    with pytest.raises(ModelError, match="holds no autoencoder"):
        load_vae(tmp_path)
    tiny_vae(in_channels=4).save_pretrained(tmp_path / "four")
    with pytest.raises(ModelError, match="3-channel FCF feature image"):
        load_vae(tmp_path / "four")
    with pytest.raises(ValueError, match="representation 'fcf'"):
        architecture_for("small", "concat", 3, tiny_vae(), 32)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        architecture_for("small", "fcf", 3, tiny_vae(), 33)
    with pytest.raises(ValueError, match="one code channel per date; this FCF has 2"):
        architecture_for("small", "fcf", 3, tiny_vae(), 32, code_channels=2)
    data, _ = change_data
    two = train_fcf(FcfTrainConfig(data=str(data), output=str(tmp_path / "fcf2"), patch_size=32, batch_size=2,
                                   samples_per_image=1, steps=1, val_every=1000, checkpoint_every=1000, device="cpu",
                                   code_channels=2))
    with pytest.raises(TrainingError, match="2 code channels per date \\(5-channel feature images\\)"):
        train_change_vae(ChangeVaeTrainConfig(data=str(data), output=str(tmp_path / "vae"), fcf=str(two),
                                              steps=1, device="cpu"))


def test_latents_are_not_clipped_while_pixels_are():
    class Constant(torch.nn.Module):   # predicts eps = -3: x0 estimates far outside [-1, 1]
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t):
            return type("Out", (), {"sample": torch.full_like(x, -3.0)})()

    latents = denoise(Constant(), (1, 4, 4, 4), "ddim", 5, seed=0, eta=0.0, clip=False)
    pixels = denoise(Constant(), (1, 4, 4, 4), "ddim", 5, seed=0, eta=0.0)
    assert latents.abs().max() > 2 and pixels.abs().max() <= 1
    assert np.isfinite(latents.numpy()).all()
