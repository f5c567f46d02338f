"""SatSynth: one pixel-space DDPM over the image and its label map together.

The joint tensor is [image scaled to [-1, 1], analog bits of the labels] ((bands + n_bits)
channels); the denoiser is a diffusers UNet2DModel predicting epsilon, with the paper's
linear beta schedule (1e-4 .. 2e-2, T = 1000). Sampling uses DDPM (the paper's 1000
ancestral steps) or DDIM-N (the fast path; stochastic, eta = 1, by default: see
core.diffusion.sampling.DDIM_ETA). Schedule, loss and sampler live in core.diffusion.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from core.data.generated import GeneratedPairs
from core.diffusion.losses import diffusion_target
from core.diffusion.presets import PIXEL_UNET_PRESETS
from core.device import FastForward
from core.diffusion.sampling import DDIM_ETA, denoise, reverse_diffusion, sampling_scheduler, unet_sample
from core.diffusion.schedules import training_scheduler
from core.encodings import bit_class_probabilities, decode_bits, encode_bits, n_bits
from core.progress import Progress

TASK = "satsynth"


def architecture_for(preset: str, bands: int, n_classes: int) -> dict[str, Any]:
    if preset not in PIXEL_UNET_PRESETS:
        raise ValueError(f"Unknown SatSynth preset '{preset}'; choose one of {', '.join(PIXEL_UNET_PRESETS)}.")
    channels = bands + n_bits(n_classes)
    return {"preset": preset, "bands": bands, "classes": n_classes,
            "unet": dict(PIXEL_UNET_PRESETS[preset], in_channels=channels, out_channels=channels)}


def prediction_type(architecture: dict[str, Any]) -> str:
    """What the denoiser predicts; cards written before the key existed are epsilon models."""
    return architecture.get("prediction", "epsilon")


class JointDenoiser(UNet2DModel):
    """The diffusers UNet over the joint tensor, carrying the rest of its architecture (bands, classes,
    prediction type) as it carries its UNet config, so sampling needs nothing beside it. Same weights as
    the plain UNet2DModel."""

    def __init__(self, architecture: dict[str, Any]):
        super().__init__(**architecture["unet"])
        self.architecture = architecture


def build_denoiser(architecture: dict[str, Any]) -> JointDenoiser:
    return JointDenoiser(architecture)


def joint_tensor(image01: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, bands, H, W) image in [0, 1] + (B, H, W) class indices -> (B, bands + n_bits, H, W) in [-1, 1]."""
    return torch.cat([image01 * 2 - 1, encode_bits(labels, n_classes).to(image01)], dim=1)


@torch.inference_mode()
def sample(model: JointDenoiser, count: int, sampler: str = "ddim", steps: int = 50, seed: int = 0,
           size: int | None = None, progress: Progress | None = None, eta: float = DDIM_ETA) -> GeneratedPairs:
    """Generate `count` image/label pairs; DDPM always runs all T steps (the paper's sampler), `eta` is DDIM's."""
    architecture = model.architecture
    size = size or architecture["unet"]["sample_size"]
    x = denoise(model, (count, architecture["unet"]["in_channels"], size, size), sampler, steps, seed, progress, eta)
    bands, k = architecture["bands"], architecture["classes"]
    bits = x[:, bands:]
    return GeneratedPairs(images=(x[:, :bands] + 1) / 2, labels=decode_bits(bits, k),
                          probabilities=bit_class_probabilities(bits, k))


# --- x2 super-resolution stage ----------------------------------------------------------------------
SR_TASK = "satsynth-sr"
SR_CONDITION_NOISE = 100   # training corrupts the condition at a level drawn from 0..this (cascaded DDPM)
SR_SAMPLING_NOISE = 50     # ... and sampling conditions on that fixed level
# The x2 stage predicts v, not epsilon: with epsilon a small model ignored its condition at high noise
# (from pure noise it reached MSE 0.075 to the truth where plain bilinear upsampling gives 0.0008), because
# at t ~ T epsilon is almost the input and the loss never asks for the condition. v = sqrt(a) eps - sqrt(1-a) x0
# is mostly x0 there, so the condition is needed at every t. The paper's eps-vs-x0 ablation is about the base.
SR_PREDICTION = "v_prediction"


