"""core.diffusion: named schedules and the loss target of each prediction type."""
from __future__ import annotations

import math

import pytest
import torch

from core.diffusion.losses import diffusion_loss, diffusion_target
from core.diffusion.sampling import reverse_diffusion, sampling_scheduler
from core.diffusion.schedules import SCHEDULES, TIMESTEPS, schedule_config, training_scheduler


def test_named_schedules_have_the_papers_betas():
    linear = training_scheduler(schedule="linear").betas
    assert len(linear) == TIMESTEPS
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(2e-2)
    scaled = training_scheduler(schedule="scaled-linear").betas        # Stable Diffusion: sqrt-linear
    assert scaled[0].item() == pytest.approx(0.00085) and scaled[-1].item() == pytest.approx(0.012)
    assert scaled[TIMESTEPS // 2].sqrt().item() == pytest.approx((0.00085 ** 0.5 + 0.012 ** 0.5) / 2, rel=1e-3)
    cosine = training_scheduler(schedule="squared-cosine").alphas_cumprod  # Nichol & Dhariwal, s = 0.008
    f = lambda t: math.cos((t / TIMESTEPS + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cosine[499].item() == pytest.approx(f(500) / f(0), rel=1e-3)
    assert set(SCHEDULES) == {"linear", "squared-cosine", "scaled-linear"}
    with pytest.raises(ValueError, match="Unknown noise schedule 'cosine'"):
        schedule_config("cosine")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_the_loss_target_follows_the_schedulers_prediction_type(prediction):
    scheduler = training_scheduler(prediction)
    x0, noise, t = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    assert torch.allclose(diffusion_target(scheduler, x0, noise, t), expected, atol=1e-6)

    class Oracle(torch.nn.Module):      # outputs exactly the target of the noise draw diffusion_loss will make
        def forward(self, noisy, timesteps):
            generator = torch.Generator().manual_seed(0)
            drawn_t = torch.randint(0, TIMESTEPS, (x0.shape[0],), generator=generator)
            drawn_noise = torch.randn(x0.shape, generator=generator)
            return type("Out", (), {"sample": diffusion_target(scheduler, x0, drawn_noise, drawn_t)})()

    loss = diffusion_loss(Oracle(), scheduler, x0, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(0, abs=1e-10)


def _oracle(x0: torch.Tensor, scheduler, prediction: str):
    """A perfect model of a one-point data distribution: the output for x_t in the given prediction type."""
    def model_fn(x_t, t):
        a = scheduler.alphas_cumprod[t]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    return model_fn


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_an_x0_hook_that_changes_nothing_reproduces_the_diffusers_step(prediction, eta):
    model = torch.nn.Conv2d(2, 2, 3, padding=1)
    torch.manual_seed(0)
    start = torch.randn(2, 2, 8, 8)
    results, seen = [], []
    for hook in (None, lambda x0, t, i: seen.append(i) or x0):
        scheduler = sampling_scheduler("ddim", 10, prediction)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            results.append(reverse_diffusion(lambda x, t: model(x), start.clone(), scheduler, eta, generator,
                                             x0_hook=hook))
    assert seen == list(range(10))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("timesteps", [None, [999, 700, 400, 150, 30, 0]])
def test_a_perfect_model_is_recovered_on_uniform_and_explicit_timesteps(timesteps):
    x0 = torch.rand(1, 1, 4, 4) * 2 - 1
    scheduler = sampling_scheduler("ddim", 6, timesteps=timesteps)
    x = reverse_diffusion(_oracle(x0, scheduler, "epsilon"), torch.randn(1, 1, 4, 4), scheduler)
    assert torch.allclose(x, x0, atol=1e-4)
    if timesteps is not None:
        assert scheduler.timesteps.tolist() == timesteps


def test_the_x0_hook_steers_the_chain_and_the_last_step_ends_on_its_estimate():
    scheduler = sampling_scheduler("ddim", timesteps=[999, 500, 100, 7])
    target = torch.full((1, 1, 4, 4), 0.25)
    x = reverse_diffusion(lambda x, t: torch.zeros_like(x), torch.randn(1, 1, 4, 4), scheduler,
                          x0_hook=lambda x0, t, i: target)
    assert torch.allclose(x, target, atol=1e-6)


def test_samplers_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="sampler"):
        sampling_scheduler("euler")
    with pytest.raises(ValueError, match="strictly decrease"):
        sampling_scheduler("ddim", timesteps=[10, 10, 0])
    with pytest.raises(ValueError, match="DDIM"):
        reverse_diffusion(lambda x, t: x, torch.zeros(1, 1, 2, 2), sampling_scheduler("ddpm"),
                          x0_hook=lambda x0, t, i: x0)
