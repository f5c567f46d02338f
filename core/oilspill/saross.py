"""SAROSS-Net: the student segmenter of the SAR oil-spill paper (DAKD pipeline).

An smp UNet++ (encoder from smp or timm, single-channel input) whose nested skip nodes are Context-Aware
Feature Transfer (CAFT) blocks. The paper: "along UNet++ skip connections, each CAFT block transfers
high-resolution (HR) features to the next CAFT block or the convolutional decoder block, by referring to
the lower-resolution (LR) features". So every intermediate node x_{depth}_{layer} (depth >= 1) of smp's
UNet++ becomes a CAFT block: HR = the previous node at its resolution (the encoder feature for the first),
LR = the node below, 2x-upsampled; its output keeps the HR width, like smp's nested node. The decoder
nodes x_0_{layer} stay smp's convolutional blocks and still see every node of their row (UNet++'s dense
skips). The paper's ablations: skip_block="conv" = UNet++'s own nested 3x3-conv nodes, "none" = no nested
nodes at all (plain UNet). That reading matches the paper's costs: CAFT nodes add far fewer parameters
and FLOPs than UNet++'s nested convolutions.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder
from timm.layers import LayerNorm2d
from torch import nn

TASK = "saross"
# The per-class output convolution (smp's segmentation head): one row per class, remapped by name when fine-tuning.
HEAD_KEYS = ("segmentation_head.0.weight", "segmentation_head.0.bias")
SKIP_BLOCKS = ("caft", "conv", "none")
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ResNet-34 configuration (its ablation encoder; MambaVision-B is the headline one) with
    # smp's UNet++ decoder widths. `heads` is the most attention heads a CAFT block gets: each block uses
    # gcd(its channels, heads) so heads always divide the channels (see caft_heads).
    "paper": {"encoder": "resnet34", "decoder_channels": [256, 128, 64, 32, 16], "heads": 8,
              "ffn_expansion": 2.66},
    # Trainable on a CPU: MobileNetV3-small skips have 16-48 channels, so at most 4 heads.
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


def build_saross(architecture: dict[str, Any]) -> nn.Module:
    """Random weights (never downloaded); skip_block caft (SAROSS-Net), conv (UNet++) or none (UNet)."""
    skip_block = architecture["skip_block"]
    if skip_block not in SKIP_BLOCKS:
        raise ValueError(f"Unknown skip block '{skip_block}'; choose one of {', '.join(SKIP_BLOCKS)}.")
    decoder_channels = list(architecture["decoder_channels"])
    kwargs = dict(encoder_name=architecture["encoder"], encoder_weights=None, encoder_depth=len(decoder_channels),
                  decoder_channels=decoder_channels, in_channels=architecture["in_channels"],
                  classes=architecture["classes"])
    if skip_block == "none":
        return smp.Unet(**kwargs)
    model = smp.UnetPlusPlus(**kwargs)
    if skip_block == "caft":
        for name, (lr_channels, hr_channels) in nested_nodes(model.decoder).items():
            model.decoder.blocks[name] = CaftNode(CAFT(hr_channels, lr_channels,
                                                       caft_heads(hr_channels, architecture["heads"]),
                                                       architecture["ffn_expansion"]))
    return model


def nested_nodes(decoder: UnetPlusPlusDecoder) -> dict[str, tuple[int, int]]:
    """(LR input channels, HR channels) of UNet++'s intermediate nodes x_{depth}_{layer}, depth >= 1.

    smp builds them with in = skip_channels[layer - 1] and out = skip_channels[layer] (the HR width).
    """
    nodes = {}
    for layer in range(1, len(decoder.in_channels) - 1):
        for depth in range(1, layer + 1):
            nodes[f"x_{depth}_{layer}"] = (decoder.skip_channels[layer - 1], decoder.skip_channels[layer])
    for name, (_, hr) in nodes.items():  # guards against a changed layout in a future smp
        if decoder.blocks[name].out_channels != hr:
            raise RuntimeError(f"smp's UNet++ node {name} outputs {decoder.blocks[name].out_channels} channels, "
                               f"expected {hr}.")
    return nodes


def skip_modules(model: nn.Module) -> list[nn.Module]:
    """The intermediate skip nodes (CAFT blocks, or UNet++'s 3x3-conv nodes): what the ablation swaps."""
    blocks = getattr(model.decoder, "blocks", None)
    if not isinstance(blocks, nn.ModuleDict) or not isinstance(model.decoder, UnetPlusPlusDecoder):
        return []
    return [blocks[name] for name in nested_nodes(model.decoder)]


class CaftNode(nn.Module):
    """A UNet++ intermediate node as a CAFT block, called like smp's node: (LR input, dense skip concat).

    The dense concat starts with the previous node at this resolution (or is the encoder feature for the
    first node of a row): that is the HR stream the block transfers. The LR input goes in at its own
    resolution: the block's per-pixel steps run before the 2x nearest upsampling (see CAFT.transfer).
    """

    def __init__(self, caft: "CAFT"):
        super().__init__()
        self.caft = caft
        self.out_channels = caft.channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.caft.transfer(skip[:, :self.out_channels], x)


def _pixels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C), contiguous: channel LayerNorms and 1x1 convolutions become row operations."""
    return x.permute(0, 2, 3, 1).contiguous()


def _depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise 3x3 convolution on (B, H, W, C) data, seen as a channels_last (B, C, H, W) tensor: no copy."""
    return F.conv2d(x.permute(0, 3, 1, 2), conv.weight, None, 1, conv.padding, 1, conv.groups).permute(0, 2, 3, 1)


