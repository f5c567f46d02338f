"""The satsynth section: DDIM-50 vs DDPM-1000 speed and proxy FID, and the augment-eval table.

Runs on the shipped starter models. Proxy FID uses the starter segmenter's encoder (no
Inception weights exist here; see core/metrics/fid.py), on 64 px pairs at the base model's
1 m, against real scene crops brought to the same 1 m. The real-vs-real figure (two sets of
real crops, same size) is the noise floor of an FID on this few samples.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import step
from core.catalog import starter_model_dir
from core.data.generated import to_raw
from core.data.scenes import make_scene, write_scene_dataset
from core.device import describe_device, resolve_device
from core.diffusion.sampling import DDIM_ETA
from core.metrics.fid import FEATURE_STAGES, SegmenterFeatures, frechet_distance
from core.segmentation.model import load_segmenter
from core.synthesis.generate import SynthesisParams, load_denoiser, synthesize_pairs
from core.synthesis.satsynth import TASK, sample
from training.augment_eval import AugmentEvalConfig, run_augment_eval

DDIM_TARGET = 0.10       # DDIM-50's proxy FID within 10% of DDPM-1000's
SPEEDUP_TARGET = 15.0
SEGMENTER = {"arch": "FPN", "encoder": "tu-mobilenetv3_small_100", "decoder": {}, "patch_size": 128,
             "tile_size": 256, "batch_size": 8, "samples_per_image": 4, "val_fraction": 0.0, "lr": 2e-3,
             "ema_decay": 0.995, "seed": 3}


def bench(cfg: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rsd-bench-satsynth-") as tmp:
        return {**sampler_figures(cfg), "augment_eval": augment_eval(cfg, Path(tmp))}


def real_crops(count: int, seed: int, factor: int) -> np.ndarray:
    """One random crop per procedural scene (the starter's data), area-downsampled by `factor`."""
    size = 64 * factor
    crops = [make_scene(size, size, seed=seed + i)[0] for i in range(count)]
    return F.avg_pool2d(torch.from_numpy(np.stack(crops).astype(np.float32)), factor).numpy()


def sampler_figures(cfg: argparse.Namespace) -> dict:
    n = 6 if cfg.quick else 32
    device = resolve_device(cfg.device)
    model, card = load_denoiser(str(starter_model_dir(TASK)), TASK, device)
    factor = int(card.extra.get("base_downsample", 1))
    features = SegmenterFeatures(*load_segmenter(cfg.model), device)
    with step(f"{2 * n} real crops -> features"):
        real = features(real_crops(2 * n, seed=50_000, factor=factor))
    generated, seconds = {}, {}
    runs = (("ddim50", "DDIM-50", "ddim", 50, DDIM_ETA), ("ddim50_eta0", "DDIM-50 deterministic", "ddim", 50, 0.0),
            ("ddpm1000", "DDPM-1000", "ddpm", 1000, DDIM_ETA))   # eta: DDIM's only
    for name, label, sampler, steps, eta in runs:
        with step(f"{n} pairs with {label}"):
            start = time.perf_counter()
            generated[name] = sample(model, n, sampler, steps, seed=1, eta=eta)
            seconds[name] = time.perf_counter() - start
    fid = {name: frechet_distance(real[:n], features(to_raw(pairs.images, card).astype(np.float32)))
           for name, pairs in generated.items()}
    floor = frechet_distance(real[:n], real[n:])
    speedup = seconds["ddpm1000"] / seconds["ddim50"]
    gap = fid["ddim50"] / fid["ddpm1000"] - 1
    return {
        "ddim50_speedup": round(speedup, 2), "ddim50_speedup_target": SPEEDUP_TARGET,
        "ddim50_speedup_pass": speedup >= SPEEDUP_TARGET,
        "proxy_fid_ddpm1000": round(fid["ddpm1000"], 3), "proxy_fid_ddim50": round(fid["ddim50"], 3),
        "proxy_fid_ddim50_deterministic": round(fid["ddim50_eta0"], 3), "ddim_eta": DDIM_ETA,
        "proxy_fid_real_vs_real": round(floor, 3),
        "proxy_fid_ddim50_vs_ddpm1000": round(gap, 3), "proxy_fid_target": f"<= +{DDIM_TARGET:.0%}",
        "proxy_fid_pass": gap <= DDIM_TARGET,
        "class_fractions": {name: [round(float((p.labels == k).float().mean()), 3) for k in range(len(card.classes))]
                            for name, p in generated.items()},
        "sampler_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "proxy_fid_settings": {
            "samples": n, "model": card.name, "resolution_m": card.ground_resolution,
            "features": f"starter segmenter encoder ({features.card.architecture['encoder']}), stages "
                        f"{list(FEATURE_STAGES)} globally averaged ({real.shape[1]} dims); not Inception",
            "real": "one crop per procedural scene, area-downsampled to the base model's resolution",
            "device": describe_device(device)},
    }


def augment_eval(cfg: argparse.Namespace, tmp: Path) -> dict:
    """The paper's protocol at a small budget: the generator's own training scenes are D,
    D' = R x |D| patches' worth of generated pairs (x2 stage on), held-out real scenes score."""
    quick = cfg.quick
    scenes, held_out, pairs = (8, 4, 8) if quick else (240, 40, 120)
    with step(f"real D ({scenes} scenes, as make starter-models) and {held_out} held-out scenes"):
        real = write_scene_dataset(tmp / "real", scenes, 256, seed=1)
        evaluation = write_scene_dataset(tmp / "held_out", held_out, 256, seed=2)
    with step(f"{pairs} synthetic pairs (DDIM-25, x2 stage DDIM-25)"):
        synthesize_pairs(SynthesisParams(str(tmp / "synthetic"), count=pairs, steps=25, super_resolution=True,
                                         sr_steps=25, seed=11, device=cfg.device))
    steps = 4 if quick else 300
    rows = run_augment_eval(AugmentEvalConfig(
        data=str(real), synthetic=str(tmp / "synthetic"), eval_data=str(evaluation), output=str(tmp / "runs"),
        ratios=[0, 1, 3], segmenter={**SEGMENTER, "steps": steps}, device=cfg.device))
    return {"table": [{k: r[k] for k in ("R", "mIoU", "mF1", "accuracy")} for r in rows],
            "per_class_iou": {f"R={r['R']:g}": {k[4:]: v for k, v in r.items() if k.startswith("IoU/")}
                              for r in rows},
            "settings": {"real_scenes": scenes, "held_out_scenes": held_out, "synthetic_pairs": pairs,
                         "segmenter": {**SEGMENTER, "steps": steps}}}
