"""Proxy FID: the Frechet distance between Gaussian fits of image features.

No Inception weights are available here, so features come from the encoder of a
segmentation model trained by us (the SatSynth paper also scores with a segmentation
encoder): globally averaged activations of its middle stages. Values compare samplers and
models on the same data; they are not comparable to published FIDs.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from core.checkpoint import ModelCard

FEATURE_STAGES = (-3, -2)   # mid-level stages: enough to see texture and layout, few dimensions


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of (N, D) feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():   # near-singular product: regularise as pytorch-fid does
        eye = np.eye(cov_a.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_a + eye) @ (cov_b + eye))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


class SegmenterFeatures:
    """Pooled encoder features of a segmentation model, fed raw images normalised as its card says.

    The caller loads the model (core.segmentation.model.load_segmenter): metrics sit below the methods.
    """

    def __init__(self, segmenter: torch.nn.Module, card: ModelCard, device: torch.device | str = "cpu"):
        self.card = card
        self.device = torch.device(device)
        self.encoder = segmenter.encoder.to(self.device).eval()
        self.mean = torch.tensor(self.card.normalization.offset)[:, None, None]
        self.std = torch.tensor(self.card.normalization.scale)[:, None, None]

    @torch.inference_mode()
    def __call__(self, raw: np.ndarray | torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """(N, bands, H, W) images in the data's own range -> (N, D) features."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        out = []
        for batch in raw.split(batch_size):
            stages = self.encoder(((batch - self.mean) / self.std).to(self.device))
            out.append(torch.cat([stages[i].mean(dim=(2, 3)) for i in FEATURE_STAGES], dim=1).cpu())
        return torch.cat(out).numpy().astype(np.float64)