def sr_architecture_for(preset: str, bands: int, n_classes: int) -> dict[str, Any]:
    """Same UNet family at twice the size; input = noisy high-res pair + upsampled low-res pair.

    Without self-attention (as the SR stages of cascaded diffusion): the model is fully
    convolutional, so it trains on crops and runs on any size.
    """
    arch = dict(architecture_for(preset, bands, n_classes), prediction=SR_PREDICTION)
    unet = arch["unet"]
    channels = unet["in_channels"]
    unet.update(in_channels=2 * channels, out_channels=channels, sample_size=2 * unet["sample_size"],
                down_block_types=[b.replace("Attn", "") for b in unet["down_block_types"]],
                up_block_types=[b.replace("Attn", "") for b in unet["up_block_types"]])
    return arch


def downsample_pair(image01: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's low-res training inputs: area for the image, nearest for the labels."""
    return F.avg_pool2d(image01, 2), labels[..., ::2, ::2]


def upsample_joint(low: torch.Tensor, bands: int) -> torch.Tensor:
    """Low-res joint tensor -> 2x: bilinear for the image, nearest for the bits (kept at +-1)."""
    image = F.interpolate(low[:, :bands], scale_factor=2, mode="bilinear", align_corners=False)
    bits = F.interpolate(low[:, bands:], scale_factor=2, mode="nearest")
    return torch.cat([image, bits], dim=1)


def _noisy_condition(scheduler, condition: torch.Tensor, levels: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(condition.shape, device=condition.device, generator=generator)
    return torch.where(levels[:, None, None, None] > 0, scheduler.add_noise(condition, noise, levels), condition)


def sr_loss(model: torch.nn.Module, scheduler: DDPMScheduler, x0_high: torch.Tensor, low: torch.Tensor, bands: int,
            generator: torch.Generator | None = None, criterion=F.mse_loss) -> torch.Tensor:
    """MSE of the scheduler's prediction target (v for our x2 stage) for the high-res pair, given the
    (noise-augmented) upsampled low-res pair."""
    levels = torch.randint(0, SR_CONDITION_NOISE + 1, (low.shape[0],), device=low.device, generator=generator)
    condition = _noisy_condition(scheduler, upsample_joint(low, bands), levels, generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0_high.shape[0],), device=x0_high.device,
                      generator=generator)
    noise = torch.randn(x0_high.shape, device=x0_high.device, generator=generator)
    noisy = scheduler.add_noise(x0_high, noise, t)
    prediction = model(torch.cat([noisy, condition], dim=1), t).sample
    return criterion(prediction, diffusion_target(scheduler, x0_high, noise, t))


@torch.inference_mode()
def super_resolve(model: JointDenoiser, low: GeneratedPairs, steps: int = 50, seed: int = 0,
                  progress: Progress | None = None) -> GeneratedPairs:
    """2x image/label pairs from base-model pairs (DDIM-N), with a model of `sr_architecture_for`."""
    architecture = model.architecture
    scheduler = sampling_scheduler("ddim", steps, prediction_type(architecture))
    bands, k = architecture["bands"], architecture["classes"]
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    low_joint = joint_tensor(low.images, low.labels, k)
    levels = torch.full((low_joint.shape[0],), SR_SAMPLING_NOISE)
    condition = _noisy_condition(training_scheduler(), upsample_joint(low_joint, bands), levels, generator).to(device)
    x = torch.randn(condition.shape[0], architecture["unet"]["out_channels"], *condition.shape[-2:],
                    generator=generator).to(device)
    model.eval()
    net = FastForward(model, unet_sample, len(scheduler.timesteps), progress)
    x = reverse_diffusion(lambda x_t, t: net(torch.cat([x_t, condition], dim=1), t), x, scheduler, progress=progress)
    x = x.clamp(-1, 1).cpu()
    bits = x[:, bands:]
    return GeneratedPairs(images=(x[:, :bands] + 1) / 2, labels=decode_bits(bits, k),
                          probabilities=bit_class_probabilities(bits, k))
