"""Fusion by posterior sampling: DDFM, and Dig2DIG's diffusion-information-gain weights on top.

Each reverse step (DDIM, eta = 0, on the prior's original timestep indices) turns the prior's
epsilon into an x0 estimate, replaces its luma by one EM rectification toward the two sources
(core.fusion.em), recomputes epsilon from the rectified x0 and steps on. DDFM uses fixed modality
weights and uniformly respaced steps (100 in the paper); Dig2DIG (mode "dig") uses N = 25
steps that are large at high noise and small near the end, and weights

    DIG_k(t) = l(c^_k^t, c_k) - l(c^_k^{t-S}, c_k),   w_k = softmax_k(DIG_k / T)     (Eqs. 8-11)

where c^_k^t is the prior's one-step x0 estimate from the source c_k noised to level t (Eqs. 9-10)
and l the L2 distance (the paper's choice, Table 3): the Euclidean norm of the difference over the
whole tile, so its scale is set by the fixed tile size; T = 1 is Eq. 11 as printed. A per-pixel
mean squared error instead (`dig_distance="mse"`, this project's first version) makes the gains of
the two sources differ by ~1e-3 and the softmax sit at 0.5, i.e. plain DDFM. The weights are
recomputed every S steps (t - S: the level S sampler steps later; past the last step that is the
end of the chain, where the sample is clean, c^ = c and l = 0 without a prior evaluation) and held
in between. All noised sources share one noise draw (common random numbers), so each level's
estimates serve two consecutive recomputations. Spatial DIG takes the distances over a patch
around each pixel and the softmax per pixel (the region-wise gains of the paper's Fig. 5).
Weights enter the EM step as K * w_k, so equal gains reproduce DDFM exactly.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from core.device import FastForward
from core.fusion.em import EM_MODES, EmState, em_step
from core.fusion.prior import FusionPrior
from core.diffusion.sampling import reverse_diffusion, sampling_scheduler
from core.diffusion.schedules import TIMESTEPS, training_scheduler
from core.progress import Progress

FUSION_MODES = ("dig", "ddfm")
DIG_KINDS = ("scalar", "spatial")
DIG_DISTANCES = ("l2", "squared_l2", "mse")   # l of Eq. 8: L2 distance (paper), its square, per-pixel mean (ablation)
SCHEDULES = ("auto", "nonuniform", "uniform")   # auto: nonuniform for dig, uniform for ddfm
SCHEDULE_POWER = 2.0       # Dig2DIG's timesteps: t_i = (T - 1) (1 - i / (N - 1)) ** SCHEDULE_POWER


@dataclass
class FusionSettings:
    """How to sample; plain values (stored with every result)."""
    mode: str = "dig"              # dig | ddfm (fixed weights, uniform steps)
    steps: int = 25
    dig_interval: int = 10         # S: recompute the weights every S steps
    dig_kind: str = "scalar"       # scalar | spatial
    dig_patch: int = 64            # spatial DIG: the patch (px) each pixel's distance is taken over
    dig_distance: str = "l2"       # l2 | squared_l2 | mse (see DIG_DISTANCES)
    dig_temperature: float = 1.0   # softmax(DIG / T); 1 reproduces Eq. 11
    em_mode: str = "paper"         # paper | code (see core.fusion.em)
    schedule: str = "auto"         # auto | nonuniform | uniform (ablations)
    seed: int = 0

    def validate(self) -> None:
        for value, allowed, what in ((self.mode, FUSION_MODES, "fusion mode"), (self.dig_kind, DIG_KINDS, "DIG kind"),
                                     (self.dig_distance, DIG_DISTANCES, "DIG distance"),
                                     (self.em_mode, EM_MODES, "DDFM mode"), (self.schedule, SCHEDULES, "schedule")):
            if value not in allowed:
                raise ValueError(f"Unknown {what} '{value}'; choose one of {', '.join(allowed)}.")
        if not 2 <= self.steps <= TIMESTEPS:
            raise ValueError(f"Steps must be between 2 and {TIMESTEPS}, not {self.steps}.")
        if self.dig_interval < 1:
            raise ValueError(f"The DIG interval must be at least 1 step, not {self.dig_interval}.")
        if not self.dig_temperature > 0:
            raise ValueError(f"The DIG temperature must be positive, not {self.dig_temperature}.")
        if self.dig_patch < 1:
            raise ValueError(f"The DIG patch must be at least 1 pixel, not {self.dig_patch}.")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FusionTrace:
    """What happened inside one sampling run, for inspection and tests."""
    timesteps: list[int]
    dig_steps: list[int] = field(default_factory=list)          # sampler steps where the weights were recomputed
    weights: list[torch.Tensor] = field(default_factory=list)   # per step: (B, 2, 1|H, 1|W), [infrared, visible]
    gains: list[torch.Tensor] = field(default_factory=list)     # per recomputation: DIG_k, same layout
    forward_batches: list[int] = field(default_factory=list)    # batch size of every prior evaluation
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("prior", "dig", "em"), 0.0))

    @property
    def prior_calls(self) -> int:
        return len(self.forward_batches)


def dig_timesteps(steps: int) -> list[int]:
    """Strictly decreasing from T - 1 to 0, large steps at high noise; near the end, where the curve is
    flatter than one timestep per step, one timestep per step (so any N up to T works)."""
    return [max(round((TIMESTEPS - 1) * (1 - i / (steps - 1)) ** SCHEDULE_POWER), steps - 1 - i)
            for i in range(steps)]


def ddfm_timesteps(steps: int) -> list[int]:
    """DDFM's respacing: round(k (T - 1) / (N - 1)), k = N - 1 .. 0."""
    return [round(k * (TIMESTEPS - 1) / (steps - 1)) for k in range(steps - 1, -1, -1)]


