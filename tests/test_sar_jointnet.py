"""SAR-JointNet: balancing factor (Parseval), zero-initialised couplings, stage freezing, the joint
loss's shared timestep and balanced mask, and the Eq. 21 DDIM sampler."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.diffusion.schedules import TIMESTEPS
from core.oilspill import jointnet
from core.oilspill.jointnet import (DEFAULT_SAMPLING_STEPS, PRESETS, architecture_for, balancing_factor,
                                    build_jointnet, fft_power, init_label_net_from_sar, joint_loss, sample_pairs,
                                    start_stage, training_scheduler)
from core.progress import Progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 3
BALANCE = 0.4


def tiny_architecture() -> dict:
    arch = architecture_for("small", CLASSES, BALANCE)
    arch["sample_size"] = 16
    arch["unet"] = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    return arch


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_jointnet(tiny_architecture())


def signed_onehot(labels: torch.Tensor) -> torch.Tensor:
    """The test's own y0 = 2 onehot - 1, ignored pixels as class 0."""
    return F.one_hot(labels.clamp(min=0), CLASSES).permute(0, 3, 1, 2).float() * 2 - 1


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_architecture_is_json_and_presets_match():
    for preset in PRESETS:
        arch = architecture_for(preset, 5, 0.528)
        assert json.loads(json.dumps(arch)) == arch
        assert "in_channels" not in arch["unet"] and "out_channels" not in arch["unet"]
    small = architecture_for("small", 2, 0.5)
    assert small["sample_size"] == 64 and small["unet"]["block_out_channels"] == [32, 64, 64]
    assert architecture_for("paper", 5, 0.5)["sample_size"] == 256
    model = build_jointnet(small)
    assert model.sar_net.config.in_channels == model.sar_net.config.out_channels == 1
    assert model.label_net.config.in_channels == model.label_net.config.out_channels == 2
    with pytest.raises(ValueError):
        architecture_for("huge", 5, 0.5)
    assert TIMESTEPS == 1000 and DEFAULT_SAMPLING_STEPS == 200


def test_schedule_is_squared_cosine_predicting_x0():
    s = training_scheduler()
    assert s.config.num_train_timesteps == 1000 and s.config.prediction_type == "sample"
    assert s.config.beta_schedule == "squaredcos_cap_v2" and not s.config.clip_sample
    # squared cosine: alpha_bar(t) ~ cos^2((t/T + 0.008) / 1.008 * pi / 2), normalised at 0
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    assert float(s.alphas_cumprod[499]) == pytest.approx(f(500) / f(0), rel=1e-3)


def test_fft_power_is_the_signal_power_by_parseval():
    x = torch.randn(3, 2, 8, 12, generator=torch.Generator().manual_seed(1)) * 0.7 + 0.2
    torch.testing.assert_close(fft_power(x), x.double().square().mean(dim=(1, 2, 3)), rtol=1e-10, atol=0)
    # numpy's unnormalised DFT: mean |X_k|^2 / (H W)
    spectrum = np.fft.fft2(x.numpy().astype(np.float64))
    expected = (np.abs(spectrum) ** 2).mean(axis=(1, 2, 3)) / (8 * 12)
    np.testing.assert_allclose(fft_power(x).numpy(), expected, rtol=1e-10)
    assert fft_power(torch.full((1, 1, 4, 4), -0.5)).item() == pytest.approx(0.25)


def test_balancing_factor_matches_signal_powers_over_the_whole_set():
    g = torch.Generator().manual_seed(2)
    batches = []
    for size in (3, 1, 2):
        images = torch.rand(size, 1, 10, 14, generator=g) * 2 - 1
        labels = torch.randint(0, CLASSES, (size, 10, 14), generator=g)
        labels[:, 0, :3] = -100
        batches.append((images, labels))
    images = torch.cat([b[0] for b in batches]).double()
    y0 = signed_onehot(torch.cat([b[1] for b in batches])).double()
    expected = images.square().mean().sqrt() / y0.square().mean().sqrt()
    assert balancing_factor(batches, CLASSES) == pytest.approx(expected.item(), rel=1e-5)
    # known answer: images of constant magnitude 0.5 against a {-1, 1} mask
    constant = [(torch.full((2, 1, 4, 4), 0.5) * torch.sign(torch.randn(2, 1, 4, 4, generator=g)),
                 torch.zeros(2, 4, 4, dtype=torch.long))]
    assert balancing_factor(constant, CLASSES) == pytest.approx(0.5, rel=1e-6)


