"""FCF (RDF-MIG's feature compression & fusion): shapes, exact mask round trip, training, NIR band order."""
import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from core.change.fcf import (FCF, chroma_error, concat_image, fcf_loss, feature_image, load_fcf, psnr,
                             split_concat_image, split_feature_image, ssim)
from core.checkpoint import ModelError
from core.data.images import ImagePatchDataset
from core.data.scenes import write_scene
from core.raster import raster_info
from training.config import load_config
from training.__main__ import main as training_main
from training.fcf import FcfTrainConfig, read_date_images, train_fcf, validation_patches
from training.trainer import TrainingError

ROOT = Path(__file__).resolve().parents[1]


def _write_change_folder(root: Path, pairs: int, nir: bool, size: int = 48) -> Path:
    """Procedural scenes as dates A and B (different scenes: FCF only needs images of the sensor)."""
    for i in range(pairs):
        write_scene(root / "A" / f"p{i}.tif", root / "label" / f"p{i}.tif", size, size, seed=i, nir=nir)
        write_scene(root / "B" / f"p{i}.tif", root / "scratch" / f"p{i}.tif", size, size, seed=100 + i, nir=nir)
    return root


@pytest.fixture(scope="module")
def nir_run(tmp_path_factory):
    """A short real training on 4-band (RGB+NIR) data."""
    root = tmp_path_factory.mktemp("fcf")
    data = _write_change_folder(root / "data", pairs=3, nir=True)
    cfg = FcfTrainConfig(data=str(data), output=str(root / "run"), width=16, patch_size=32, batch_size=8,
                         samples_per_image=4, steps=150, lr=3e-3, val_every=25, checkpoint_every=1000, device="cpu")
    return cfg, train_fcf(cfg)


def _random_mask(shape, seed=0):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.7).to(torch.uint8)


@pytest.mark.parametrize("bands", [3, 4])
def test_shapes(bands):
    fcf = FCF(bands, width=8)
    a, b = torch.rand(2, bands, 20, 24) * 2 - 1, torch.rand(2, bands, 20, 24) * 2 - 1
    mask = _random_mask((2, 20, 24))
    z = fcf.encode(a)
    assert z.shape == (2, 1, 20, 24) and z.abs().max() <= 1
    assert fcf.decode(z).shape == fcf(a).shape == (2, bands, 20, 24)
    joint = feature_image(fcf, a, b, mask)
    assert joint.shape == (2, 3, 20, 24)
    a2, b2, m2 = split_feature_image(fcf, joint)
    assert a2.shape == b2.shape == (2, bands, 20, 24) and m2.shape == (2, 20, 24) and m2.dtype == torch.bool
    assert a2.abs().max() <= 1
    concat = concat_image(a, b, mask)
    assert concat.shape == (2, 2 * bands + 1, 20, 24)
    a3, b3, m3 = split_concat_image(concat)
    assert torch.equal(a3, a) and torch.equal(b3, b) and torch.equal(m3, mask.bool())
    with pytest.raises(ValueError, match=f"reduces {bands}-band images; got {bands + 1}"):
        fcf.encode(torch.zeros(1, bands + 1, 8, 8))


def test_mask_channel_is_recovered_exactly_after_noise():
    fcf = FCF(3, width=8)
    a, b = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    mask = _random_mask((3, 16, 16), seed=1)
    noise = (torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.999   # |noise| < 1
    for as_given in (mask, mask.bool(), mask.float().unsqueeze(1)):
        joint = feature_image(fcf, a, b, as_given)
        assert set(joint[:, 2].unique().tolist()) == {-1.0, 1.0}
        joint[:, 2] += noise
        assert torch.equal(split_feature_image(fcf, joint)[2], mask.bool())
        concat = concat_image(a, b, as_given)
        concat[:, 6] += noise
        assert torch.equal(split_concat_image(concat)[2], mask.bool())
    # A sign flip is not "small noise": the test can tell a wrong threshold from the right one.
    joint = feature_image(fcf, a, b, mask)
    joint[:, 2] -= 1.001 * joint[:, 2].sign() * 2
    assert not torch.equal(split_feature_image(fcf, joint)[2], mask.bool())


def test_masks_must_be_binary():
    fcf = FCF(3, width=8)
    a = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 0, 0] = 255
    with pytest.raises(ValueError, match="0 \\(no change\\) and 1 \\(change\\)"):
        feature_image(fcf, a, a, mask)
    with pytest.raises(ValueError, match="2 C \\+ 1"):
        split_concat_image(torch.zeros(1, 6, 8, 8))


