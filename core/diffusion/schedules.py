"""Noise schedules by name, T = 1000, as diffusers schedulers.

- "linear": betas 1e-4 .. 2e-2 (DDPM; SatSynth, RDF-MIG, the fusion priors and DDFM / Dig2DIG, whose
  guided-diffusion prior was trained with it);
- "squared-cosine": Nichol & Dhariwal's cosine alphas (diffusers' squaredcos_cap_v2; SAR-JointNet);
- "scaled-linear": Stable Diffusion's sqrt-linear betas 8.5e-4 .. 1.2e-2 (IDGBR, on SD's latents).
"""
from __future__ import annotations

from typing import Any

from diffusers import DDPMScheduler

TIMESTEPS = 1000
SCHEDULES: dict[str, dict[str, Any]] = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2},
    "squared-cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "scaled-linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


def schedule_config(schedule: str = "linear") -> dict[str, Any]:
    """Keyword arguments of any diffusers scheduler for the named schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown noise schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}.")
    return dict(SCHEDULES[schedule], num_train_timesteps=TIMESTEPS)


def training_scheduler(prediction_type: str = "epsilon", schedule: str = "linear", **options) -> DDPMScheduler:
    """The DDPM scheduler of a named schedule: add_noise for training, the alphas for samplers."""
    return DDPMScheduler(**schedule_config(schedule), prediction_type=prediction_type, **options)
