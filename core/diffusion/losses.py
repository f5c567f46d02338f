"""Losses shared by every diffusion trainer: the diffusion loss (MSE, or RDF-MIG's robust MCRD).

MCRD (maximum correntropy robust diffusion, RDF-MIG supplement Eqs. 13-16) replaces the squared error of the
epsilon prediction e = f_theta(x_t, t) - eps by a correntropy (Welsch) loss

    L = rho * mean(1 - exp(-e^2 / (2 sigma^2))),   rho = 2 sigma^2 (the "MSE-consistency calibration"),

whose gradient per element, rho / sigma^2 * exp(-e^2 / (2 sigma^2)) * e / N (Eq. 15), is MSE's 2 e / N for
|e| << sigma, peaks at |e| = sigma and vanishes beyond ~sqrt(3) sigma: a training pair whose noise cannot be
predicted at all (a mislabelled mask, a corrupted image) stops pulling the model. The kernel width follows
from the error range that must stay MSE-like (Eq. 16): 3 e_max^2 / (2 sigma^2) <= beta.

A trainer picks the loss by name (`diffusion_criterion`) and passes it to
`diffusion_loss(..., criterion=...)`; `MCRDLoss.to_dict()` goes into the model card.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LOSSES = ("mse", "mcrd")
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mcrd_sigma(e_max: float, beta: float) -> float:
    """The smallest kernel width allowed by Eq. 16, i.e. Eq. 16 with equality: sigma = e_max sqrt(3 / (2 beta)).

    Near e = 0 the slope of MCRD's gradient, 2 exp(-e^2/2sigma^2)(1 - e^2/sigma^2), is MSE's slope 2 times
    ~(1 - 3 e^2 / (2 sigma^2)): beta bounds that relative deviation over |e| <= e_max.
    """
    if e_max <= 0 or beta <= 0:
        raise ValueError(f"MCRD needs e_max > 0 and beta > 0, got e_max={e_max}, beta={beta}.")
    return e_max * math.sqrt(3 / (2 * beta))


@dataclass
class MCRDLoss:
    """Correntropy loss of a noise prediction, calibrated so that small errors train as with MSE.

    e_max: the error magnitude up to which the gradient must follow MSE's (the "fine-fitting" range of the
        paper). The target eps ~ N(0, 1), so errors of |e| up to ~3 are what ordinary training produces; the
        default 1.0 (one standard deviation of the target) covers where a fitted denoiser's residuals live.
    beta: allowed relative deviation of the gradient's slope from MSE's within |e| <= e_max (Eq. 16).

    With the defaults sigma = sqrt(7.5) ~ 2.74 and rho = 15: at |e| = 1 the gradient is 94% of MSE's, at
    |e| = 3 (the edge of what N(0, 1) produces) still 55%, so no ordinary sample is ignored; the influence
    peaks at |e| = sigma and fades beyond sqrt(3) sigma ~ 4.7 (1% of MSE's at |e| ~ 8.3), errors a standard
    normal target almost never produces (P(|eps| > 4.7) ~ 2e-6), i.e. data the model cannot explain.
    A smaller sigma (larger beta or smaller e_max) is more robust and slower to fit early, noisy steps.
    """
    e_max: float = 1.0
    beta: float = 0.2

    def __post_init__(self):
        mcrd_sigma(self.e_max, self.beta)   # validates the parameters early

    @property
    def sigma(self) -> float:
        return mcrd_sigma(self.e_max, self.beta)

    @property
    def rho(self) -> float:
        return 2 * self.sigma ** 2

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # At least float32 (also under autocast): exp of a half-precision square loses the small-error regime.
        dtype = torch.promote_types(prediction.dtype, torch.float32)
        e = prediction.to(dtype) - target.to(dtype)
        sigma = self.sigma
        # 1 - exp(-x) as -expm1(-x): exact for the tiny x of small errors, where 1 - exp(-x) cancels to 0.
        return self.rho * -torch.expm1(-e.square() / (2 * sigma ** 2)).mean()

    def to_dict(self) -> dict[str, float | str]:
        return {"name": "mcrd", "e_max": self.e_max, "beta": self.beta, "sigma": self.sigma, "rho": self.rho}


def diffusion_criterion(name: str, e_max: float | None = None, beta: float | None = None) -> Criterion:
    """criterion(prediction, target) -> scalar loss for `name` in LOSSES; e_max / beta (None: the defaults)
    only apply to "mcrd"."""
    if name == "mse":
        return F.mse_loss
    if name == "mcrd":
        defaults = MCRDLoss()
        return MCRDLoss(e_max=defaults.e_max if e_max is None else e_max,
                        beta=defaults.beta if beta is None else beta)
    raise ValueError(f"Unknown diffusion loss '{name}'; choose one of {', '.join(LOSSES)}.")


PREDICTION_TARGETS = ("epsilon", "v_prediction", "sample")   # diffusers' names for eps, v and x0 models


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What a model of the scheduler's prediction type should output for x_t = add_noise(x0, noise, t)."""
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TARGETS:
        raise ValueError(f"Unknown prediction type '{kind}'; expected one of {', '.join(PREDICTION_TARGETS)}.")
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return noise if kind == "epsilon" else x0


def diffusion_loss(model: torch.nn.Module, scheduler, x0: torch.Tensor, generator: torch.Generator | None = None,
                   criterion: Criterion = F.mse_loss) -> torch.Tensor:
    """The loss of an unconditional diffusers model at a timestep drawn uniformly from 0..T-1 for each sample,
    against the scheduler's prediction target: MSE, or any criterion(prediction, target) such as MCRD."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device,
                      generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    noisy = scheduler.add_noise(x0, noise, t)
    return criterion(model(noisy, t).sample, diffusion_target(scheduler, x0, noise, t))