def test_couplings_are_zero_at_init_so_stage_2_starts_from_stage_1():
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    x_t, y_t, t = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, CLASSES, 16, 16, generator=g), torch.tensor(
        [5, 700])
    with torch.no_grad():
        stage1 = model.sar_net(x_t, t).sample
        assert torch.equal(model.forward_image(x_t, t), stage1)
        x0_hat, logits = model(x_t, y_t, t)
        assert torch.equal(x0_hat, stage1)
        assert torch.equal(logits, model.label_net(y_t, t).sample)   # the split forward is diffusers'

        conv_in, conv_out = model.label_net.conv_in.weight.clone(), model.label_net.conv_out.bias.clone()
        init_label_net_from_sar(model)
        assert torch.equal(model.label_net.down_blocks[1].attentions[0].to_q.weight,
                           model.sar_net.down_blocks[1].attentions[0].to_q.weight)
        assert torch.equal(model.label_net.mid_block.resnets[0].conv1.weight,
                           model.sar_net.mid_block.resnets[0].conv1.weight)
        assert torch.equal(model.label_net.conv_in.weight, conv_in)       # re-made for C channels, fresh init
        assert torch.equal(model.label_net.conv_out.bias, conv_out)
        assert torch.equal(model(x_t, y_t, t)[0], stage1)

        # the couplings are wired in each direction: once non-zero, only their target branch moves
        for conv in model.image_to_label.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.normal_(0, 0.1)
        x0_coupled, logits_coupled = model(x_t, y_t, t)
        assert torch.equal(x0_coupled, stage1)
        assert not torch.allclose(logits_coupled, model.label_net(y_t, t).sample)
        model.label_to_image.mid.weight.normal_(0, 0.1)
        assert not torch.allclose(model(x_t, y_t, t)[0], stage1)


def batch(seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 1, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, CLASSES, (2, 16, 16), generator=g)
    labels[0, :2] = -100
    return image, labels


def one_step(model, stage: int) -> tuple[dict, dict]:
    before = snapshot(model)
    params = start_stage(model, stage)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss, _ = joint_loss(model, training_scheduler(), *batch(), BALANCE, stage,
                         generator=torch.Generator().manual_seed(5))
    loss.backward()
    optimizer.step()
    return before, snapshot(model)


def changed(before: dict, after: dict, prefix: str) -> dict[str, bool]:
    return {name: not torch.equal(before[name], after[name]) for name in before if name.startswith(prefix)}


def test_stage_1_trains_sar_net_only():
    model = tiny_model()
    params = start_stage(model, 1)
    assert {id(p) for p in params} == {id(p) for p in model.sar_net.parameters()}
    before, after = one_step(model, 1)
    assert all(changed(before, after, "sar_net.").values())
    for prefix in ("label_net.", "image_to_label.", "label_to_image."):
        assert not any(changed(before, after, prefix).values())


def test_stage_2_freezes_sar_net_but_trains_label_net_and_couplings():
    model = tiny_model()
    init_label_net_from_sar(model)
    before, after = one_step(model, 2)
    assert not any(changed(before, after, "sar_net.").values())
    assert not any(p.requires_grad for p in model.sar_net.parameters())
    for prefix in ("label_net.", "image_to_label.", "label_to_image."):
        moved = changed(before, after, prefix)
        assert moved and all(moved.values()), [name for name, m in moved.items() if not m]
    assert len(start_stage(model, 3)) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError):
        start_stage(model, 4)


