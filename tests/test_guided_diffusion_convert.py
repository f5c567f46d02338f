"""guided-diffusion checkpoint -> diffusers UNet2DModel: the converted model must compute what the original does."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from core.checkpoint import load_card
from core.fusion.convert import (ConversionError, GuidedDiffusionConfig, convert_checkpoint, convert_state_dict,
                                 unet_config)
from core.raster import RasterError
from tests.guided_diffusion_reference import ReferenceUNet, randomize_
from training.convert_guided_diffusion import add_arguments, main

IMAGE_SIZE = 32
TINY = dict(num_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_ds=(2, 4),
            num_head_channels=16, num_heads=1, scale_shift=True, resblock_updown=True, new_order=False)


def tiny_reference(**changes) -> ReferenceUNet:
    p = {**TINY, **changes}
    model = ReferenceUNet(in_channels=3, model_channels=p["num_channels"], out_channels=6,
                          num_res_blocks=p["num_res_blocks"], attention_ds=p["attention_ds"],
                          channel_mult=p["channel_mult"], num_head_channels=p["num_head_channels"],
                          num_heads=p["num_heads"], scale_shift=p["scale_shift"],
                          resblock_updown=p["resblock_updown"], new_attention_order=p["new_order"])
    return randomize_(model, seed=1).eval()


def inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 16, 16, generator=gen)
    t = torch.tensor([0, 17, 500, 999])
    return x, t


def max_diff(reference: torch.nn.Module, converted: UNet2DModel) -> float:
    x, t = inputs()
    with torch.no_grad():
        want = reference(x, t)
        got = converted(x, t).sample
    assert want.shape == got.shape == (4, 6, 16, 16)
    assert want.abs().max() > 0.1  # a meaningful output, not a degenerate one
    return float((want - got).abs().max())


def save(tmp_path, reference, name="ckpt.pt", wrap=False):
    path = tmp_path / name
    state = reference.state_dict()
    torch.save({"state_dict": state} if wrap else state, path)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_converted_model_matches_reference_both_loaders(tmp_path):
    reference = tiny_reference()
    out = convert_checkpoint(save(tmp_path, reference), tmp_path / "prior",
                             {"num_head_channels": 16, "image_size": IMAGE_SIZE}, name="tiny")
    assert {p.name for p in out.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "model.json"}

    loaded = UNet2DModel.from_pretrained(str(out)).eval()
    assert max_diff(reference, loaded) < 1e-4

    plain = UNet2DModel(**{k: v for k, v in json.loads((out / "config.json").read_text()).items()
                           if not k.startswith("_")})
    plain.load_state_dict(load_file(str(out / "diffusion_pytorch_model.safetensors")), strict=True)
    assert max_diff(reference, plain.eval()) < 1e-4

    card = load_card(out, task="fusion-prior")
    assert card.name == "tiny" and card.bands == ["red", "green", "blue"]
    assert card.normalization.offset == [0.5] * 3 and card.normalization.scale == [0.5] * 3
    assert card.tile_size == IMAGE_SIZE and card.training_data == "converted from ckpt.pt"
    assert card.architecture["source"] == "guided-diffusion" and card.architecture["learned_sigma"] is True
    assert card.architecture["unet"]["resnet_time_scale_shift"] == "scale_shift"
    assert card.architecture["unet"]["down_block_types"] == ["ResnetDownsampleBlock2D", "AttnDownBlock2D",
                                                             "AttnDownBlock2D"]
    gd = card.extra["guided_diffusion"]
    assert gd["channel_mult"] == [1, 2, 2] and gd["attention_resolutions"] == [16, 8] and gd["num_res_blocks"] == 1


@pytest.mark.parametrize("changes, overrides", [
    ({"new_order": True}, {"use_new_attention_order": True}),
    ({"resblock_updown": False}, {}),
    ({"scale_shift": False, "num_head_channels": -1, "num_heads": 2}, {"num_head_channels": -1, "num_heads": 2}),
    ({"num_head_channels": -1, "num_heads": 1, "attention_ds": (1, 4)}, {"num_head_channels": -1, "num_heads": 1}),
], ids=["new-attention-order", "conv-resampling", "additive-emb-num-heads", "one-head"])
def test_variants_match_reference(tmp_path, changes, overrides):
    reference = tiny_reference(**changes)
    cfg = GuidedDiffusionConfig.infer(reference.state_dict(), image_size=IMAGE_SIZE,
                                      **{"num_head_channels": 16, **overrides})
    assert cfg.resblock_updown == changes.get("resblock_updown", True)
    assert cfg.use_scale_shift_norm == changes.get("scale_shift", True)
    model = UNet2DModel(**unet_config(cfg))
    model.load_state_dict(convert_state_dict(reference.state_dict(), cfg), strict=True)
    assert max_diff(reference, model.eval()) < 1e-4


def test_wrong_attention_order_is_detected():
    """Control: the comparison is sensitive to the qkv head ordering (legacy vs new)."""
    reference = tiny_reference()  # legacy order
    cfg = GuidedDiffusionConfig.infer(reference.state_dict(), image_size=IMAGE_SIZE, num_head_channels=16,
                                      use_new_attention_order=True)
    model = UNet2DModel(**unet_config(cfg))
    model.load_state_dict(convert_state_dict(reference.state_dict(), cfg), strict=True)
    assert max_diff(reference, model.eval()) > 1e-2


def test_infer_reads_the_tiny_architecture():
    cfg = GuidedDiffusionConfig.infer(tiny_reference().state_dict(), image_size=IMAGE_SIZE, num_head_channels=16)
    assert (cfg.num_channels, cfg.channel_mult, cfg.num_res_blocks) == (32, (1, 2, 2), 1)
    assert cfg.attention_resolutions == (16, 8) and cfg.learn_sigma and cfg.in_channels == 3
    with pytest.raises(ConversionError, match="num_channels"):
        GuidedDiffusionConfig.infer(tiny_reference().state_dict(), num_channels=64)


def test_full_size_256_uncond_layout_on_meta_device():
    """The default config is the 256x256_diffusion_uncond.pt layout (552.8M parameters), checked without memory."""
    with torch.device("meta"):
        reference = ReferenceUNet(in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                                  attention_ds=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64)
        state = reference.state_dict()
        cfg = GuidedDiffusionConfig.infer(state)
        assert cfg == GuidedDiffusionConfig()
        config = unet_config(cfg)
        model = UNet2DModel(**config)
        converted = convert_state_dict(state, cfg)
    assert config["block_out_channels"] == [256, 256, 512, 512, 1024, 1024]
    assert config["down_block_types"] == ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D"] * 3
    assert config["up_block_types"] == ["AttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"] * 3
    assert config["attention_head_dim"] == 64 and config["out_channels"] == 6
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert round(sum(v.numel() for v in state.values()) / 1e6, 1) == 552.8


def test_missing_and_extra_keys_are_named(tmp_path):
    state = tiny_reference().state_dict()
    cfg = GuidedDiffusionConfig.infer(state, image_size=IMAGE_SIZE, num_head_channels=16)
    missing = dict(state)
    del missing["output_blocks.2.1.qkv.bias"]
    with pytest.raises(ConversionError, match=r"missing key\(s\) output_blocks\.2\.1\.qkv\.bias"):
        convert_state_dict(missing, cfg)
    extra = {**state, "label_emb.weight": torch.zeros(10, 128)}
    with pytest.raises(ConversionError, match=r"unused key\(s\) label_emb\.weight.*class-conditional"):
        convert_state_dict(extra, cfg)
    path = tmp_path / "extra.pt"
    torch.save({**state, "input_blocks.1.0.stray.weight": torch.zeros(3)}, path)
    with pytest.raises(ConversionError, match=r"input_blocks\.1\.0\.stray\.weight"):
        convert_checkpoint(path, tmp_path / "out", {"image_size": IMAGE_SIZE, "num_head_channels": 16})
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_is_named(tmp_path):
    state = tiny_reference().state_dict()
    state["input_blocks.1.0.in_layers.0.bias"] = torch.zeros(31)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"Shape mismatch.*down_blocks\.0\.resnets\.0\.norm1\.bias \(31,\)"):
        convert_checkpoint(path, tmp_path / "out", {"image_size": IMAGE_SIZE, "num_head_channels": 16})


def test_state_dict_wrapper_is_accepted(tmp_path):
    reference = tiny_reference(new_order=True)
    out = convert_checkpoint(save(tmp_path, reference, wrap=True), tmp_path / "prior",
                             {"num_head_channels": 16, "image_size": IMAGE_SIZE, "use_new_attention_order": True})
    assert max_diff(reference, UNet2DModel.from_pretrained(str(out)).eval()) < 1e-4
    assert load_card(out).name == "ckpt"


class NotAStateDict:
    def __init__(self):
        self.weights = torch.zeros(2)


def test_unsafe_or_wrong_files_are_rejected(tmp_path):
    pickled = tmp_path / "object.pt"
    torch.save(NotAStateDict(), pickled)
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert_checkpoint(pickled, tmp_path / "out")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ConversionError, match="not a state dict"):
        convert_checkpoint(listed, tmp_path / "out")
    with pytest.raises(ConversionError, match="not found"):
        convert_checkpoint(tmp_path / "absent.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_main(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ckpt = save(tmp_path, tiny_reference())
    main(parser.parse_args([str(ckpt), str(tmp_path / "cli"), "--num-head-channels", "16", "--image-size", "32",
                            "--name", "cli prior"]))
    assert "model written to" in capsys.readouterr().out
    assert load_card(tmp_path / "cli").name == "cli prior"
    with pytest.raises(ConversionError, match="not found"):
        main(parser.parse_args([str(tmp_path / "missing.pt"), str(tmp_path / "x")]))
    with pytest.raises(RasterError, match="not empty"):  # never overwrites an existing model
        main(parser.parse_args([str(ckpt), str(tmp_path / "cli"), "--num-head-channels", "16"]))
