"""core.diffusion: named schedules and the loss target of each prediction type."""
from __future__ import annotations

import math

import pytest
import torch

from core.diffusion.losses import diffusion_loss, diffusion_target
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
