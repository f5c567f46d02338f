"""UNet2DModel sizes for pixel-space joint diffusion (SatSynth, RDF-MIG): the method adds the channels."""
from __future__ import annotations

from typing import Any

PIXEL_UNET_PRESETS: dict[str, dict[str, Any]] = {
    # SatSynth's 128 px denoiser: channels 128, 256, 256, 512, attention at 16 px.
    "paper": {"sample_size": 128, "block_out_channels": [128, 256, 256, 512], "layers_per_block": 2,
              "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
              "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]},
    # Trainable on a CPU in minutes: the starter models.
    "small": {"sample_size": 64, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
              "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], "norm_num_groups": 8},
}
