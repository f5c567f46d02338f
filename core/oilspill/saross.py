"""SAROSS-Net: the student segmenter of the SAR oil-spill paper (DAKD pipeline).

An smp UNet++ (encoder from smp or timm, single-channel input) whose nested skip paths carry a
Context-Aware Feature Transfer (CAFT) block: before each decoder node concatenates its high-resolution
(HR) skip features, CAFT filters them with transposed (channel) cross-attention guided by the node's
2x-upsampled low-resolution (LR) input, so that speckle in the HR features is suppressed by the LR
semantics. skip_block="conv" swaps CAFT for the paper's 3x3-convolution ablation, "none" is plain UNet++.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.modules import Conv2dReLU
from segmentation_models_pytorch.decoders.unetplusplus.decoder import DecoderBlock, UnetPlusPlusDecoder
from timm.layers import LayerNorm2d
from torch import nn

TASK = "saross"
SKIP_BLOCKS = ("caft", "conv", "none")
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ResNet-34 configuration (its ablation encoder; MambaVision-B is the headline one) with
    # smp's UNet++ decoder widths. `heads` is the most attention heads a CAFT block gets: each block uses
    # gcd(its channels, heads) so heads always divide the channels (see caft_heads).
    "paper": {"encoder": "resnet34", "decoder_channels": [256, 128, 64, 32, 16], "heads": 8,
              "ffn_expansion": 2.66},
    # Trainable on a CPU: MobileNetV3-small skips have 16-64 channels, so at most 4 heads.
    "small": {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [64, 48, 32, 24, 16], "heads": 4,
              "ffn_expansion": 2.0},
}


def architecture_for(preset: str, classes: int, encoder: str | None = None, skip_block: str = "caft") -> dict[str, Any]:
    """The JSON-able architecture stored in the model card; `encoder` = any smp name or "tu-<timm name>"."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown SAROSS-Net preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if skip_block not in SKIP_BLOCKS:
        raise ValueError(f"Unknown skip block '{skip_block}'; choose one of {', '.join(SKIP_BLOCKS)}.")
    settings = copy.deepcopy(PRESETS[preset])
    return {"preset": preset, "encoder": encoder or settings["encoder"], "in_channels": 1, "classes": classes,
            "decoder_channels": settings["decoder_channels"], "skip_block": skip_block, "heads": settings["heads"],
            "ffn_expansion": settings["ffn_expansion"]}


def caft_heads(channels: int, max_heads: int) -> int:
    """Heads for a CAFT block on `channels` HR channels: gcd, since Restormer's attention needs C % heads == 0."""
    return math.gcd(channels, max_heads)


def build_saross(architecture: dict[str, Any]) -> smp.UnetPlusPlus:
    """UNet++ with random weights (never downloaded) and the architecture's skip block on every skip path."""
    skip_block = architecture["skip_block"]
    if skip_block not in SKIP_BLOCKS:
        raise ValueError(f"Unknown skip block '{skip_block}'; choose one of {', '.join(SKIP_BLOCKS)}.")
    decoder_channels = list(architecture["decoder_channels"])
    model = smp.UnetPlusPlus(encoder_name=architecture["encoder"], encoder_weights=None,
                             encoder_depth=len(decoder_channels), decoder_channels=decoder_channels,
                             in_channels=architecture["in_channels"], classes=architecture["classes"])
    if skip_block == "none":
        return model
    decoder = model.decoder
    for name, (in_ch, skip_ch) in decoder_block_channels(decoder).items():
        if skip_ch == 0:
            continue
        if skip_block == "caft":
            module = CAFT(skip_ch, in_ch, caft_heads(skip_ch, architecture["heads"]), architecture["ffn_expansion"])
        else:
            module = ConvSkip(skip_ch, in_ch)
        decoder.blocks[name] = SkipTransferBlock(decoder.blocks[name], module)
    return model