def test_joint_loss_shares_t_and_diffuses_the_balanced_mask(monkeypatch):
    model, scheduler = tiny_model(), training_scheduler()
    image, labels = batch()
    seen = {}
    forward = model.forward

    def spy(x_t, y_t, t):
        seen.update(x_t=x_t, y_t=y_t, t=t)
        seen["out"] = forward(x_t, y_t, t)
        return seen["out"]

    monkeypatch.setattr(model, "forward", spy)
    loss, parts = joint_loss(model, scheduler, image, labels, BALANCE, 2, generator=torch.Generator().manual_seed(9))

    g = torch.Generator().manual_seed(9)   # documented draw order: t, image noise, label noise
    t = torch.randint(0, 1000, (2,), generator=g)
    noise_x, noise_y = torch.randn(image.shape, generator=g), torch.randn(2, CLASSES, 16, 16, generator=g)
    alpha_bar = scheduler.alphas_cumprod[t][:, None, None, None]
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], alpha_bar.sqrt() * image + (1 - alpha_bar).sqrt() * noise_x)
    torch.testing.assert_close(seen["y_t"], alpha_bar.sqrt() * BALANCE * signed_onehot(labels)
                               + (1 - alpha_bar).sqrt() * noise_y)
    x0_hat, logits = seen["out"]
    expected_x, expected_y = F.mse_loss(x0_hat, image), F.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected_x + expected_y)
    assert parts == pytest.approx({"image": expected_x.item(), "label": expected_y.item()})

    loss1, parts1 = joint_loss(model, scheduler, image, labels, BALANCE, 1, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected1 = F.mse_loss(model.forward_image(seen["x_t"], t), image)
    torch.testing.assert_close(loss1, expected1)
    assert parts1["label"] == 0.0


class Steps(Progress):
    def __init__(self):
        self.calls = []

    def step(self, done, total):
        self.calls.append((done, total))


def test_sample_pairs_feeds_eq21_estimates_to_ddim_and_is_reproducible(monkeypatch):
    model = tiny_model()
    for conv in model.image_to_label.modules():   # exercise the coupled path while sampling
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.data.normal_(0, 0.05)
    outputs, estimates = [], []
    forward, loop = model.forward, jointnet.reverse_diffusion

    def forward_spy(x_t, y_t, t):
        outputs.append((t, forward(x_t, y_t, t)))
        return outputs[-1][1]

    def loop_spy(model_fn, x, scheduler, *args, x0_hook, **kwargs):
        assert scheduler.config.prediction_type == "sample" and not scheduler.config.clip_sample
        assert not args and kwargs.get("eta", 0.0) == 0.0   # deterministic DDIM

        def hook_spy(x0, t, i):
            estimates.append((t, x0_hook(x0, t, i)))
            return estimates[-1][1]
        return loop(model_fn, x, scheduler, *args, x0_hook=hook_spy, **kwargs)

    monkeypatch.setattr(model, "forward", forward_spy)
    monkeypatch.setattr(jointnet, "reverse_diffusion", loop_spy)
    progress = Steps()
    pairs = sample_pairs(model, count=2, steps=3, seed=11, progress=progress)

    assert progress.calls == [(1, 3), (2, 3), (3, 3)]
    assert len(outputs) == len(estimates) == 3 and len({int(t) for t, _ in outputs}) == 3
    for (t_model, (x0_hat, logits)), (t_step, estimate) in zip(outputs, estimates):
        assert t_model == t_step
        assert torch.equal(estimate[:, :1], x0_hat.clamp(-1, 1))
        torch.testing.assert_close(estimate[:, 1:], (logits.softmax(dim=1) * 2 - 1) * BALANCE)
    assert torch.equal(pairs.logits, outputs[-1][1][1])

    assert pairs.images.shape == (2, 1, 16, 16) and pairs.images.abs().max() <= 1
    assert pairs.labels.shape == (2, 16, 16) and pairs.labels.dtype == torch.int64
    assert pairs.labels.min() >= 0 and pairs.labels.max() < CLASSES
    assert pairs.probabilities.shape == pairs.logits.shape == (2, CLASSES, 16, 16)
    torch.testing.assert_close(pairs.probabilities.sum(dim=1), torch.ones(2, 16, 16))
    assert torch.equal(pairs.labels, pairs.probabilities.argmax(dim=1))

    again = sample_pairs(model, count=2, steps=3, seed=11)
    assert torch.equal(again.images, pairs.images) and torch.equal(again.logits, pairs.logits)
    other = sample_pairs(model, count=2, steps=3, seed=12)
    assert not torch.allclose(other.images, pairs.images)
