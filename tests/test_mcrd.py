"""MCRD loss (RDF-MIG supplement Eqs. 15-16): closed-form value and gradient, MSE consistency, robustness."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.diffusion.losses import LOSSES, MCRDLoss, diffusion_criterion, mcrd_sigma


def _closed_form_gradient(loss: MCRDLoss, e: torch.Tensor) -> torch.Tensor:
    """Eq. 15 per element with mean reduction: rho / sigma^2 * exp(-e^2 / (2 sigma^2)) * e / N."""
    sigma = loss.sigma
    return loss.rho / sigma ** 2 * torch.exp(-e ** 2 / (2 * sigma ** 2)) * e / e.numel()


def _gradient(criterion, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prediction = prediction.clone().requires_grad_(True)
    criterion(prediction, target).backward()
    return prediction.grad


@pytest.mark.parametrize("e_max, beta", [(1.0, 0.2), (0.5, 0.05), (3.0, 1.0), (0.1, 2.0)])
def test_sigma_meets_eq16_with_equality(e_max, beta):
    loss = MCRDLoss(e_max=e_max, beta=beta)
    assert loss.sigma == pytest.approx(mcrd_sigma(e_max, beta), rel=1e-15)
    assert 3 * e_max ** 2 / (2 * loss.sigma ** 2) == pytest.approx(beta, rel=1e-12)
    assert loss.rho == pytest.approx(2 * loss.sigma ** 2, rel=1e-15)


def test_defaults_and_card_entry():
    loss = MCRDLoss()
    assert loss.sigma == pytest.approx(math.sqrt(7.5))   # e_max 1, beta 0.2 (justified in the docstring)
    assert loss.to_dict() == {"name": "mcrd", "e_max": 1.0, "beta": 0.2, "sigma": loss.sigma, "rho": loss.rho}


@pytest.mark.parametrize("e_max, beta", [(0.0, 0.2), (1.0, 0.0), (-1.0, 0.5)])
def test_invalid_parameters_are_rejected(e_max, beta):
    with pytest.raises(ValueError, match="e_max > 0 and beta > 0"):
        MCRDLoss(e_max=e_max, beta=beta)


def test_value_equals_closed_form():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64) * 2
    target = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64)
    loss = MCRDLoss(e_max=0.7, beta=0.3)
    e = (prediction - target).numpy()
    sigma = 0.7 * math.sqrt(3 / 0.6)
    expected = 2 * sigma ** 2 * (1 - np.exp(-e ** 2 / (2 * sigma ** 2))).mean()
    assert float(loss(prediction, target)) == pytest.approx(expected, rel=1e-12)


def test_gradient_equals_closed_form():
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64) * 3
    target = torch.randn(2, 4, 6, 6, generator=generator, dtype=torch.float64)
    loss = MCRDLoss(e_max=0.5, beta=0.1)
    gradient = _gradient(loss, prediction, target)
    torch.testing.assert_close(gradient, _closed_form_gradient(loss, prediction - target), rtol=1e-9, atol=0)


def test_small_errors_train_like_mse():
    loss = MCRDLoss()
    generator = torch.Generator().manual_seed(2)
    target = torch.randn(1000, generator=generator, dtype=torch.float64)
    e = (torch.rand(1000, generator=generator, dtype=torch.float64) * 2 - 1) * 0.1 * loss.sigma   # |e| <= sigma/10
    mcrd = _gradient(loss, target + e, target)
    mse = _gradient(F.mse_loss, target + e, target)
    torch.testing.assert_close(mse, 2 * e / e.numel(), rtol=1e-9, atol=0)
    assert ((mcrd - mse).abs() / mse.abs()).max() < 0.01


def test_large_errors_have_no_influence():
    loss = MCRDLoss()
    target = torch.zeros(6)
    e = torch.tensor([-30.0, -15.0, -10.0, 10.0, 12.0, 40.0]) * loss.sigma   # |e| >= 10 sigma
    mcrd = _gradient(loss, target + e, target)
    mse = _gradient(F.mse_loss, target + e, target)
    assert (mcrd.abs() / mse.abs()).max() < 1e-6


def test_outliers_do_not_change_the_gradient_of_clean_errors():
    """A mislabelled sample among clean ones: MSE's gradient is dominated by it, MCRD's is not."""
    loss = MCRDLoss()
    target = torch.zeros(100)
    e = torch.linspace(-1, 1, 100)
    corrupted = e.clone()
    corrupted[0] = 50.0
    clean, with_outlier = _gradient(loss, target + e, target), _gradient(loss, target + corrupted, target)
    torch.testing.assert_close(with_outlier[1:], clean[1:])
    assert abs(float(with_outlier[0])) < 1e-12
    assert abs(float(_gradient(F.mse_loss, target + corrupted, target)[0])) > 50 * float(clean.abs().max())


def test_criterion_by_name():
    generator = torch.Generator().manual_seed(3)
    prediction, target = torch.randn(2, 3, 5, 5, generator=generator), torch.randn(2, 3, 5, 5, generator=generator)
    assert LOSSES == ("mse", "mcrd")
    mse = diffusion_criterion("mse")
    assert torch.equal(mse(prediction, target), F.mse_loss(prediction, target))
    mcrd = diffusion_criterion("mcrd", e_max=0.5, beta=0.1)
    assert isinstance(mcrd, MCRDLoss) and (mcrd.e_max, mcrd.beta) == (0.5, 0.1)
    assert diffusion_criterion("mcrd") == MCRDLoss()
    assert diffusion_criterion("mcrd", beta=0.4) == MCRDLoss(beta=0.4)
    with pytest.raises(ValueError, match="mse, mcrd"):
        diffusion_criterion("l1")


def test_half_precision_inputs_are_computed_in_float32():
    loss = MCRDLoss()
    prediction, target = torch.full((8,), 0.01, dtype=torch.float16), torch.zeros(8, dtype=torch.float16)
    value = loss(prediction, target)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(prediction[0]) ** 2, rel=1e-3)   # ~ e^2 (MSE) for |e| << sigma


def test_shared_diffusion_loss_accepts_mcrd():
    """Through core.synthesis.satsynth.diffusion_loss: with a very wide kernel MCRD is the MSE loss."""
    from core.diffusion.losses import diffusion_loss
    from core.diffusion.schedules import training_scheduler

    class Denoiser(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t):
            return type("Output", (), {"sample": self.conv(x)})()

    torch.manual_seed(0)
    model, scheduler = Denoiser(), training_scheduler()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1

    def loss(criterion):
        return diffusion_loss(model, scheduler, x0, torch.Generator().manual_seed(4), criterion=criterion)

    mse, wide = loss(diffusion_criterion("mse")), loss(diffusion_criterion("mcrd", e_max=1000.0, beta=0.5))
    assert float(wide.detach()) == pytest.approx(float(mse.detach()), rel=1e-5)
    loss(diffusion_criterion("mcrd")).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- MCRD in every diffusion trainer -----------------------------------------------------------------

class _Recording:
    """A criterion that records its calls and delegates to MCRD."""

    def __init__(self):
        self.calls, self.mcrd = 0, MCRDLoss()

    def __call__(self, prediction, target):
        self.calls += 1
        return self.mcrd(prediction, target)


def test_sar_jointnet_and_idgbr_losses_take_the_criterion():
    from core.oilspill import jointnet
    from core.refinement.model import architecture_for as idgbr_architecture
    from core.refinement.model import build_model, noise_scheduler, training_loss
    net = jointnet.build_jointnet(jointnet.architecture_for("small", 3, 0.5))
    image, labels = torch.rand(1, 1, 64, 64) * 2 - 1, torch.randint(0, 3, (1, 64, 64))
    recording = _Recording()
    for stage in (1, 2):
        jointnet.joint_loss(net, jointnet.training_scheduler(), image, labels, 0.5, stage, criterion=recording)
    assert recording.calls == 2
    model = build_model(idgbr_architecture("small", 3))
    recording = _Recording()
    labels = labels[:, :32, :32]
    out = training_loss(model, noise_scheduler(), torch.rand(1, 3, 32, 32) * 2 - 1, labels, labels,
                        criterion=recording)
    assert recording.calls == 1 and torch.isfinite(out["loss"])


@pytest.mark.parametrize("trainer", ["satsynth", "fusion-prior"])
def test_epsilon_trainers_record_mcrd_in_the_card(tmp_path, trainer):
    from core.checkpoint import load_card
    if trainer == "satsynth":
        from core.data.scenes import write_scene_dataset
        from training.satsynth import SatSynthTrainConfig, train_satsynth
        data = write_scene_dataset(tmp_path / "data", count=2, size=32, seed=1)
        model = train_satsynth(SatSynthTrainConfig(data=str(data), output=str(tmp_path / "run"), patch_size=32,
                                                   batch_size=2, samples_per_image=1, steps=1, val_every=1000,
                                                   checkpoint_every=1000, device="cpu", loss="mcrd", mcrd_beta=0.5))
    else:
        from core.data.irvis import write_irvis_dataset
        from training.fusion import FusionPriorTrainConfig, train_fusion_prior
        data = write_irvis_dataset(tmp_path / "data", count=1, size=32, seed=1)
        model = train_fusion_prior(FusionPriorTrainConfig(data=str(data), output=str(tmp_path / "run"), patch_size=32,
                                                          batch_size=2, samples_per_image=1, steps=1, val_every=0,
                                                          checkpoint_every=1000, device="cpu", loss="mcrd",
                                                          mcrd_beta=0.5))
    card = load_card(model)
    assert card.extra["loss"] == "mcrd" and card.extra["mcrd"]["beta"] == 0.5
    assert card.extra["mcrd"]["sigma"] == pytest.approx(mcrd_sigma(1.0, 0.5))
