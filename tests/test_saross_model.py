"""SAROSS-Net: CAFT attention, the UNet++ skip-path wiring, and the CE + Dice + KD loss with known answers."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from core.oilspill.losses import distillation_loss, saross_loss, soft_dice_loss
from segmentation_models_pytorch.decoders.unetplusplus.decoder import DecoderBlock

from core.oilspill.saross import CAFT, SKIP_BLOCKS, CaftNode, architecture_for, build_saross, skip_modules

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A 5-level UNet++ has intermediate nodes x_{depth}_{layer}, depth 1..layer for layer 1..3: 1 + 2 + 3.
INTERMEDIATE_NODES = 6


# --- CAFT -------------------------------------------------------------------------------------------------------
def test_caft_attention_is_channels_by_channels_whatever_the_image_size():
    torch.manual_seed(0)
    caft = CAFT(hr_channels=32, lr_channels=48, heads=4)
    for h, w in [(16, 16), (32, 48)]:
        hr, lr_up = torch.randn(2, 32, h, w), torch.randn(2, 48, h, w)
        attn = caft.attention(hr, lr_up)
        assert attn.shape == (2, 4, 8, 8)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 8))  # a softmax over the key channels
        assert caft(hr, lr_up).shape == hr.shape


def test_caft_query_comes_from_the_lr_features_and_temperature_sharpens():
    torch.manual_seed(0)
    caft = CAFT(hr_channels=16, lr_channels=8, heads=2)
    hr = torch.randn(1, 16, 8, 8)
    a = caft.attention(hr, torch.randn(1, 8, 8, 8))
    b = caft.attention(hr, torch.randn(1, 8, 8, 8))
    assert not torch.allclose(a, b)
    with torch.no_grad():
        caft.temperature.fill_(50.0)
    sharp = caft.attention(hr, torch.randn(1, 8, 8, 8))
    assert sharp.max(-1).values.mean() > a.max(-1).values.mean()


def test_caft_heads_must_divide_the_channels():
    with pytest.raises(ValueError, match="divide"):
        CAFT(hr_channels=24, lr_channels=8, heads=5)


# --- the network ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_block", SKIP_BLOCKS)
def test_small_preset_forward_for_every_skip_block(skip_block):
    torch.manual_seed(0)
    architecture = json.loads(json.dumps(architecture_for("small", classes=5, skip_block=skip_block)))
    model = build_saross(architecture).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5, 64, 64)
    modules = skip_modules(model)
    expected_type = {"caft": CaftNode, "conv": DecoderBlock, "none": None}[skip_block]
    assert len(modules) == (0 if expected_type is None else INTERMEDIATE_NODES)
    assert all(isinstance(m, expected_type) for m in modules)


def test_caft_blocks_are_the_intermediate_nodes_with_the_hr_and_lr_channels_of_their_node():
    # ResNet-18 feature channels 64, 64, 128, 256, 512: skip widths (HR) 256, 128, 64, 64 from 1/16 up to 1/2.
    model = build_saross(architecture_for("paper", classes=2, encoder="resnet18"))
    blocks = model.decoder.blocks
    cafts = {name for name, block in blocks.items() if isinstance(block, CaftNode)}
    assert cafts == {f"x_{d}_{layer}" for layer in range(1, 4) for d in range(1, layer + 1)}
    assert all(isinstance(blocks[f"x_0_{layer}"], DecoderBlock) for layer in range(5))  # the decoder stays conv
    # x_1_1: LR = the 1/16 encoder features (256 ch), HR = the 1/8 encoder features (128 ch).
    caft = blocks["x_1_1"].caft
    assert (caft.norm_hr.normalized_shape, caft.norm_lr.normalized_shape) == ((128,), (256,))
    # x_3_3: LR = the 1/4 encoder features (64 ch), HR = the 1/2 encoder features (64 ch).
    caft = blocks["x_3_3"].caft
    assert (caft.norm_hr.normalized_shape, caft.norm_lr.normalized_shape) == ((64,), (64,))
    assert all(m.caft.heads == 8 for m in skip_modules(model))  # every HR width is a multiple of 8


def reference_caft(caft: CAFT, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    """CAFT as first written (issue 5), step by step in (B, C, H, W): the equivalence reference for the
    pixels-last implementation (issue 21)."""
    b, c, h, w = hr.shape
    q = caft.q(caft.norm_lr(lr_up))
    k, v = caft.kv(caft.norm_hr(hr)).chunk(2, dim=1)
    q, k, v = (t.reshape(b, caft.heads, c // caft.heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    out = (torch.softmax(q @ k.transpose(-2, -1) * caft.temperature, dim=-1) @ v).reshape(hr.shape)
    hr = hr + caft.project_out(out)
    ffn = caft.ffn
    a, gate = ffn.dwconv(ffn.project_in(caft.norm_ffn(hr))).chunk(2, dim=1)
    return hr + ffn.project_out(F.gelu(a) * gate)


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Norm weights, biases and temperatures away from their initial 1 / 0, so every term counts."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


@pytest.mark.parametrize("band_pixels", [CAFT.band_pixels, 40 * 3, 1])   # one band; 3 rows + a ragged 2; 1 row
@pytest.mark.parametrize("hr_channels, lr_channels, heads", [(64, 128, 8), (16, 24, 4), (24, 48, 8)])
def test_caft_matches_the_step_by_step_reference(hr_channels, lr_channels, heads, band_pixels, monkeypatch):
    """Also when the row bands split the image: every band's 3x3s see the rows of its neighbours."""
    monkeypatch.setattr(CAFT, "band_pixels", band_pixels)
    torch.manual_seed(0)
    caft = perturbed(CAFT(hr_channels, lr_channels, heads))
    hr, lr = torch.randn(2, hr_channels, 32, 40), torch.randn(2, lr_channels, 16, 20)
    lr_up = F.interpolate(lr, scale_factor=2.0, mode="nearest")
    with torch.no_grad():
        expected = reference_caft(caft, hr, lr_up)
        torch.testing.assert_close(caft(hr, lr_up), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(caft.transfer(hr, lr), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(CaftNode(caft)(lr, torch.cat([hr, hr], 1)), expected, rtol=0, atol=1e-5)
        assert caft(hr, lr_up).is_contiguous()


def test_shipped_starter_loads_and_matches_the_reference_on_a_sar_crop(monkeypatch):
    from core.catalog import starter_model_dir
    from core.data.sar import make_sar_scene
    from core.oilspill.pipeline import load_saross
    model, _ = load_saross(str(starter_model_dir("saross")))   # strict load: the state-dict keys are unchanged
    model.eval()
    sigma0, _ = make_sar_scene(128, 128, seed=3)
    db = 10 * torch.log10(torch.from_numpy(sigma0).clamp_min(1e-6))
    x = ((db - db.quantile(0.01)) / (db.quantile(0.99) - db.quantile(0.01))).clamp(0, 1)[None, None]
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setattr(CaftNode, "forward", lambda node, lr, skip: reference_caft(
            node.caft, skip[:, :node.out_channels], F.interpolate(lr, scale_factor=2.0, mode="nearest")))
        torch.testing.assert_close(fast, model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("band_pixels", [CAFT.band_pixels, 16 * 5])
def test_caft_gradients_match_the_reference(band_pixels, monkeypatch):
    """Training goes through the same code: the parameter and input gradients agree too, across row bands."""
    monkeypatch.setattr(CAFT, "band_pixels", band_pixels)
    torch.manual_seed(1)
    caft = perturbed(CAFT(16, 8, 4))
    hr, lr = torch.randn(1, 16, 16, 16, requires_grad=True), torch.randn(1, 8, 8, 8, requires_grad=True)
    grads = []
    for run in (lambda: caft.transfer(hr, lr), lambda: reference_caft(caft, hr, F.interpolate(lr, scale_factor=2.0))):
        caft.zero_grad()
        hr.grad = lr.grad = None
        run().square().mean().backward()
        grads.append([p.grad.clone() for p in (*caft.parameters(), hr, lr)])
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6)


def test_caft_node_transfers_the_previous_node_of_its_row_guided_by_the_node_below():
    """Only the first HR channels of the dense skip (the previous node at this resolution) reach the block."""
    torch.manual_seed(0)
    node = CaftNode(CAFT(hr_channels=8, lr_channels=4, heads=2)).eval()
    x, skip = torch.randn(1, 4, 4, 4), torch.randn(1, 24, 8, 8)
    other = skip.clone()
    other[:, 8:] = torch.randn(1, 16, 8, 8)   # the older nodes of the row: not this block's input
    with torch.no_grad():
        torch.testing.assert_close(node(x, skip), node(x, other))
        assert node(x, skip).shape == (1, 8, 8, 8)
        assert not torch.allclose(node(x, skip), node(torch.randn(1, 4, 4, 4), skip))   # LR guides the transfer


def test_caft_costs_fewer_parameters_than_unetplusplus_nested_convs():
    """The paper's ablation: CAFT nodes add fewer parameters than the 3x3-conv nodes they replace."""
    sizes = {block: sum(p.numel() for p in build_saross(architecture_for("paper", 2, "resnet18", block)).parameters())
             for block in SKIP_BLOCKS}
    assert sizes["none"] < sizes["caft"] < sizes["conv"]


def test_paper_like_forward_and_every_caft_is_trained():
    torch.manual_seed(0)
    model = build_saross(architecture_for("paper", classes=3, encoder="resnet18"))
    logits = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    logits.square().mean().backward()
    for node in skip_modules(model):
        assert node.caft.temperature.grad is not None and node.caft.temperature.grad.abs().sum() > 0


def test_conv_is_plain_unetplusplus_and_none_plain_unet():
    import segmentation_models_pytorch as smp
    kwargs = dict(encoder_weights=None, in_channels=1, classes=2, decoder_channels=[64, 48, 32, 24, 16])
    for block, reference in (("conv", smp.UnetPlusPlus("tu-mobilenetv3_small_100", **kwargs)),
                             ("none", smp.Unet("tu-mobilenetv3_small_100", **kwargs))):
        model = build_saross(architecture_for("small", classes=2, skip_block=block))
        assert model.state_dict().keys() == reference.state_dict().keys()


def test_unknown_skip_block_is_refused():
    with pytest.raises(ValueError, match="skip block"):
        architecture_for("small", classes=2, skip_block="attention")


# --- losses -----------------------------------------------------------------------------------------------------
def _teacher(classes=4, shape=(2, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape[0], classes, *shape[1:], generator=g) * 2, dim=1)


def test_kd_with_student_equal_to_teacher_is_the_entropy_and_has_no_gradient():
    T = 2.0
    teacher = _teacher()
    student = teacher.log().clone().requires_grad_(True)
    loss = distillation_loss(student, teacher, T)
    q = torch.softmax(teacher.log() / T, dim=1)
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(loss, T ** 2 * entropy)
    loss.backward()
    assert student.grad.abs().max() < 1e-6
    # any other student costs more (cross-entropy >= entropy)
    assert distillation_loss(student.detach() + torch.randn_like(teacher), teacher, T) > loss


def test_kd_gradient_follows_the_t_squared_convention_and_skips_real_pixels():
    T = 3.0
    teacher = _teacher()
    teacher[1] = 0  # the second sample is real: no soft label
    student = torch.randn(teacher.shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    distillation_loss(student, teacher, T).backward()
    n_pixels = 3 * 5  # soft-labelled pixels: sample 0 only
    q = torch.softmax(teacher[0].log() / T, dim=0)
    expected = T ** 2 * (torch.softmax(student.detach()[0] / T, dim=0) - q) / T / n_pixels
    torch.testing.assert_close(student.grad[0], expected)
    assert torch.equal(student.grad[1], torch.zeros_like(student.grad[1]))


def test_kd_is_zero_with_gradient_when_no_pixel_has_a_soft_label():
    student = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = distillation_loss(student, torch.zeros(1, 2, 4, 4), 2.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_soft_dice_perfect_is_zero_and_totally_wrong_is_close_to_one():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, :, 4:] = 1
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert soft_dice_loss(perfect, target).item() < 1e-6
    wrong = -perfect
    assert soft_dice_loss(wrong, target).item() > 0.97
    # ignored pixels do not count: wrong only where ignored -> still perfect
    mixed = perfect.clone()
    mixed[..., :2] = wrong[..., :2]
    ignored = target.clone()
    ignored[..., :2] = -100
    assert soft_dice_loss(mixed, ignored).item() < 1e-6


def test_saross_loss_is_ce_plus_half_dice_plus_tenth_kd():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    target[0, 0, 0] = -100
    teacher = _teacher()
    teacher[0] = 0
    ce = F.cross_entropy(logits, target, ignore_index=-100)
    dice = soft_dice_loss(logits, target)
    kd = distillation_loss(logits, teacher, 2.0)
    assert 0 < dice < 1 and kd > 0
    torch.testing.assert_close(saross_loss(logits, target, teacher, temperature=2.0), ce + 0.5 * dice + 0.1 * kd)
    torch.testing.assert_close(saross_loss(logits, target), ce + 0.5 * dice)
    all_ignored = torch.full_like(target, -100)
    assert torch.isfinite(saross_loss(logits, all_ignored, teacher))
