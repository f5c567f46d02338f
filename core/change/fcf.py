"""FCF (feature compression & fusion) of RDF-MIG: a change pair + mask as one 3-channel image (or 2 k + 1).

The supplement only says what FCF does: the C-band image of date A (RGB or RGB+NIR), the image of date B and the
change mask become a 3-channel "feature image" [reduced A, reduced B, mask] that a diffusion model learns; after
sampling, FCF's decoder restores the bands of A and B. How it reduces is in the missing main paper, so this is our
interpretation (spec "Our decisions"): a small learned convolutional autoencoder per image, C bands -> 1 channel
in [-1, 1] (tanh) with a 9 x 9 px spatial context, and back 1 -> C bands. It never downsamples, so any size works.
One channel keeps luminance but loses colour (a new red roof comes back beige, and the change with it), so
`code_channels` = k > 1 keeps k channels per date: the feature image then has 2 k + 1 channels. k = 1 is the
supplement's 3-channel image and the default.
ONE FCF serves both dates (same sensor); it is trained first on reconstruction (`fcf_loss`), then frozen while the
diffusion model trains. The plain concatenation [A, B, mask] (2C + 1 channels, the paper's ablation) is kept as
`concat_image` / `split_concat_image`.

Images are (B, C, H, W) scaled to [-1, 1]; masks are 0 (no change) / 1 (change) and live in the joint image as
2 m - 1, so thresholding at 0 recovers them exactly from any sample within 1 of the right value.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoint import ModelCard, ModelError, load_card, load_into

TASK = "fcf"
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5   # Wang et al. 2004: 11 x 11 gaussian, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _conv_stack(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """Four 3 x 3 convolutions (9 x 9 px context), SiLU between; replicate padding keeps borders clean."""
    def conv(i, o):
        return nn.Conv2d(i, o, 3, padding=1, padding_mode="replicate")
    return nn.Sequential(conv(in_channels, width), nn.SiLU(), conv(width, width), nn.SiLU(),
                         conv(width, width), nn.SiLU(), conv(width, out_channels))


class FCF(nn.Module):
    """Per-image autoencoder: `bands` channels in [-1, 1] <-> `code_channels` channels in [-1, 1]."""

    def __init__(self, bands: int, width: int = 32, code_channels: int = 1):
        super().__init__()
        if bands < 1 or width < 1 or not 1 <= code_channels <= bands:
            raise ValueError(f"FCF needs bands >= 1, width >= 1 and 1 <= code_channels <= bands, got bands={bands}, "
                             f"width={width}, code_channels={code_channels}.")
        self.bands, self.width, self.code_channels = bands, width, code_channels
        self.encoder = _conv_stack(bands, width, code_channels)
        self.decoder = _conv_stack(code_channels, width, bands)

    @property
    def architecture(self) -> dict[str, Any]:
        """What the model card stores to rebuild this module."""
        return {"bands": self.bands, "width": self.width, "code_channels": self.code_channels}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, bands, H, W) in [-1, 1] -> (B, code_channels, H, W) in [-1, 1]."""
        if x.shape[1] != self.bands:
            raise ValueError(f"This FCF reduces {self.bands}-band images; got {x.shape[1]} band(s).")
        return torch.tanh(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, code_channels, H, W) in [-1, 1] -> (B, bands, H, W) in [-1, 1]."""
        return torch.tanh(self.decoder(z))

    @property
    def feature_channels(self) -> int:
        """Channels of the feature image [code A, code B, mask]."""
        return 2 * self.code_channels + 1

    def forward(self, x: torch.Tensor, code_noise: float = 0.0) -> torch.Tensor:
        """Reconstruction of x; `code_noise` (training only) adds gaussian noise of that std to the code, so the
        decoder tolerates the small errors of codes a diffusion model generates."""
        z = self.encode(x)
        if code_noise > 0:
            z = z + code_noise * torch.randn_like(z)
        return self.decode(z)


def _mask_channel(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) 0/1 mask -> (B, 1, H, W) in {-1, 1}."""
    m = mask.reshape(like.shape[0], 1, *like.shape[-2:]).to(like.dtype)
    if ((m != 0) & (m != 1)).any():
        raise ValueError("Change masks must hold 0 (no change) and 1 (change) only; "
                         "map ignored pixels (e.g. 255) to one of them first.")
    return 2 * m - 1


