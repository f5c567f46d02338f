"""The one reverse loop every method samples with: DDPM or DDIM (with eta), epsilon / v / x0 models, and hooks.

`reverse_diffusion(model_fn, x_T, scheduler, ...)` walks `scheduler.timesteps`:
- `model_fn(x_t, t)` returns the model's output in the scheduler's prediction type. Classifier-free guidance,
  conditions concatenated to the input and shared-encoder CFG live there (see IDGBR, the SatSynth x2 stage);
- without an x0 hook, diffusers' own `scheduler.step` moves x_t to the next level;
- with `x0_hook(x0, t, i)`, the loop forms the x0 estimate (clipped to [-1, 1] when `clip`), lets the hook
  replace it (SAR-JointNet's label feedback, Eq. 21; DDFM's EM rectification and Dig2DIG's weights),
  recomputes epsilon from the new x0 (DDFM's rule) and takes the DDIM step (eta) from there. This is also the
  path for timesteps that are not uniformly spaced (Dig2DIG's): the next level is the next entry of
  `scheduler.timesteps`, the last step goes to the scheduler's final alpha.
Both paths use diffusers' arithmetic (formulas 12 and 16 of the DDIM paper, in its operation order), so an x0
hook that returns its input gives the same numbers as `scheduler.step`.
"""
from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from core.device import FastForward
from core.diffusion.schedules import TIMESTEPS, schedule_config
from core.progress import Progress

SAMPLERS = ("ddim", "ddpm")
# DDIM's eta (0 = deterministic, 1 = the DDPM posterior's noise at every skipped step). Measured on the SatSynth
# starters (proxy FID, 32 pairs): on the 1800-step one (DDPM-1000 = 7.3) eta 0 -> 19.6, eta 0.5 -> 15.3,
# eta 1 -> 9.1; on the 3000-step one (DDPM-1000 = 12.9) eta 0 -> 36.2, eta 1 -> 12.9. A small, briefly trained
# model's deterministic path drifts off the data; fresh noise at every step corrects it, so eta 1 is the default
# and 0 stays available for reproducible interpolation.
DDIM_ETA = 1.0

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Hook = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def sampling_scheduler(sampler: str = "ddim", steps: int = 50, prediction: str = "epsilon",
                       schedule: str = "linear", clip: bool = True,
                       timesteps: list[int] | None = None, **options) -> DDIMScheduler | DDPMScheduler:
    """A diffusers scheduler of a named schedule with its timesteps set: DDPM always runs all T steps (the
    papers' sampler), DDIM `steps`, or the explicit decreasing `timesteps` (e.g. Dig2DIG's, large steps at high
    noise). `options` go to the scheduler (e.g. SD's steps_offset)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}.")
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    scheduler = cls(**schedule_config(schedule), prediction_type=prediction, clip_sample=clip, **options)
    if timesteps is not None:
        if sampler != "ddim" or any(b >= a for a, b in zip(timesteps, timesteps[1:])):
            raise ValueError("Explicit timesteps need the DDIM sampler and must strictly decrease.")
        scheduler.set_timesteps(len(timesteps))
        scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
    else:
        scheduler.set_timesteps(steps if sampler == "ddim" else TIMESTEPS)
    return scheduler


def reverse_diffusion(model_fn: ModelFn, x: torch.Tensor, scheduler: DDIMScheduler | DDPMScheduler,
                      eta: float = 0.0, generator: torch.Generator | None = None, x0_hook: X0Hook | None = None,
                      progress: Progress | None = None) -> torch.Tensor:
    """x_T -> x_0 along `scheduler.timesteps` (see the module docstring). `eta` is DDIM's (DDPM has its own
    posterior noise); step noise is drawn from `generator`. Clipping of the x0 estimates follows the
    scheduler's `clip_sample`; the result is not clamped."""
    progress = progress or Progress()
    times = scheduler.timesteps
    own_step = x0_hook is not None or not _uniformly_spaced(scheduler)
    if own_step and not isinstance(scheduler, DDIMScheduler):
        raise ValueError("An x0 hook or explicit timesteps need a DDIM scheduler.")
    step_options = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
    for i, t in enumerate(times):
        output = model_fn(x, t)
        if own_step:
            x = _ddim_step(scheduler, output, x, t, times[i + 1] if i + 1 < len(times) else None, eta, generator,
                           lambda x0: x0_hook(x0, t, i) if x0_hook is not None else x0)
        else:
            x = scheduler.step(output, t, x, generator=generator, **step_options).prev_sample
        progress.step(i + 1, len(times))
    return x


def _uniformly_spaced(scheduler: DDIMScheduler | DDPMScheduler) -> bool:
    """Whether diffusers' step finds the next level itself (t - T // steps, as set_timesteps spaces them)."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    times = scheduler.timesteps.tolist()
    return all(a - b == ratio for a, b in zip(times, times[1:]))


def _ddim_step(scheduler: DDIMScheduler, output: torch.Tensor, x: torch.Tensor, t, t_next, eta: float,
               generator: torch.Generator | None, hook: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """diffusers' DDIM step with the x0 estimate passed through `hook` and epsilon recomputed from its result;
    the next level is `t_next` (None: the end of the chain, the scheduler's final alpha)."""
    alphas = scheduler.alphas_cumprod.to(x.device)
    a_t = alphas[t]
    a_next = alphas[t_next] if t_next is not None else scheduler.final_alpha_cumprod.to(x.device)
    beta_t = 1 - a_t
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        x0, eps = (x - beta_t ** 0.5 * output) / a_t ** 0.5, output
    elif prediction == "sample":
        x0, eps = output, (x - a_t ** 0.5 * output) / beta_t ** 0.5
    elif prediction == "v_prediction":
        x0, eps = a_t ** 0.5 * x - beta_t ** 0.5 * output, a_t ** 0.5 * output + beta_t ** 0.5 * x
    else:
        raise ValueError(f"Unknown prediction type '{prediction}'.")
    if scheduler.config.clip_sample:
        x0 = x0.clamp(-1, 1)
    hooked = hook(x0)
    if hooked is not x0:          # as diffusers: epsilon from the model's output unless the hook replaced x0
        x0, eps = hooked, (x - a_t ** 0.5 * hooked) / beta_t ** 0.5
    variance = (1 - a_next) / beta_t * (1 - a_t / a_next)
    std = eta * variance ** 0.5
    x_next = a_next ** 0.5 * x0 + (1 - a_next - std ** 2) ** 0.5 * eps
    if eta > 0:
        x_next = x_next + std * torch.randn(x.shape, generator=generator).to(x)
    return x_next


def unet_sample(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A diffusers UNet's prediction as a plain tensor (what FastForward runs)."""
    return model(x, t).sample


@torch.inference_mode()
def denoise(model: torch.nn.Module, shape: tuple[int, ...], sampler: str = "ddim", steps: int = 50, seed: int = 0,
            progress: Progress | None = None, eta: float = DDIM_ETA, clip: bool = True) -> torch.Tensor:
    """Pure noise of `shape` -> samples (CPU) of an unconditional epsilon model with the linear schedule, in
    [-1, 1] when `clip`; `clip=False` for latents, which are not bounded (no clipping of the x0 estimates, no
    final clamp)."""
    scheduler = sampling_scheduler(sampler, steps, clip=clip)
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(*shape, generator=generator).to(device)
    model.eval()
    net = FastForward(model, unet_sample, len(scheduler.timesteps), progress)
    x = reverse_diffusion(net, x, scheduler, eta, generator, progress=progress)
    return (x.clamp(-1, 1) if clip else x).cpu()
