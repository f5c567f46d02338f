"""A small, independent re-implementation of guided-diffusion's `UNetModel` forward (2-D only).

Used only by tests/test_guided_diffusion_convert.py as the ground truth a converted UNet2DModel must
reproduce. Parameter names match the real `guided_diffusion.unet.UNetModel` (input_blocks.k.j...,
middle_block, output_blocks, time_embed, out), so its state dict is shaped like a real checkpoint.
No class conditioning, no fp16, no gradient checkpointing.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] of t * exp(-ln(max_period) k / half), k = 0..half-1."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    angles = t.float()[:, None] * torch.exp(-math.log(max_period) * k / half)[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


class Sequence(nn.ModuleList):
    """TimestepEmbedSequential: layers that take (x, emb) get it, the others only x."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    def __init__(self, c_in: int, emb_dim: int, c_out: int, scale_shift: bool, up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.in_layers = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(group_norm(c_out), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int, new_order: bool):
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        d = c // self.heads
        if self.new_order:  # all q, then all k, then all v; each head-major
            q, k, v = (t.reshape(b * self.heads, d, -1) for t in qkv.chunk(3, dim=1))
        else:  # legacy: per head [q, k, v]
            q, k, v = qkv.reshape(b * self.heads, 3 * d, -1).split(d, dim=1)
        logits = torch.einsum("nct,ncs->nts", q, k) / math.sqrt(d)
        a = torch.einsum("nts,ncs->nct", logits.softmax(dim=-1), v).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hgt, wid)


class ReferenceUNet(nn.Module):
    def __init__(self, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_ds=(2, 4), channel_mult=(1, 2, 2), num_head_channels=16, num_heads=1,
                 scale_shift=True, resblock_updown=True, new_attention_order=False):
        super().__init__()
        self.model_channels = model_channels
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention(ch):
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            return AttentionBlock(ch, heads, new_attention_order)

        def res(c_in, c_out, **kw):
            return ResBlock(c_in, emb_dim, c_out, scale_shift, **kw)

        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([Sequence([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(attention(ch))
                self.input_blocks.append(Sequence(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequence([res(ch, ch, down=True) if resblock_updown else Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Sequence([res(ch, ch), attention(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_ds:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Sequence(layers))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h, hs = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (GroupNorm affine included), so no mapping error can hide behind a zero or a one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    return model