def timesteps_for(settings: FusionSettings) -> list[int]:
    nonuniform = settings.schedule == "nonuniform" or (settings.schedule == "auto" and settings.mode == "dig")
    return dig_timesteps(settings.steps) if nonuniform else ddfm_timesteps(settings.steps)


def dig_levels(settings: FusionSettings) -> int:
    """Noise levels at which the sources are evaluated: each recomputation's step and the step S later,
    shared between neighbours; the clean end of the chain needs no evaluation."""
    if settings.mode != "dig":
        return 0
    starts = range(0, settings.steps, settings.dig_interval)
    return len(set(starts) | {i + settings.dig_interval for i in starts if i + settings.dig_interval < settings.steps})


def prior_evaluations(settings: FusionSettings) -> int:
    """Prior evaluations of one tile image: one per step, plus both sources at every DIG level."""
    return settings.steps + 2 * dig_levels(settings)


_LUMA = (0.299, 0.587, 0.114)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """BT.601 full range on signed data: Y in the same range as RGB, Cb/Cr centred on 0."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
    return torch.cat([y, (b - y) / 1.772, (r - y) / 1.402], dim=1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    y, cb, cr = ycbcr[:, 0:1], ycbcr[:, 1:2], ycbcr[:, 2:3]
    r, b = y + 1.402 * cr, y + 1.772 * cb
    g = (y - _LUMA[0] * r - _LUMA[2] * b) / _LUMA[1]
    return torch.cat([r, g, b], dim=1)


def luma(x: torch.Tensor) -> torch.Tensor:
    return rgb_to_ycbcr(x)[:, :1] if x.shape[1] == 3 else x.mean(dim=1, keepdim=True)


def with_luma(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x with its luma replaced by y (chroma kept)."""
    if x.shape[1] != 3:
        return y.expand_as(x)
    return ycbcr_to_rgb(torch.cat([y, rgb_to_ycbcr(x)[:, 1:]], dim=1))