def decoder_block_channels(decoder: UnetPlusPlusDecoder) -> dict[str, tuple[int, int]]:
    """(LR input channels, HR skip channels) of every node x_{depth}_{layer}, by smp's UnetPlusPlusDecoder formula."""
    in_channels, skip_channels = decoder.in_channels, decoder.skip_channels
    channels = {}
    for layer in range(len(in_channels) - 1):
        for depth in range(layer + 1):
            in_ch = in_channels[layer] if depth == 0 else skip_channels[layer - 1]
            channels[f"x_{depth}_{layer}"] = (in_ch, skip_channels[layer] * (layer + 1 - depth))
    channels[f"x_0_{len(in_channels) - 1}"] = (in_channels[-1], 0)
    for name, (in_ch, skip_ch) in channels.items():  # guards against a changed formula in a future smp
        block = decoder.blocks[name]
        if isinstance(block, DecoderBlock) and block.conv1[0].in_channels != in_ch + skip_ch:
            raise RuntimeError(f"smp's UNet++ block {name} has {block.conv1[0].in_channels} input channels, "
                               f"expected {in_ch} + {skip_ch}.")
    return channels


def skip_modules(model: nn.Module) -> list[nn.Module]:
    """The CAFT / ConvSkip modules of a SAROSS-Net (what the skip-block ablation adds)."""
    return [m for m in model.modules() if isinstance(m, (CAFT, ConvSkip))]


class SkipTransferBlock(nn.Module):
    """An smp DecoderBlock whose skip features first pass through `skip` guided by the 2x-upsampled LR input."""

    def __init__(self, block: DecoderBlock, skip: nn.Module):
        super().__init__()
        self.block = block
        self.skip = skip

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        lr_up = F.interpolate(x, scale_factor=2.0, mode=self.block.interpolation_mode)
        return self.block(x, self.skip(skip, lr_up))


class CAFT(nn.Module):
    """Context-Aware Feature Transfer: Restormer's transposed attention as cross-attention (Q from LR, K/V from HR).

    The attention map is (heads, C/h, C/h) over channels, so its cost is linear in the number of pixels.
    """

    def __init__(self, hr_channels: int, lr_channels: int, heads: int, ffn_expansion: float = 2.66):
        super().__init__()
        if hr_channels % heads:
            raise ValueError(f"CAFT heads ({heads}) must divide the HR channels ({hr_channels}).")
        c = hr_channels
        self.heads = heads
        self.norm_hr = LayerNorm2d(c)
        self.norm_lr = LayerNorm2d(lr_channels)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Sequential(nn.Conv2d(lr_channels, c, 1, bias=False),
                               nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False))
        self.kv = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False),
                                nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c, bias=False))
        self.project_out = nn.Conv2d(c, c, 1, bias=False)
        self.norm_ffn = LayerNorm2d(c)
        self.ffn = GDFN(c, ffn_expansion)

    def _qkv(self, hr: torch.Tensor, lr_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, C/h, H*W); q and k L2-normalised along the pixels."""
        b, c, h, w = hr.shape
        q = self.q(self.norm_lr(lr_up))
        k, v = self.kv(self.norm_hr(hr)).chunk(2, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v

    def attention(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """The channel attention matrix (B, heads, C/h, C/h)."""
        q, k, _ = self._qkv(hr, lr_up)
        return self._attention(q, k)

    def _attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-2, -1) * self.temperature, dim=-1)

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(hr, lr_up)
        out = (self._attention(q, k) @ v).reshape(hr.shape)
        hr = hr + self.project_out(out)
        return hr + self.ffn(self.norm_ffn(hr))


class GDFN(nn.Module):
    """Restormer's gated depthwise feed-forward: 1x1 to 2*hidden, 3x3 depthwise, gelu(a) * b, 1x1 back."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class ConvSkip(nn.Module):
    """The paper's ablation on the same skip path: [HR, LR_up] -> two 3x3 conv-BN-ReLU -> HR channels, residual."""

    def __init__(self, hr_channels: int, lr_channels: int):
        super().__init__()
        self.convs = nn.Sequential(Conv2dReLU(hr_channels + lr_channels, hr_channels, kernel_size=3, padding=1),
                                   Conv2dReLU(hr_channels, hr_channels, kernel_size=3, padding=1))

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        return hr + self.convs(torch.cat([hr, lr_up], dim=1))
