"""The fusion prior: an unconditional pixel-space diffusion UNet (diffusers UNet2DModel).

Dig2DIG and DDFM need no training for fusion: any unconditional image prior with the linear
1e-4..0.02, T = 1000 noise schedule works. Three kinds of folder load here, all strictly (a
missing or mismatching weight is an error, never a silent random prior):
- our own: model.json (task "fusion-prior") + model.safetensors (`python -m training fusion-prior`);
- a converted guided-diffusion checkpoint (`python -m training convert-guided-diffusion`): a
  diffusers folder plus our model.json;
- a plain diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors).
A prior with learned variance (guided-diffusion's 6 output channels) gives epsilon in its first
3 channels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from core.checkpoint import CARD_NAME, WEIGHTS_NAME, ModelCard, ModelError, Normalization, load_card, load_into

TASK = "fusion-prior"
DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS = "config.json", "diffusion_pytorch_model.safetensors"
PRESETS: dict[str, dict[str, Any]] = {
    # CPU starter: fully convolutional (no attention), so it runs at any size; 2.6M parameters, narrow at
    # full resolution (one 256 x 256 forward ~0.3 s on one CPU thread).
    "small": {"block_out_channels": [16, 32, 64, 128], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4, "norm_num_groups": 8,
              "resnet_time_scale_shift": "scale_shift"},
}


def architecture_for(preset: str, sample_size: int, channels: int = 3) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"Unknown fusion-prior preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    return {"preset": preset, "learned_sigma": False,
            "unet": dict(PRESETS[preset], sample_size=sample_size, in_channels=channels, out_channels=channels)}


class FusionPrior(torch.nn.Module):
    """eps_theta(x_t, t) of an unconditional prior, whatever its output layout."""

    def __init__(self, unet: UNet2DModel, card: ModelCard):
        super().__init__()
        self.unet, self.card = unet, card
        self.channels = unet.config.in_channels

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (one halving per down block that downsamples)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample[:, :self.channels]

    def describe(self) -> str:
        params = sum(p.numel() for p in self.parameters()) / 1e6
        return f"'{self.card.name}' ({params:.1f}M parameters, {self.channels} channel(s))"


def load_prior(model_dir: str | Path) -> FusionPrior:
    """Load any of the three folder kinds described above."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"Fusion prior '{model_dir}' is not a folder.")
    if (folder / CARD_NAME).is_file():
        card = load_card(folder, task=TASK)
        unet = UNet2DModel(**card.architecture["unet"])
        if (folder / WEIGHTS_NAME).is_file():
            return FusionPrior(load_into(unet, folder), card)
        return FusionPrior(_load_diffusers_weights(unet, folder), card)
    if not (folder / DIFFUSERS_CONFIG).is_file():
        raise ModelError(f"'{model_dir}' is neither a fusion-prior model folder ({CARD_NAME}) nor a diffusers "
                         f"UNet2DModel folder ({DIFFUSERS_CONFIG}).")
    config = json.loads((folder / DIFFUSERS_CONFIG).read_text(encoding="utf-8"))
    if config.get("_class_name") != "UNet2DModel":
        raise ModelError(f"'{model_dir}' holds a diffusers '{config.get('_class_name')}', not a UNet2DModel.")
    unet = _load_diffusers_weights(UNet2DModel.from_config(config), folder)
    channels = unet.config.in_channels
    card = ModelCard(task=TASK, name=folder.name, architecture={"unet": dict(unet.config)},
                     bands=["red", "green", "blue"][:channels] if channels == 3 else ["gray"] * channels,
                     normalization=Normalization([0.5] * channels, [0.5] * channels),
                     tile_size=unet.config.sample_size or 256, training_data="diffusers folder")
    return FusionPrior(unet, card)


def _load_diffusers_weights(unet: UNet2DModel, folder: Path) -> UNet2DModel:
    path = folder / DIFFUSERS_WEIGHTS
    if not path.is_file():
        bin_files = ", ".join(p.name for p in folder.glob("*.bin"))
        hint = f" ({bin_files} is a pickle: convert it to safetensors first)" if bin_files else ""
        raise ModelError(f"Fusion prior '{folder}': weights file {DIFFUSERS_WEIGHTS} not found{hint}.")
    from safetensors.torch import load_file
    try:
        unet.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"Weights in {path} do not match the UNet in {folder}: {str(exc).splitlines()[0]}") from exc
    return unet
