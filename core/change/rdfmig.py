"""RDF-MIG: one pixel-space DDPM over a bi-temporal image pair and its change mask.

With the FCF module (the supplement's design) the diffusion model sees a 3-channel "feature
image" [fcf(A), fcf(B), 2 mask - 1]: a learned per-image reduction of each date to one channel,
whose decoder restores all bands (RGB or RGB+NIR) after sampling. The ablation ("concat") is the
plain (2 C + 1)-channel concatenation [A, B, 2 mask - 1]. The denoiser is a diffusers
UNet2DModel predicting epsilon with the linear 1e-4..0.02, T = 1000 schedule; its loss is MSE
or the robust MCRD (core.losses), which down-weights the large errors mislabelled masks cause.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DModel

from core.change.fcf import FCF, concat_image, feature_image, split_concat_image, split_feature_image
from core.checkpoint import ModelCard
from core.progress import Progress
from core.synthesis.satsynth import DDIM_ETA, PRESETS, denoise

TASK = "rdfmig"
REPRESENTATIONS = ("fcf", "concat")


def architecture_for(preset: str, representation: str, bands: int) -> dict[str, Any]:
    """SatSynth's UNet presets ('paper' 128 px, 'small' 64 px) on the joint change image."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown RDF-MIG preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation '{representation}'; choose one of {', '.join(REPRESENTATIONS)}.")
    channels = 3 if representation == "fcf" else 2 * bands + 1
    return {"preset": preset, "representation": representation, "bands": bands,
            "unet": dict(PRESETS[preset], in_channels=channels, out_channels=channels)}


def build_denoiser(architecture: dict[str, Any]) -> UNet2DModel:
    return UNet2DModel(**architecture["unet"])


def joint_image(architecture: dict[str, Any], fcf: FCF | None, a: torch.Tensor, b: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Dates A and B in [-1, 1] (B, C, H, W) and a 0/1 change mask (B, H, W) -> the diffusion model's x0."""
    mask = mask.float()[:, None]
    if architecture["representation"] == "fcf":
        return feature_image(fcf, a, b, mask)
    return concat_image(a, b, mask)


@dataclass
class ChangeTriplets:
    a: torch.Tensor      # (B, C, H, W) in [-1, 1]
    b: torch.Tensor
    mask: torch.Tensor   # (B, H, W) 0 / 1


@torch.inference_mode()
def sample_triplets(model: UNet2DModel, architecture: dict[str, Any], fcf: FCF | None, count: int, steps: int = 50,
                    seed: int = 0, size: int | None = None, progress: Progress | None = None,
                    eta: float = DDIM_ETA) -> ChangeTriplets:
    """Generate `count` (A, B, mask) triplets with DDIM-`steps`; FCF's decoder restores every band."""
    size = size or architecture["unet"]["sample_size"]
    x = denoise(model, (count, architecture["unet"]["in_channels"], size, size), "ddim", steps, seed, progress, eta)
    if architecture["representation"] == "fcf":
        fcf = fcf.cpu().eval()
        a, b, mask = split_feature_image(fcf, x)
    else:
        a, b, mask = split_concat_image(x)
    return ChangeTriplets(a.clamp(-1, 1), b.clamp(-1, 1), mask.reshape(count, size, size).long())


def load_rdfmig(model_dir: str) -> tuple[UNet2DModel, FCF | None, ModelCard]:
    """The denoiser and (FCF representation) the FCF it was trained with, from one model folder."""
    from core.checkpoint import ModelError, load_card, load_weights
    card = load_card(model_dir, task=TASK)
    denoiser = build_denoiser(card.architecture)
    fcf = FCF(**card.extra["fcf_architecture"]) if card.architecture["representation"] == "fcf" else None
    state = load_weights(model_dir)
    try:
        denoiser.load_state_dict({k[len("denoiser."):]: v for k, v in state.items() if k.startswith("denoiser.")})
        if fcf is not None:
            fcf.load_state_dict({k[len("fcf."):]: v for k, v in state.items() if k.startswith("fcf.")})
    except RuntimeError as exc:
        raise ModelError(f"Weights in {model_dir} do not match the architecture in its card: "
                         f"{str(exc).splitlines()[0]}") from exc
    return denoiser.eval(), fcf, card
