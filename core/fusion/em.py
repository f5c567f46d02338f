"""DDFM's likelihood rectification: one EM iteration of its hierarchical Bayesian fusion model.

Given the prior's current luma estimate f and the two sources, the E-step updates the
pixel-wise precisions C (fidelity to one source) and D (to the other) and the scale
parameters tau_a, tau_b; the M-step solves the total-variation term H in the Fourier domain
(difference kernels [1, -1] and [1; -1]) and returns the rectified luma. State (tau_a, tau_b,
F1, F2) carries over from one sampler step to the next, as in the official code.

Two wirings (see specs/dig2dig.md):
- "paper": I = infrared, V = visible, X = f - V estimates the infrared excess and the result
  is f = X' + V (the paper's Algorithm 1, line 13, consistent with X = f - V);
- "code": the official code passes the visible image as I and the infrared as V and returns
  I - X'. Without the TV term the two give f = (1 - w) V + w I and (1 - w) I + w V, w = C/(C+D).
In both, the C-term pulls f toward the infrared and the D-term toward the visible image, so
Dig2DIG's modality weights scale C (infrared) and D (visible).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

EM_MODES = ("paper", "code")
LAMBDA, RHO = 0.5, 0.001     # the official sampling settings


@dataclass
class EmState:
    tau_a: torch.Tensor      # (B, 1, 1, 1)
    tau_b: torch.Tensor
    f1: torch.Tensor         # (B, 1, H, W) horizontal / vertical TV auxiliaries
    f2: torch.Tensor

    @classmethod
    def initial(cls, like: torch.Tensor) -> "EmState":
        ones = torch.ones(like.shape[0], 1, 1, 1, dtype=like.dtype, device=like.device)
        return cls(ones, ones.clone(), torch.zeros_like(like), torch.zeros_like(like))


def _difference_otfs(height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer functions of the circular forward differences along x and y (MATLAB's psf2otf)."""
    k1 = torch.zeros(height, width, dtype=dtype, device=device)
    k1[0, 0], k1[0, -1] = -1, 1       # [1, -1] centred at its first tap
    k2 = torch.zeros_like(k1)
    k2[0, 0], k2[-1, 0] = -1, 1
    return torch.fft.fft2(k1), torch.fft.fft2(k2)


def _prox_tv(target: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """H = argmin |H - target|^2 + |K1 H - F1|^2 + |K2 H - F2|^2, solved exactly with FFTs."""
    otf1, otf2 = _difference_otfs(*target.shape[-2:], target.device, target.dtype)
    numerator = torch.fft.fft2(target) + otf1.conj() * torch.fft.fft2(f1) + otf2.conj() * torch.fft.fft2(f2)
    return torch.fft.ifft2(numerator / (1 + otf1.abs() ** 2 + otf2.abs() ** 2)).real


def _forward_difference(h: torch.Tensor, dim: int) -> torch.Tensor:
    """h[i] - h[i+1], the last row/column kept as is (the official code's boundary)."""
    out = h.clone()
    n = h.shape[dim]
    out.narrow(dim, 0, n - 1).copy_(h.narrow(dim, 0, n - 1) - h.narrow(dim, 1, n - 1))
    return out


def em_step(f: torch.Tensor, infrared: torch.Tensor, visible: torch.Tensor, state: EmState,
            weight_infrared: torch.Tensor | float = 1.0, weight_visible: torch.Tensor | float = 1.0,
            mode: str = "paper") -> tuple[torch.Tensor, EmState]:
    """Rectified luma (B, 1, H, W) and the next state; all images in [-1, 1].

    The weights (scalars, (B, 1, 1, 1) or per-pixel (B, 1, H, W)) scale the infrared and visible
    terms; 1 and 1 is DDFM.
    """
    if mode not in EM_MODES:
        raise ValueError(f"Unknown DDFM mode '{mode}'; choose one of {', '.join(EM_MODES)}.")
    source_i, source_v = (infrared, visible) if mode == "paper" else (visible, infrared)
    x = f - source_v
    y = source_i - source_v
    d = torch.sqrt(2 / (state.tau_b * (x ** 2 + 1e-6)))
    c = torch.sqrt(2 / (state.tau_a * ((y - x) ** 2 + 1e-6)))
    d = torch.minimum(d, 2 * c)
    tau_b = (1 / (d + 1e-10) + state.tau_b / 2).mean(dim=(1, 2, 3), keepdim=True)
    tau_a = (1 / (c + 1e-10) + state.tau_a / 2).mean(dim=(1, 2, 3), keepdim=True)

    h = _prox_tv(y - x, state.f1, state.f2)
    shrink = RHO / (2 * LAMBDA + RHO)
    f1, f2 = shrink * _forward_difference(h, -1), shrink * _forward_difference(h, -2)
    wc, wd = 2 * weight_infrared * c, 2 * weight_visible * d
    x_new = (wc * y + RHO * (y - h)) / (wc + wd + RHO)
    fused = x_new + source_v if mode == "paper" else source_i - x_new
    return fused, EmState(tau_a, tau_b, f1, f2)
