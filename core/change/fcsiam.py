"""FC-Siam-conc (Daudt, Le Saux, Boulch, ICIP 2018), compact: a siamese fully convolutional change detector.

One encoder (shared weights) reads both dates: four levels of 3x3 conv-BN-ReLU-dropout (2, 2, 3, 3 convs,
16/32/64/128 channels in the paper) each followed by a 2x2 max-pool. The decoder climbs back with
3x3 stride-2 transposed convolutions; at every level its input is concat(upsampled, skip_A, skip_B)
followed by the level's convolutions (3, 3, 2, 2 from the bottom; the last one outputs the two
class logits). Two readings of ours:
- the reference code feeds only the second date's bottleneck to the first transposed conv (its
  variable is overwritten by the second pass); we feed concat(bottleneck_A, bottleneck_B), so both
  dates are treated alike and swapping them only swaps concatenated channels;
- both dates go through the encoder as one batch (BatchNorm statistics in training mode are over
  both dates; the reference runs two passes). In eval mode the two are identical.
Inputs whose sides are not multiples of MULTIPLE are replicate-padded and the logits cropped back.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TASK = "changedet"
CLASSES = 2                 # 0 no change, 1 change
MULTIPLE = 16               # four 2x2 max-pools: sides that are multiples of 16 need no padding
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"channels": [16, 32, 64, 128], "convs": [2, 2, 3, 3], "dropout": 0.2},   # 1.7 M parameters
    "small": {"channels": [8, 16, 32, 64], "convs": [2, 2, 3, 3], "dropout": 0.2},     # CPU starters, 0.42 M
}


def architecture_for(preset: str, bands: int) -> dict[str, Any]:
    """The JSON-able architecture stored in the model card."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown FC-Siam-conc preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if bands < 1:
        raise ValueError(f"FC-Siam-conc needs at least one band per date, not {bands}.")
    return {"model": "fc-siam-conc", "preset": preset, "in_channels": int(bands), "classes": CLASSES,
            **copy.deepcopy(PRESETS[preset])}


def build_changedet(architecture: dict[str, Any]) -> "FCSiamConc":
    """Random weights; forward(a, b) -> (B, 2, H, W) logits."""
    return FCSiamConc(architecture["in_channels"], architecture.get("classes", CLASSES), architecture["channels"],
                      architecture["convs"], architecture.get("dropout", 0.2))


def head_keys(architecture: dict[str, Any]) -> tuple[str, str]:
    """The state-dict keys of the logits convolution (the last of the shallowest decoder level)."""
    return (f"decoders.{len(architecture['channels']) - 1}.{architecture['convs'][0] - 1}.weight",
            f"decoders.{len(architecture['channels']) - 1}.{architecture['convs'][0] - 1}.bias")


def _conv(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Dropout2d(dropout))


class SiameseEncoder(nn.Module):
    """Four conv levels; returns the skip of every level (before pooling) and the pooled bottleneck."""

    def __init__(self, in_channels: int, channels: list[int], convs: list[int], dropout: float):
        super().__init__()
        levels, cin = [], in_channels
        for cout, n in zip(channels, convs):
            levels.append(nn.Sequential(*[_conv(cin if i == 0 else cout, cout, dropout) for i in range(n)]))
            cin = cout
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, x


class FCSiamConc(nn.Module):
    def __init__(self, in_channels: int, classes: int, channels: list[int], convs: list[int], dropout: float):
        super().__init__()
        if len(channels) != len(convs):
            raise ValueError("FC-Siam-conc needs one conv count per encoder level.")
        self.encoder = SiameseEncoder(in_channels, channels, convs, dropout)
        self.multiple = 2 ** len(channels)
        ups, decoders = [], []
        depth = len(channels)
        for level in reversed(range(depth)):      # deepest first
            width = channels[level]
            ups.append(nn.ConvTranspose2d(2 * width if level == depth - 1 else width, width, 3, stride=2,
                                          padding=1, output_padding=1))
            layers = []
            for i in range(convs[level]):
                cin = 3 * width if i == 0 else width
                last = i == convs[level] - 1
                if last and level == 0:
                    layers.append(nn.Conv2d(cin, classes, 3, padding=1))      # the logits
                else:
                    layers.append(_conv(cin, channels[level - 1] if last else width, dropout))
            decoders.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.decoders = nn.ModuleList(decoders)

    def encode(self, a: torch.Tensor, b: torch.Tensor):
        """Both dates through the one shared encoder: (skips_a, bottleneck_a), (skips_b, bottleneck_b)."""
        skips, bottom = self.encoder(torch.cat([a, b]))
        n = a.shape[0]   # not len(): ONNX tracing would freeze the batch size
        return ([s[:n] for s in skips], bottom[:n]), ([s[n:] for s in skips], bottom[n:])

    def decode(self, features_a, features_b) -> torch.Tensor:
        (skips_a, bottom_a), (skips_b, bottom_b) = features_a, features_b
        x = torch.cat([bottom_a, bottom_b], 1)
        for up, decoder, skip_a, skip_b in zip(self.ups, self.decoders, reversed(skips_a), reversed(skips_b)):
            x = decoder(torch.cat([up(x), skip_a, skip_b], 1))
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"Both dates must have the same shape, not {tuple(a.shape)} and {tuple(b.shape)}.")
        h, w = a.shape[-2:]
        pad = (0, -w % self.multiple, 0, -h % self.multiple)
        if any(pad):
            a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
        return self.decode(*self.encode(a, b))[..., :h, :w]
