"""What the small autoencoders we fit for latent diffusion share (IDGBR's, RDF-MIG's latent variant):
the loss and the latent scaling factor, set after training as Stable Diffusion's is."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

SCALING_BATCHES = 8     # batches of latents whose std sets the VAE's scaling factor


def autoencoder_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """L1 + MSE reconstruction plus a small per-element KL: the latents stay informative, their scale is set
    afterwards by latent_scaling_factor."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    return F.l1_loss(recon, x) + F.mse_loss(recon, x) + kl_weight * kl


def loss_description(kl_weight: float) -> str:
    return f"L1 + MSE + {kl_weight:g} x per-element KL"


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, inputs: Iterable[torch.Tensor]) -> float:
    """1 / std of the latents (mode) of the first SCALING_BATCHES batches of autoencoder inputs."""
    latents = [vae.encode(x).latent_dist.mode().flatten() for _, x in zip(range(SCALING_BATCHES), inputs)]
    return 1.0 / torch.cat(latents).std().item()
