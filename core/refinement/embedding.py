"""IDGBR label embedding: class maps <-> 3-channel continuous images the SD VAE can encode.

Encoder: a learnable table per class, E = 2 sigmoid(E0) - 1 (3 channels in [-1, 1]).
Decoder: 1x1 conv 3 -> 128, ReLU, 1x1 conv 128 -> K (logits). Both are trained together
(the official code freezes the table at its random init; we train it) with cross-entropy
on random class maps, Gaussian noise added to the embedding so that the decoder tolerates
the VAE's reconstruction error and the sampler's residual error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBED_CHANNELS = 3
DECODER_HIDDEN = 128
# The paper's noise (variance 0.25, std 0.5), not the official code's std 0.15: that code keeps the table at
# its random init, where two classes can land close together and only a small noise stays separable. With a
# trainable table the noise pushes the classes apart (towards the corners of [-1, 1]^3), giving the decoder
# wide margins against VAE/sampler errors.
NOISE_STD = 0.5


class LabelEmbedding(nn.Module):
    """Per-class-set embedder: encode(labels) -> (B, 3, H, W) in [-1, 1], decode(embedding) -> logits."""

    def __init__(self, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"A class map needs at least 2 classes, got {n_classes}.")
        self.n_classes = n_classes
        self.table = nn.Embedding(n_classes, EMBED_CHANNELS)
        self.decoder = nn.Sequential(nn.Conv2d(EMBED_CHANNELS, DECODER_HIDDEN, 1), nn.ReLU(),
                                     nn.Conv2d(DECODER_HIDDEN, n_classes, 1))

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) class indices -> (B, 3, H, W) embedding."""
        return (2 * torch.sigmoid(self.table(labels.long())) - 1).permute(0, 3, 1, 2)

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) embedding (possibly perturbed) -> (B, K, H, W) logits."""
        return self.decoder(embedding)


def random_class_maps(count: int, size: int, n_classes: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform random class maps: the net is per pixel (1x1), so uniform pixels are the unbiased training set."""
    return torch.randint(0, n_classes, (count, size, size), generator=generator, device=device)


def embedding_loss(embedding: LabelEmbedding, labels: torch.Tensor, noise_std: float = NOISE_STD,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy of decode(encode(labels) + N(0, noise_std^2)); trains table and decoder together."""
    encoded = embedding.encode(labels)
    noise = torch.randn(encoded.shape, generator=generator, device=encoded.device, dtype=encoded.dtype)
    return F.cross_entropy(embedding.decode(encoded + noise_std * noise), labels.long())