def test_ssim_and_psnr():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 24, 24, generator=generator)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    assert 0 < float(ssim(noisy, x)) < 0.95
    assert float(ssim(x[..., :7, :9], x[..., :7, :9])) == pytest.approx(1.0, abs=1e-6)   # smaller than the window
    assert psnr(torch.zeros(4), torch.full((4,), 0.2)) == pytest.approx(20.0)   # [-1, 1]: error 0.1 of a unit range
    grey = torch.zeros(1, 3, 4, 4)
    assert chroma_error(grey + 0.5, grey) == 0   # brighter, same colour
    red = grey.clone()
    red[:, 0] = 0.6   # [0.6, 0, 0] - mean 0.2 = [0.4, -0.2, -0.2]: 0.8 / 3 on [-1, 1], half of it on [0, 1]
    assert chroma_error(red, grey) == pytest.approx(0.4 / 3)
    loss = fcf_loss(FCF(3, width=8), x * 2 - 1)
    assert loss.ndim == 0 and loss > 0


def test_training_improves_reconstruction(nir_run):
    cfg, model_dir = nir_run
    with open(Path(cfg.output) / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    validations = [float(r["psnr"]) for r in rows if r["psnr"]]
    assert len(validations) == cfg.steps // cfg.val_every
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])
    assert validations[-1] > validations[0] + 4
    # Against the very weights training started from (the trainer seeds before building the model).
    torch.manual_seed(cfg.seed)
    initial = FCF(4, cfg.width)
    trained, card = load_fcf(model_dir)
    x = validation_patches(ImagePatchDataset(read_date_images(cfg.data).paths, 32, 4, 4), seed=7)
    with torch.no_grad():
        before, after = psnr(initial(x), x), psnr(trained(x), x)
    assert after > before + 6
    assert card.metrics["psnr"] == pytest.approx(validations[-1], abs=1e-3)


def test_nir_model_keeps_bands_and_their_order(nir_run):
    cfg, model_dir = nir_run
    fcf, card = load_fcf(model_dir)
    data_bands = list(raster_info(next((Path(cfg.data) / "A").iterdir())).band_names)
    assert data_bands == ["red", "green", "blue", "nir"]
    assert card.task == "fcf" and card.bands == data_bands
    assert card.architecture == {"bands": 4, "width": cfg.width, "code_channels": 1}
    assert card.normalization.offset == [127.5] * 4 and card.normalization.scale == [127.5] * 4   # 8-bit -> [-1, 1]
    assert not any(p.requires_grad for p in fcf.parameters())
    x = validation_patches(ImagePatchDataset(read_date_images(cfg.data).paths, 32, 4, 4), seed=7)
    with torch.no_grad():
        a, b, mask = split_feature_image(fcf, feature_image(fcf, x, x.flip(0), _random_mask((len(x), 32, 32))))
    assert a.shape[1] == b.shape[1] == 4
    # Band order: each input band is reproduced best by the output band at the same index.
    inputs, outputs = x.transpose(0, 1).flatten(1), a.transpose(0, 1).flatten(1)
    errors = (outputs[:, None] - inputs[None]).square().mean(-1)   # [output band, input band]
    assert errors.argmin(0).tolist() == [0, 1, 2, 3]


def test_load_fcf_rejects_other_models(nir_run, tmp_path):
    _, model_dir = nir_run
    card = (model_dir / "model.json").read_text().replace('"task": "fcf"', '"task": "changedet"')
    (tmp_path / "model.json").write_text(card)
    with pytest.raises(ModelError, match="needs a 'fcf' model"):
        load_fcf(tmp_path)


