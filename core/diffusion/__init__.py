"""The diffusion layer every method builds on: named noise schedules, training losses and sampling.

Below the method folders (synthesis, change, oilspill, refinement, fusion) and above the machinery
(raster, tiling, checkpoint, device, progress): a method imports from here, never from another method.
- schedules: T = 1000 and the three named beta schedules the papers use, as diffusers schedulers;
- losses: the diffusion training loss for the scheduler's prediction target (epsilon, v or x0) with
  MSE or the robust MCRD criterion;
- sampling: the one reverse loop every method samples with (DDPM / DDIM with eta; epsilon, v or x0 models;
  a model function for CFG and conditions, an x0 hook for feedback and rectification).
"""
