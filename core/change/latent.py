"""RDF-MIG's latent variant (the supplement's 512 px LDM): the 3-channel FCF feature image through an AutoencoderKL.

The supplement fine-tunes a pretrained LDM at 512 px; no such weights may be downloaded here, so
the denoiser is ours, trained on the latents, and the autoencoder comes from a local Stable
Diffusion diffusers folder when the user has one (its vae/), or is a small AutoencoderKL we train
on the feature images (`python -m training change-vae`). The VAE's config and weights are copied
into the RDF-MIG model folder, so a trained model needs nothing else at sampling time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL

from core.checkpoint import ModelError, load_card, load_into

VAE_TASK = "change-vae"
# SD's 8x reduction (512 px -> 64 px latents, 4 channels) at a CPU-trainable width.
SMALL_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 16, "sample_size": 512, "scaling_factor": 1.0}


def load_vae(source: str | Path) -> tuple[AutoencoderKL, str]:
    """A local autoencoder and how the card names it: a `change-vae` model folder of ours, a Stable
    Diffusion diffusers folder (its vae/ subfolder) or a bare diffusers AutoencoderKL folder."""
    folder = Path(source)
    if (folder / "model.json").is_file():
        card = load_card(folder, task=VAE_TASK)
        vae = load_into(AutoencoderKL.from_config(card.architecture["vae"]), folder)
        return _three_channels(vae, folder), f"{card.name} ({folder.name}, trained by change-vae)"
    for sub in ("vae", ""):
        config = folder / sub / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL":
            vae = AutoencoderKL.from_pretrained(folder / sub, local_files_only=True, low_cpu_mem_usage=False)
            name = f"AutoencoderKL of the local folder {folder.name}{'/vae' if sub else ''}"
            return _three_channels(vae, folder), name
    raise ModelError(f"'{folder}' holds no autoencoder: expected a change-vae model folder (model.json), a Stable "
                     f"Diffusion diffusers folder with vae/config.json, or an AutoencoderKL folder with config.json.")


def _three_channels(vae: AutoencoderKL, folder: Path) -> AutoencoderKL:
    """The feature image has three channels: the autoencoder must take and give three."""
    config = vae.config
    if config.in_channels != 3 or config.out_channels != 3:
        raise ModelError(f"The autoencoder in '{folder}' maps {config.in_channels} -> {config.out_channels} channels; "
                         f"the latent variant encodes the 3-channel FCF feature image, so it needs 3 -> 3.")
    return vae