def test_change_folder_checks(tmp_path):
    write_scene(tmp_path / "one" / "A" / "p.tif", tmp_path / "one" / "label" / "p.tif", 16, 16, seed=4)
    with pytest.raises(TrainingError, match="not a change folder: no B/"):
        read_date_images(tmp_path / "one")
    mixed = _write_change_folder(tmp_path / "mixed", pairs=1, nir=False, size=16)
    write_scene(mixed / "B" / "nir.tif", mixed / "scratch" / "nir.tif", 16, 16, seed=5, nir=True)
    with pytest.raises(TrainingError, match="same bands: .*nir.tif' has 4 band"):
        read_date_images(mixed)
    rgb = read_date_images(_write_change_folder(tmp_path / "rgb", pairs=2, nir=False, size=16))
    assert rgb.bands == ["red", "green", "blue"] and rgb.counts == {"A": 2, "B": 2}


def test_starter_config_is_valid():
    cfg = load_config(FcfTrainConfig, str(ROOT / "training/configs/fcf_starter.toml"))
    assert cfg.output.endswith("runs/starter/fcf") and cfg.steps > 0


def test_two_code_channels_make_a_five_channel_feature_image():
    fcf = FCF(3, width=8, code_channels=2)
    assert fcf.architecture == {"bands": 3, "width": 8, "code_channels": 2} and fcf.feature_channels == 5
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    mask = _random_mask((2, 16, 16), seed=4)
    joint = feature_image(fcf, a, b, mask)
    assert joint.shape == (2, 5, 16, 16) and torch.equal(joint[:, :2], fcf.encode(a))
    assert set(joint[:, 4].unique().tolist()) == {-1.0, 1.0}
    joint[:, 4] += 0.99 * -joint[:, 4].sign() * torch.rand(2, 16, 16)   # towards 0, never across
    a2, b2, m2 = split_feature_image(fcf, joint)
    assert torch.equal(m2, mask.bool()) and a2.shape == b2.shape == (2, 3, 16, 16)
    assert torch.equal(b2, fcf.decode(fcf.encode(b)))   # date B's codes are channels 2..3, not 1..2
    with pytest.raises(ValueError, match="5 channels \\(2 per date, then the mask\\); got 3"):
        split_feature_image(fcf, joint[:, :3])
    with pytest.raises(ValueError, match="code_channels <= bands"):
        FCF(3, code_channels=4)


def test_two_code_channels_keep_the_colour_one_channel_loses(tmp_path):
    """The reason for code_channels: one channel per date carries luminance, not colour (issue 20's diagnosis)."""
    data = _write_change_folder(tmp_path / "data", pairs=3, nir=False)
    errors = {}
    for k in (1, 2):
        cfg = FcfTrainConfig(data=str(data), output=str(tmp_path / f"k{k}"), width=16, patch_size=32, batch_size=8,
                             samples_per_image=4, steps=300, lr=3e-3, val_every=1000, checkpoint_every=1000,
                             device="cpu", code_channels=k)
        fcf, card = load_fcf(train_fcf(cfg))
        assert fcf.code_channels == k and card.architecture["code_channels"] == k
        x = validation_patches(ImagePatchDataset(read_date_images(data).paths, 32, 3, 4), seed=7)
        with torch.no_grad():
            errors[k] = chroma_error(fcf(x), x)
        assert card.metrics["chroma_error"] > 0   # the card shows what PSNR hides
    assert errors[2] < 0.75 * errors[1], errors   # measured: 0.019 vs 0.029


def test_code_channels_from_the_command_line(tmp_path):
    data = _write_change_folder(tmp_path / "data", pairs=1, nir=False, size=32)
    config = tmp_path / "fcf.json"
    config.write_text(json.dumps({"data": str(data), "output": str(tmp_path / "run"), "width": 8, "patch_size": 32,
                                  "batch_size": 2, "samples_per_image": 1, "steps": 1, "val_every": 1000,
                                  "checkpoint_every": 1000, "device": "cpu"}))
    training_main(["fcf", "--config", str(config), "--code-channels", "2"])
    fcf, card = load_fcf(tmp_path / "run" / "model")
    assert fcf.code_channels == 2 and card.architecture["code_channels"] == 2
    assert "-> 2 channel(s)" in card.extra["interpretation"]
    with pytest.raises(TrainingError, match="code_channels must be between 1 and the data's 3 bands; got 4"):
        train_fcf(dataclasses.replace(load_config(FcfTrainConfig, str(config)), code_channels=4))
