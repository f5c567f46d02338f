"""RDF-MIG: one DDPM over a bi-temporal image pair and its change mask.

With the FCF module (the supplement's design) the diffusion model sees a 3-channel "feature
image" [fcf(A), fcf(B), 2 mask - 1]: a learned per-image reduction of each date to one channel
(k channels with an FCF of k code channels: 2 k + 1), whose decoder restores all bands (RGB or
RGB+NIR) after sampling. The ablation ("concat") is the
plain (2 C + 1)-channel concatenation [A, B, 2 mask - 1]. The denoiser is a diffusers
UNet2DModel predicting epsilon with the linear 1e-4..0.02, T = 1000 schedule; its loss is MSE
or the robust MCRD (core.diffusion.losses), which down-weights the large errors mislabelled masks cause.
The latent variant (the supplement's 512 px LDM; core.change.latent) runs the same denoiser on
an AutoencoderKL's latents of the feature image instead of its pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DModel
from torch import nn

from core.change.fcf import FCF, concat_image, feature_image, split_concat_image, split_feature_image
from core.checkpoint import ModelCard, load_card, load_into
from core.latents import decode_latents, encode_latents, vae_factor
from core.progress import Progress
from core.diffusion.presets import PIXEL_UNET_PRESETS
from core.diffusion.sampling import DDIM_ETA, denoise

TASK = "rdfmig"
REPRESENTATIONS = ("fcf", "concat")


def architecture_for(preset: str, representation: str, bands: int, vae: AutoencoderKL | None = None,
                     patch_size: int | None = None, code_channels: int = 1) -> dict[str, Any]:
    """SatSynth's UNet presets ('paper' 128 px, 'small' 64 px) on the joint change image, or with `vae` on
    the latents of the feature image of `patch_size` px tiles (its config, scaling included, goes in the card).
    `code_channels`: the FCF's channels per date."""
    if preset not in PIXEL_UNET_PRESETS:
        raise ValueError(f"Unknown RDF-MIG preset '{preset}'; choose one of {', '.join(PIXEL_UNET_PRESETS)}.")
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation '{representation}'; choose one of {', '.join(REPRESENTATIONS)}.")
    channels = 2 * code_channels + 1 if representation == "fcf" else 2 * bands + 1
    unet = dict(PIXEL_UNET_PRESETS[preset], in_channels=channels, out_channels=channels)
    architecture = {"preset": preset, "representation": representation, "bands": bands, "unet": unet}
    if vae is not None:
        if representation != "fcf":
            raise ValueError("The latent variant encodes the 3-channel FCF feature image; use representation 'fcf'.")
        if code_channels != 1:
            raise ValueError(f"The latent variant's autoencoder takes the 3-channel feature image of an FCF with one "
                             f"code channel per date; this FCF has {code_channels}. Use a 1-channel FCF "
                             f"(code_channels = 1) or the pixel model (no vae).")
        factor = vae_factor(vae)
        if not patch_size or patch_size % factor:
            raise ValueError(f"Patch size {patch_size} px is not a multiple of {factor} (the autoencoder's factor).")
        latent = vae.config.latent_channels
        unet.update(in_channels=latent, out_channels=latent, sample_size=patch_size // factor)
        architecture["vae"] = {k: v for k, v in vae.config.items() if not k.startswith("_")}   # no paths
    return architecture


def build_denoiser(architecture: dict[str, Any]) -> UNet2DModel:
    return UNet2DModel(**architecture["unet"])


def joint_image(architecture: dict[str, Any], fcf: FCF | None, a: torch.Tensor, b: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Dates A and B in [-1, 1] (B, C, H, W) and a 0/1 change mask (B, H, W) -> the joint image in [-1, 1]."""
    mask = mask.float()[:, None]
    if architecture["representation"] == "fcf":
        return feature_image(fcf, a, b, mask)
    return concat_image(a, b, mask)


@dataclass
class ChangeTriplets:
    a: torch.Tensor      # (B, C, H, W) in [-1, 1]
    b: torch.Tensor
    mask: torch.Tensor   # (B, H, W) 0 / 1


class RdfmigModel(nn.Module):
    """Everything generation needs, stored in one folder as denoiser.*, fcf.* and (latent variant) vae.*:
    the denoiser, the frozen FCF whose decoder restores the bands, and the frozen autoencoder."""

    def __init__(self, architecture: dict[str, Any], denoiser: UNet2DModel, fcf: FCF | None = None,
                 vae: AutoencoderKL | None = None):
        super().__init__()
        self.architecture, self.denoiser, self.fcf, self.vae = architecture, denoiser, fcf, vae

    @property
    def pixel_factor(self) -> int:
        """Pixels per denoiser sample along each axis (1 in pixel space)."""
        return vae_factor(self.vae) if self.vae is not None else 1

    @torch.no_grad()
    def target(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The diffusion model's x0: the joint image, or its latents in the latent variant."""
        x = joint_image(self.architecture, self.fcf, a, b, mask)
        return encode_latents(self.vae, x) if self.vae is not None else x

    @torch.inference_mode()
    def sample(self, count: int, steps: int = 50, seed: int = 0, size: int | None = None,
               progress: Progress | None = None, eta: float = DDIM_ETA) -> ChangeTriplets:
        """Generate `count` (A, B, mask) triplets of `size` px with DDIM-`steps`; FCF's decoder restores the bands."""
        factor = self.pixel_factor
        size = size or self.architecture["unet"]["sample_size"] * factor
        if size % factor:
            raise ValueError(f"Size {size} px is not a multiple of {factor} (the autoencoder's factor).")
        shape = (count, self.architecture["unet"]["in_channels"], size // factor, size // factor)
        x = denoise(self.denoiser, shape, "ddim", steps, seed, progress, eta, clip=self.vae is None)
        if self.vae is not None:
            device = next(self.vae.parameters()).device
            x = torch.cat([decode_latents(self.vae, z[None].to(device)) for z in x]).clamp(-1, 1).cpu()
        if self.fcf is not None:
            a, b, mask = split_feature_image(self.fcf.cpu().eval(), x)
        else:
            a, b, mask = split_concat_image(x)
        return ChangeTriplets(a.clamp(-1, 1), b.clamp(-1, 1), mask.reshape(count, size, size).long())


def load_rdfmig(model_dir: str) -> tuple[RdfmigModel, ModelCard]:
    """A trained RDF-MIG folder: denoiser, FCF (FCF representation) and autoencoder (latent variant)."""
    card = load_card(model_dir, task=TASK)
    architecture = card.architecture
    fcf = FCF(**card.extra["fcf_architecture"]) if architecture["representation"] == "fcf" else None
    vae = AutoencoderKL.from_config(architecture["vae"]) if "vae" in architecture else None
    return load_into(RdfmigModel(architecture, build_denoiser(architecture), fcf, vae), model_dir).eval(), card
