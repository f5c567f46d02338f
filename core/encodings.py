"""Label encodings for diffusion on class maps.

Analog bits (SatSynth): class ids become ceil(log2 K) channels of +-1, most significant bit
first, so a diffusion model can denoise labels like image bands. Decoding picks the nearest
VALID codeword (K need not be a power of two), which also yields soft class probabilities.
"""
from __future__ import annotations

import math

import torch


def n_bits(n_classes: int) -> int:
    if n_classes < 2:
        raise ValueError(f"Analog bits need at least 2 classes, got {n_classes}.")
    return max(1, math.ceil(math.log2(n_classes)))


def codewords(n_classes: int) -> torch.Tensor:
    """(K, n_bits) matrix of +-1 codes, row k = binary k, most significant bit first."""
    bits = n_bits(n_classes)
    ids = torch.arange(n_classes)[:, None]
    shifts = torch.arange(bits - 1, -1, -1)[None, :]
    return ((ids >> shifts) & 1).float() * 2 - 1


def encode_bits(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(..., H, W) integer class ids -> (..., n_bits, H, W) floats in {-1, +1}."""
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"Class ids must lie in 0..{n_classes - 1}.")
    codes = codewords(n_classes).to(labels.device)[labels.long()]      # (..., H, W, n_bits)
    return codes.movedim(-1, -3)


def bit_class_probabilities(bits: torch.Tensor, n_classes: int, temperature: float = 1.0) -> torch.Tensor:
    """(..., n_bits, H, W) analog bits -> (..., K, H, W) probabilities, softmax of -squared
    distance to each valid codeword (bits are clipped to [-1, 1] first)."""
    codes = codewords(n_classes).to(bits)                                # (K, n)
    x = bits.clamp(-1, 1).movedim(-3, -1)                                # (..., H, W, n)
    distance = ((x[..., None, :] - codes) ** 2).sum(-1)                  # (..., H, W, K)
    return torch.softmax(-distance / temperature, dim=-1).movedim(-1, -3)


def decode_bits(bits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(..., n_bits, H, W) analog bits -> (..., H, W) class ids of the nearest valid codeword."""
    codes = codewords(n_classes).to(bits)
    scores = torch.einsum("...nhw,kn->...khw", bits.clamp(-1, 1), codes)  # max dot product = min distance
    return scores.argmax(dim=-3)
