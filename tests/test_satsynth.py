"""SatSynth base model: the paper's loss and sampler contracts, and the training subcommand."""
import json

import pytest
import torch
import torch.nn.functional as F

from core.checkpoint import load_card, load_into
from core.data.scenes import write_scene_dataset
from core.diffusion.losses import diffusion_loss
from core.diffusion.schedules import training_scheduler
from core.synthesis.satsynth import architecture_for, build_denoiser, joint_tensor, sample
from training.__main__ import main as training_main

ARCH = architecture_for("small", bands=3, n_classes=5)


def test_schedule_is_the_papers():
    s = training_scheduler()
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "epsilon"
    torch.testing.assert_close(s.betas, torch.linspace(1e-4, 2e-2, 1000))


def test_loss_is_epsilon_mse_at_a_uniform_timestep():
    torch.manual_seed(0)
    model, scheduler = build_denoiser(ARCH), training_scheduler()
    x0 = joint_tensor(torch.rand(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16)), 5)
    loss = diffusion_loss(model, scheduler, x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    alpha_bar = scheduler.alphas_cumprod[t][:, None, None, None]
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(loss, F.mse_loss(model(noisy, t).sample, noise))


def test_joint_tensor_layout():
    x = joint_tensor(torch.ones(1, 3, 4, 4), torch.full((1, 4, 4), 4), 5)
    assert x.shape == (1, 3 + 3, 4, 4) and x.min() >= -1 and x.max() <= 1
    assert x[0, 3:, 0, 0].tolist() == [1, -1, -1]   # 4 = 100, most significant bit first


@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("ddpm", 1000)])
def test_sampler_output_shapes_and_valid_labels(sampler, steps):
    model = build_denoiser(ARCH)
    pairs = sample(model, count=2, sampler=sampler, steps=steps, size=16)
    assert pairs.images.shape == (2, 3, 16, 16) and pairs.images.min() >= 0 and pairs.images.max() <= 1
    assert pairs.labels.shape == (2, 16, 16) and pairs.labels.max() < 5
    assert pairs.probabilities.shape == (2, 5, 16, 16)


def tiny_run_config(tmp_path, run: str, patch_size: int, steps: int):
    """A 4-scene dataset and a config that trains `steps` steps, sampling and saving at the end."""
    data = write_scene_dataset(tmp_path / "data", count=4, size=32, seed=1)
    config = tmp_path / f"{run}.json"
    config.write_text(json.dumps({"data": str(data), "output": str(tmp_path / run), "patch_size": patch_size,
                                  "batch_size": 4, "steps": steps, "val_every": steps,
                                  "checkpoint_every": steps}))
    return config


def test_training_subcommand_writes_a_model_and_sample_grids(tmp_path):
    config = tiny_run_config(tmp_path, "run", patch_size=16, steps=3)
    training_main(["satsynth", "--config", str(config)])
    card = load_card(tmp_path / "run" / "model", task="satsynth")
    assert card.architecture["unet"]["in_channels"] == 6
    low, span = card.normalization.offset, card.normalization.scale   # the dataset's range per band -> [0, 1]
    assert all(0 <= lo and 0 < sp and lo + sp <= 255 for lo, sp in zip(low, span))
    model = load_into(build_denoiser(card.architecture), tmp_path / "run" / "model")
    assert sample(model, count=1, steps=2, size=16).labels.shape == (1, 16, 16)
    assert (tmp_path / "run" / "samples_000003.png").stat().st_size > 100
    training_main(["satsynth", "--config", str(config), "--steps", "4", "--resume"])
    assert load_card(tmp_path / "run" / "model").extra["steps"] == 4


def test_super_resolution_doubles_height_and_width():
    base_arch = ARCH
    from core.synthesis.satsynth import sr_architecture_for, super_resolve
    sr_arch = sr_architecture_for("small", 3, 5)
    assert sr_arch["unet"]["in_channels"] == 2 * 6 and sr_arch["unet"]["out_channels"] == 6
    low = sample(build_denoiser(base_arch), count=2, steps=2, size=16)
    high = super_resolve(build_denoiser(sr_arch), low, steps=2)
    assert high.images.shape == (2, 3, 32, 32) and high.labels.shape == (2, 32, 32) and high.labels.max() < 5