def feature_image(fcf: FCF, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The joint image the diffusion model learns: [encode(a), encode(b), 2 mask - 1], (B, 2 k + 1, H, W)."""
    return torch.cat([fcf.encode(a), fcf.encode(b), _mask_channel(mask, a)], dim=1)


def split_feature_image(fcf: FCF, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 2 k + 1, H, W) (e.g. sampled) -> (a, b) (B, bands, H, W) in [-1, 1] and the mask (B, H, W) bool
    (last channel > 0)."""
    k = fcf.code_channels
    if z.shape[1] != fcf.feature_channels:
        raise ValueError(f"This FCF's feature image has {fcf.feature_channels} channels ({k} per date, then the "
                         f"mask); got {z.shape[1]}.")
    codes = z[:, :2 * k].clamp(-1, 1)   # a sample may leave the encoder's range
    return fcf.decode(codes[:, :k]), fcf.decode(codes[:, k:]), z[:, 2 * k] > 0


def concat_image(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ablation's joint image without FCF: [a, b, 2 mask - 1], (B, 2 C + 1, H, W)."""
    if a.shape != b.shape:
        raise ValueError(f"Dates A and B must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return torch.cat([a, b, _mask_channel(mask, a)], dim=1)


def split_concat_image(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 2 C + 1, H, W) -> (a, b) (B, C, H, W) clamped to [-1, 1] and the mask (B, H, W) bool."""
    channels = z.shape[1]
    if channels < 3 or channels % 2 == 0:
        raise ValueError(f"A concatenated change image has 2 C + 1 channels; got {channels}.")
    bands = (channels - 1) // 2
    images = z[:, :2 * bands].clamp(-1, 1)
    return images[:, :bands], images[:, bands:], z[:, 2 * bands] > 0


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) images in [0, 1], per band, 11 x 11 gaussian window (sigma 1.5), valid region.

    Differentiable (a training loss). Images smaller than the window use the largest odd window that fits.
    """
    size = min(SSIM_WINDOW, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2
    coords = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    channels = x.shape[1]
    rows, cols = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1), g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)

    def mean(image):   # separable gaussian average per band
        return F.conv2d(F.conv2d(image, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = mean(x), mean(y)
    var_x = mean(x * x) - mu_x ** 2
    var_y = mean(y * y) - mu_y ** 2
    cov = mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], on the [0, 1] scale (peak 1): 10 log10(1 / MSE)."""
    mse = float(((reconstruction - target) / 2).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def chroma_error(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error of the colour alone (each band minus the pixel's band mean) of (B, C, H, W) images in
    [-1, 1], on the [0, 1] scale: what PSNR and SSIM hide when an FCF keeps luminance but loses colour."""
    def colour(x):
        return x - x.mean(1, keepdim=True)
    return float((colour(reconstruction) - colour(target)).abs().mean() / 2)


def fcf_loss(fcf: FCF, x: torch.Tensor, code_noise: float = 0.0) -> torch.Tensor:
    """Reconstruction loss L1 + (1 - SSIM) of (B, bands, H, W) images in [-1, 1].

    Not L2: a squared error is satisfied by blur, and blurred, washed-out bands are what the paper reports for
    the plain concatenation. SSIM keeps local contrast and structure (edges of roofs, field texture), L1 keeps
    the per-band level, i.e. the colour. `code_noise`: see FCF.forward. Calls the module (not encode/decode)
    so a DistributedDataParallel wrapper works.
    """
    reconstruction = fcf(x, code_noise)
    return (reconstruction - x).abs().mean() + 1 - ssim((reconstruction + 1) / 2, (x + 1) / 2)


def load_fcf(model_dir: str | os.PathLike) -> tuple[FCF, ModelCard]:
    """A trained FCF (on the CPU, eval mode, frozen: requires_grad off) and its card."""
    card = load_card(model_dir, task=TASK)
    try:
        fcf = FCF(int(card.architecture["bands"]), int(card.architecture["width"]),
                  int(card.architecture.get("code_channels", 1)))   # cards before code_channels: 1
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"FCF model '{card.name}': its card's architecture is invalid ({exc}).") from exc
    if fcf.bands != len(card.bands):
        raise ModelError(f"FCF model '{card.name}' reduces {fcf.bands} bands but its card lists {len(card.bands)}.")
    load_into(fcf, model_dir)
    return fcf.eval().requires_grad_(False), card