def dig_weights(distances_now: torch.Tensor, distances_later: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over modalities (dim 1) of the information gains (distances at t minus distances at t - S)."""
    return torch.softmax((distances_now - distances_later) / temperature, dim=1)


def _synchronize(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work (timings of asynchronous CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def prior_eps(prior: FusionPrior, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The prior's epsilon (what FastForward runs)."""
    return prior(x, t)


class _DigEstimator:
    """l(c^_k^t, c_k) of each source at each noise level (Eqs. 8-10), one prior evaluation per level, cached."""

    def __init__(self, prior: FusionPrior, sources: torch.Tensor, alphas: torch.Tensor, settings: FusionSettings,
                 trace: FusionTrace):
        self.prior, self.alphas, self.settings, self.trace = prior, alphas, settings, trace
        self.eps = FastForward(prior, prior_eps, len(trace.timesteps) // settings.dig_interval)
        self.sources = sources                                  # (B, 2, H, W): infrared, visible
        b, k, h, w = sources.shape
        generator = torch.Generator().manual_seed(settings.seed + 1)
        self.noise = torch.randn(b, 1, prior.channels, h, w, generator=generator).to(sources)   # shared by both
        self.cache: dict[int, torch.Tensor] = {}

    def at_step(self, i: int, times: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """DIG of both sources at sampler step i (over the next S steps) and their softmax weights."""
        later = i + self.settings.dig_interval
        now = self.distances(times[i])
        then = self.distances(times[later] if later < len(times) else None)
        return now - then, dig_weights(now, then, self.settings.dig_temperature)

    def distances(self, t: int | None) -> torch.Tensor:
        """(B, 2, 1, 1) distances over the tile, or (B, 2, H, W) over the patch around each pixel for spatial
        DIG; t = None is the clean end of the chain (c^ = c, distance 0)."""
        if t is None:
            spatial = self.settings.dig_kind == "spatial"
            b, k, h, w = self.sources.shape
            return self.sources.new_zeros(b, k, h if spatial else 1, w if spatial else 1)
        if t not in self.cache:
            b, k, h, w = self.sources.shape
            clean = self.sources[:, :, None].expand(b, k, self.prior.channels, h, w)
            a = self.alphas[t]
            noised = (a.sqrt() * clean + (1 - a).sqrt() * self.noise).reshape(b * k, -1, h, w)
            eps = self.eps(noised, torch.full((b * k,), t, device=noised.device))
            self.trace.forward_batches.append(b * k)
            estimate = ((noised - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1).reshape(b, k, -1, h, w)
            # the gray source fills every channel of the prior: count it once, whatever the prior's channels
            squared = ((estimate - clean) ** 2).mean(dim=2)                         # (B, 2, H, W)
            self.cache[t] = self._pooled(squared)
        return self.cache[t]

    def _pooled(self, squared: torch.Tensor) -> torch.Tensor:
        if self.settings.dig_kind == "scalar":
            total, count = squared.sum(dim=(2, 3), keepdim=True), squared[0, 0].numel()
        else:
            p = self.settings.dig_patch
            total = F.avg_pool2d(F.pad(squared, (p // 2, (p - 1) // 2) * 2, mode="replicate"), p, 1) * p * p
            count = p * p
        distance = self.settings.dig_distance
        if distance == "l2":
            return total.sqrt()
        return total if distance == "squared_l2" else total / count


@torch.inference_mode()
def dig_trajectory(prior: FusionPrior, infrared: torch.Tensor, visible: torch.Tensor,
                   settings: FusionSettings) -> FusionTrace:
    """Dig2DIG's gains and weights at every recomputation (one entry each in `gains` and `weights`), without
    sampling: they depend only on the sources, the prior and the noise draw, so this is what `fuse` uses, at
    the cost of the DIG evaluations alone."""
    settings.validate()
    alphas = training_scheduler().alphas_cumprod.to(infrared.device).float()
    trace = FusionTrace(timesteps=timesteps_for(settings))
    dig = _DigEstimator(prior, torch.cat([infrared, visible], dim=1), alphas, settings, trace)
    for i in range(0, settings.steps, settings.dig_interval):
        gains, weights = dig.at_step(i, trace.timesteps)
        trace.dig_steps.append(i)
        trace.gains.append(gains)
        trace.weights.append(weights)
    return trace


@torch.inference_mode()
def fuse(prior: FusionPrior, infrared: torch.Tensor, visible: torch.Tensor, settings: FusionSettings,
         progress: Progress | None = None) -> tuple[torch.Tensor, FusionTrace]:
    """Fused luma (B, 1, H, W) in [-1, 1] from infrared and visible luma (B, 1, H, W) in [-1, 1].

    H and W must be multiples of `prior.multiple` (the pipeline pads). The distances of DIG are taken over
    the whole (H, W) tile, so their scale, and with it the sharpness of the weights, depends on the tile
    size: the pipeline always fuses tiles of one size (256 px by default).
    """
    settings.validate()
    scheduler = sampling_scheduler("ddim", timesteps=timesteps_for(settings))
    trace = FusionTrace(timesteps=scheduler.timesteps.tolist())
    generator = torch.Generator().manual_seed(settings.seed)
    b, _, h, w = infrared.shape
    x = torch.randn(b, prior.channels, h, w, generator=generator).to(infrared.device)
    rectification = _Rectification(prior, infrared, visible, settings, trace)
    x = reverse_diffusion(rectification.predict, x, scheduler, x0_hook=rectification.rectify, progress=progress)
    return luma(x).clamp(-1, 1), trace


class _Rectification:
    """DDFM's model function and x0 hook: the prior's epsilon (with Dig2DIG's weights recomputed every S steps
    before it) and one EM rectification of the x0 estimate's luma toward the sources, timed by part."""

    def __init__(self, prior: FusionPrior, infrared: torch.Tensor, visible: torch.Tensor, settings: FusionSettings,
                 trace: FusionTrace):
        self.prior, self.infrared, self.visible, self.settings, self.trace = prior, infrared, visible, settings, trace
        self.eps = FastForward(prior, prior_eps, len(trace.timesteps))
        self.device = infrared.device
        self.state = EmState.initial(infrared)
        self.weights = torch.ones(infrared.shape[0], 2, 1, 1, device=self.device)   # DDFM: both terms at full strength
        alphas = training_scheduler().alphas_cumprod.to(self.device).float()
        self.dig = (_DigEstimator(prior, torch.cat([infrared, visible], dim=1), alphas, settings, trace)
                    if settings.mode == "dig" else None)
        self.clock = _synchronize(self.device)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = len(self.trace.weights)
        if self.dig is not None and i % self.settings.dig_interval == 0:
            gains, new_weights = self.dig.at_step(i, self.trace.timesteps)
            self.trace.gains.append(gains)
            self.weights = 2 * new_weights
            self.trace.dig_steps.append(i)
            self._tick("dig")
        self.trace.weights.append(self.weights / 2)
        eps = self.eps(x, torch.full((x.shape[0],), int(t), device=self.device))
        self.trace.forward_batches.append(x.shape[0])
        self._tick("prior")
        return eps

    def rectify(self, x0: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        fused, self.state = em_step(luma(x0), self.infrared, self.visible, self.state, self.weights[:, :1],
                                    self.weights[:, 1:], self.settings.em_mode)
        self._tick("em")
        return with_luma(x0, fused)

    def _tick(self, part: str) -> None:
        now = _synchronize(self.device)
        self.trace.seconds[part] += now - self.clock
        self.clock = now