def test_sr_training_pairs_are_area_and_nearest_downsampled():
    from core.synthesis.satsynth import downsample_pair
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    labels = torch.tensor([[[0, 1, 2, 3], [4, 4, 4, 4], [1, 1, 0, 0], [2, 2, 2, 2]]])
    low_image, low_labels = downsample_pair(image, labels)
    assert low_image[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert low_labels[0].tolist() == [[0, 2], [1, 0]]


def test_sr_subcommand_trains_and_writes_a_model(tmp_path):
    config = tiny_run_config(tmp_path, "sr", patch_size=32, steps=2)
    training_main(["satsynth-sr", "--config", str(config)])
    card = load_card(tmp_path / "sr" / "model", task="satsynth-sr")
    assert card.architecture["unet"]["sample_size"] == 128 and card.architecture["unet"]["in_channels"] == 12
    assert (tmp_path / "sr" / "samples_000002.png").is_file()


def test_multiband_uint16_data_trains_and_generates_in_its_own_range(tmp_path):
    """RGB+NIR uint16: band count, range and type come from the dataset, via the card, back to the pairs."""
    import rasterio

    from core.synthesis.generate import SynthesisParams, synthesize_pairs
    data = write_scene_dataset(tmp_path / "data", count=3, size=32, seed=2, nir=True)
    for image in (data / "images").iterdir():
        with rasterio.open(image) as src:
            profile, array = src.profile, src.read().astype("uint16") * 40 + 1000   # 1000 .. 11200
        profile.update(dtype="uint16", nodata=None)
        with rasterio.open(image, "w", **profile) as dst:
            dst.write(array)
    config = tmp_path / "nir.json"
    config.write_text(json.dumps({"data": str(data), "output": str(tmp_path / "run"), "patch_size": 16,
                                  "batch_size": 2, "steps": 2, "val_every": 2, "checkpoint_every": 2}))
    training_main(["satsynth", "--config", str(config)])
    card = load_card(tmp_path / "run" / "model", task="satsynth")
    assert card.bands == ["red", "green", "blue", "nir"] and card.extra["dtype"] == "uint16"
    assert card.architecture["unet"]["in_channels"] == 4 + 3
    assert min(card.normalization.offset) >= 1000 and max(card.normalization.scale) > 255
    result = synthesize_pairs(SynthesisParams(str(tmp_path / "pairs"), count=1, model_dir=str(tmp_path / "run" / "model"),
                                              steps=2))
    with rasterio.open(result.pairs[0][0]) as image:
        assert image.count == 4 and image.dtypes[0] == "uint16" and image.descriptions[3] == "nir"
        assert image.read().min() >= min(card.normalization.offset)


def test_sr_stage_regresses_v_and_old_cards_stay_epsilon():
    from core.synthesis.satsynth import prediction_type, sr_architecture_for, sr_loss, upsample_joint
    sr_arch = sr_architecture_for("small", 3, 5)
    assert prediction_type(sr_arch) == "v_prediction" and prediction_type(ARCH) == "epsilon"

    def zero_model(x, t):   # loss = mean(target^2): shows which target sr_loss regresses
        return type("Out", (), {"sample": torch.zeros(x.shape[0], 6, *x.shape[-2:])})()

    x0 = joint_tensor(torch.rand(2, 3, 16, 16), torch.randint(0, 5, (2, 16, 16)), 5)
    low = joint_tensor(torch.rand(2, 3, 8, 8), torch.randint(0, 5, (2, 8, 8)), 5)
    for kind in ("v_prediction", "epsilon"):
        scheduler = training_scheduler(kind)
        loss = sr_loss(zero_model, scheduler, x0, low, 3, generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)   # replay sr_loss's draws
        torch.randint(0, 101, (2,), generator=g)
        torch.randn(upsample_joint(low, 3).shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        target = scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else noise
        torch.testing.assert_close(loss, (target ** 2).mean())


def test_ddim_eta_is_reproducible_and_changes_the_path():
    torch.manual_seed(0)
    model = build_denoiser(ARCH)
    stochastic = [sample(model, count=1, steps=3, size=16, seed=5, eta=1.0).images for _ in range(2)]
    deterministic = sample(model, count=1, steps=3, size=16, seed=5, eta=0.0).images
    torch.testing.assert_close(stochastic[0], stochastic[1])
    assert not torch.allclose(stochastic[0], deterministic)
