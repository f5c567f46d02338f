"""What a joint image + label generator hands back (SatSynth, SAR-JointNet), before it is written to a folder."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GeneratedPairs:
    images: torch.Tensor         # (B, bands, H, W) in [0, 1]
    labels: torch.Tensor         # (B, H, W) class indices, always < K
    probabilities: torch.Tensor  # (B, K, H, W) soft labels
