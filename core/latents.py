"""Latent-diffusion helpers shared by IDGBR and RDF-MIG's latent variant: diffusers' AutoencoderKL
with its scaling (and optional shift) factor, as Stable Diffusion applies them."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def vae_factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent covers along each axis."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_latents(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> scaled latents (the posterior's mode: deterministic conditions and targets)."""
    config = vae.config
    return (vae.encode(x).latent_dist.mode() - (config.shift_factor or 0.0)) * config.scaling_factor


def decode_latents(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    config = vae.config
    return vae.decode(z / config.scaling_factor + (config.shift_factor or 0.0)).sample