def _pointwise(conv: nn.Conv2d, x: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
    """A bias-free 1x1 convolution (or its output `channels`) on (B, H, W, C) data: one matrix product."""
    return F.linear(x, conv.weight[channels].flatten(1))


def _row_bands(height: int, rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most `rows` rows covering `height`."""
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def _halo(band: tuple[int, int], height: int) -> tuple[slice, tuple[int, int, int, int]]:
    """The rows a 3x3 convolution reads for the rows `band` of an image `height` rows high (one more on each
    side, inside the image), and the zero padding (F.pad order) it needs where the band touches an edge."""
    start, stop = band
    return slice(max(start - 1, 0), min(stop + 1, height)), (0, 0, int(start == 0), int(stop == height))


def _pointwise_depthwise(pointwise: nn.Conv2d, depthwise: nn.Conv2d, rows: torch.Tensor,
                         padding: tuple[int, int, int, int], parts: int) -> list[torch.Tensor]:
    """depthwise(pointwise(x)) on a band of (B, H, W, C) data, given as the band's `rows` and `padding` from
    _halo, split into `parts` equal channel groups, each computed on its own (per-channel operations: the same
    values as splitting the whole result, without strided slices of it)."""
    size = pointwise.out_channels // parts
    groups = [slice(i * size, (i + 1) * size) for i in range(parts)]
    pad = (lambda x: F.pad(x, padding)) if any(padding) else (lambda x: x)
    return [F.conv2d(pad(_pointwise(pointwise, rows, group).permute(0, 3, 1, 2)),
                     depthwise.weight[group], None, 1, (0, 1), 1, size).permute(0, 2, 3, 1) for group in groups]


class CAFT(nn.Module):
    """Context-Aware Feature Transfer: Restormer's transposed attention as cross-attention (Q from LR, K/V from HR).

    The attention map is (heads, C/h, C/h) over channels, so its cost is linear in the number of pixels.

    Computed with pixels last (B, H, W, C): the channel LayerNorms, the 1x1 convolutions and the gated
    feed-forward are then row operations and matrix products, the depthwise convolutions run on channels_last
    views, and no (B, C, H*W) reshape copies are made. The attention is applied by its definition, rearranged:
    the L2 normalisation of q and k along the pixels divides the (C, C) product q k^T instead of the pixels,
    and project_out(A v) = (W_out blockdiag(A)) v, one (C, C) matrix per image applied to v in one product.
    The HR-resolution work runs in bands of rows (with the one-row halo the 3x3s need), about `band_pixels`
    pixels each, so a band's intermediates (up to 2 x 2.66 C channels) stay in the CPU caches instead of
    going through memory: first k and v band by band, accumulating q k^T and the squared norms over the
    pixels; then, band by band, the attention output and the feed-forward.
    Same result as the step-by-step form up to float rounding; the module tree and state dict are unchanged.
    """

    # Pixels per image in a band of the row loops; 4096 (16 rows of a 256-px feature map) was the fastest of
    # 1024-16384 on the paper preset's 256-px nodes (issue 21).
    band_pixels = 4096

    def __init__(self, hr_channels: int, lr_channels: int, heads: int, ffn_expansion: float = 2.66):
        super().__init__()
        if hr_channels % heads:
            raise ValueError(f"CAFT heads ({heads}) must divide the HR channels ({hr_channels}).")
        c = hr_channels
        self.channels = c
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

    @staticmethod
    def _norm(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def _query(self, lr: torch.Tensor, upsample: bool) -> torch.Tensor:
        """q (B, H, W, C) from LR features (B, C_lr, h, w); `upsample`: they are at half the HR resolution, and
        the per-pixel LayerNorm and 1x1 convolution run before the 2x nearest upsampling (same values, 1/4 of
        the pixels)."""
        q = _pointwise(self.q[0], self._norm(self.norm_lr, _pixels_last(lr)))
        if upsample:   # nearest 2x on the channels_last view: one pass, pixels stay last
            q = F.interpolate(q.permute(0, 3, 1, 2), scale_factor=2.0, mode="nearest").permute(0, 2, 3, 1)
        return _depthwise(self.q[1], q)

    def _bands(self, hr: torch.Tensor) -> list[tuple[int, int]]:
        """Row bands of `band_pixels` pixels per image: from the image size only, so a traced (ONNX) graph
        serves every batch size."""
        _, _, h, w = hr.shape
        return _row_bands(h, max(1, self.band_pixels // w))

    def _attention_terms(self, hr: torch.Tensor, q: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(channel attention (B, heads, C/h, C/h), v (B, H, W, C), the HR features pixels last (B, H, W, C))
        from HR features (B, C, H, W) and q."""
        b, c, h, _ = hr.shape
        products = q_squares = k_squares = 0
        values, hr_bands = [], []
        for start, stop in self._bands(hr):
            rows, padding = _halo((start, stop), h)
            band = _pixels_last(hr[:, :, rows])
            hr_bands.append(band[:, start - rows.start:stop - rows.start])
            k, v = _pointwise_depthwise(self.kv[0], self.kv[1], self._norm(self.norm_hr, band), padding, 2)
            k, q_band = k.reshape(b, -1, c), q[:, start:stop].reshape(b, -1, c)
            products = products + torch.bmm(q_band.transpose(1, 2), k)
            q_squares = q_squares + q_band.square().sum(1)
            k_squares = k_squares + k.square().sum(1)
            values.append(v)
        heads, per_head = self.heads, c // self.heads
        # q_i . k_j over the pixels, for i, j in the same head: the diagonal blocks of the (C, C) product
        products = products.view(b, heads, per_head, heads, per_head).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)
        q_norm = q_squares.sqrt().clamp_min(1e-12).view(b, heads, per_head, 1)     # F.normalize's eps
        k_norm = k_squares.sqrt().clamp_min(1e-12).view(b, heads, 1, per_head)
        attention = torch.softmax(products / (q_norm * k_norm) * self.temperature, dim=-1)
        return attention, torch.cat(values, 1), torch.cat(hr_bands, 1)

    def attention(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """The channel attention matrix (B, heads, C/h, C/h) for HR features and upsampled LR features."""
        return self._attention_terms(hr, self._query(lr_up, upsample=False))[0]

    def forward(self, hr: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
        """HR features (B, C, H, W) transferred with LR features already at their resolution."""
        return self._transfer(hr, self._query(lr_up, upsample=False))

    def transfer(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """forward(hr, 2x nearest-upsampled lr), without upsampling the LR features themselves."""
        return self._transfer(hr, self._query(lr, upsample=True))

    def _transfer(self, hr: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Bands are moved to pixels last and back one at a time: cache-sized transposes, far faster than one
        transpose of the whole map."""
        b, c, h, w = hr.shape
        bands = self._bands(hr)
        attention, v, hr = self._attention_terms(hr, q)
        # project_out(A v) as one (C, C) matrix per image: W_out blockdiag(A)
        blocks = torch.zeros(b, c, c, dtype=attention.dtype, device=attention.device)
        per_head = c // self.heads
        for i in range(self.heads):
            rows = slice(i * per_head, (i + 1) * per_head)
            blocks[:, rows, rows] = attention[:, i]
        mixing = (self.project_out.weight.flatten(1) @ blocks).transpose(1, 2)[:, None]   # (B, 1, C, C)
        out = v.new_empty(b, c, h, w)
        for start, stop in bands:
            rows, padding = _halo((start, stop), h)   # the feed-forward's 3x3 reads one row more on each side
            attended = hr[:, rows] + torch.matmul(v[:, rows], mixing)
            ffn = self.ffn.pixels_last(self._norm(self.norm_ffn, attended), padding)
            out[:, :, start:stop] = (attended[:, start - rows.start:stop - rows.start] + ffn).permute(0, 3, 1, 2)
        return out


class GDFN(nn.Module):
    """Restormer's gated depthwise feed-forward: 1x1 to 2*hidden, 3x3 depthwise, gelu(a) * b, 1x1 back."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixels_last(_pixels_last(x), (0, 0, 1, 1)).permute(0, 3, 1, 2).contiguous()

    def pixels_last(self, rows: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
        """The same on a band of (B, H, W, C) data, given as its rows and padding from _halo."""
        a, b = _pointwise_depthwise(self.project_in, self.dwconv, rows, padding, 2)
        return _pointwise(self.project_out, F.gelu(a) * b)
