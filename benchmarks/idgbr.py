"""The idgbr section: batched classifier-free guidance speed-up, and the WFm@3px gain of the starter refiner.

cfg_batched_speedup times one denoiser call of classifier-free guidance done as the official code does it
(an unconditional and a conditional forward, one after the other) against our single CFG forward
(IDGBR.predict_cfg: one UNet-encoder pass shared by both branches, the decoder over the stacked 2B rows),
on the starter model at its tile size. wfm3_gain refines the starter segmenter's maps of
held-out procedural scenes (never seen by the segmenter or the refiner) and scores both against the truth.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import step
from core.catalog import starter_model_dir
from core.checkpoint import load_card
from core.data.scenes import write_scene_dataset
from core.device import describe_device, resolve_device
from core.refinement.model import TASK, load_refiner, noise_scheduler
from training.idgbr_data import evaluate_refinement, write_coarse_labels

SPEEDUP_TARGET = 1.3
REPEATS = 15


def bench(cfg: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="rsd-bench-idgbr-") as tmp:
        return {**cfg_speedup(cfg), **wfm_gain(cfg, Path(tmp))}


@torch.inference_mode()
def cfg_speedup(cfg: argparse.Namespace) -> dict:
    device = resolve_device(cfg.device)
    model, card = load_refiner(starter_model_dir(TASK), device)
    batch, size = (2 if cfg.quick else 4), card.tile_size
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, size, size, generator=generator).to(device) * 2 - 1
    coarse = torch.randint(0, len(card.classes), (batch, size, size), generator=generator).to(device)
    conditions = model.condition_features(model.encode_image(image), model.encode_labels(coarse))
    z = torch.randn(model.encode_image(image).shape, generator=generator).to(device)
    t = noise_scheduler().timesteps[0]
    keep_none = torch.zeros(batch, dtype=torch.bool, device=device)

    def separate():
        model.predict(z, t, conditions, keep_none)
        model.predict(z, t, conditions)

    def batched():
        model.predict_cfg(z, t, conditions)

    separate_s, batched_s = best_times(separate, batched, f"{batch} tiles of {size} px")
    speedup = separate_s / batched_s
    threads = torch.get_num_threads()
    figures = {"cfg_batched_speedup": round(speedup, 2), "cfg_batched_speedup_target": SPEEDUP_TARGET,
               "cfg_batched_speedup_pass": speedup >= SPEEDUP_TARGET,
               "cfg_seconds": {"two_forwards": round(separate_s, 4), "one_batched_forward": round(batched_s, 4)},
               "cfg_settings": {"tiles": batch, "tile_px": size, "model": card.name, "device": describe_device(device),
                                "threads": threads}}
    if device.type == "cpu" and threads > 1:   # the same on one thread: what batching gains without parallelism
        torch.set_num_threads(1)
        try:
            one = best_times(separate, batched, f"{batch} tiles of {size} px, one thread")
        finally:
            torch.set_num_threads(threads)
        figures["cfg_batched_speedup_one_thread"] = round(one[0] / one[1], 2)
    return figures


def best_times(separate, batched, what: str) -> tuple[float, float]:
    """Best of REPEATS interleaved runs of each (after a warm-up): other load only ever adds time."""
    times = {"separate": [], "batched": []}
    with step(f"CFG forwards, {what}, best of {REPEATS} interleaved repeats"):
        for fn in (separate, batched):
            fn()
        for _ in range(REPEATS):
            for name, fn in (("separate", separate), ("batched", batched)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return min(times["separate"]), min(times["batched"])


def wfm_gain(cfg: argparse.Namespace, tmp: Path) -> dict:
    card = load_card(starter_model_dir(TASK), task=TASK)
    scenes = 3 if cfg.quick else 16
    with step(f"{scenes} held-out scenes + the starter segmenter's maps of them"):
        data = write_scene_dataset(tmp / "held_out", scenes, 256, seed=3)
        write_coarse_labels(str(data), device=cfg.device)
    with step("refine them (the card's DDIM steps and CFG weight, 1 sample)"):
        evaluate_refinement(str(data), str(tmp / "evaluation"), steps=4 if cfg.quick else 0, device=cfg.device)
    with open(tmp / "evaluation" / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = {row["source"]: {k: float(v) for k, v in row.items() if k != "source"} for row in csv.DictReader(f)}
    keys = ("mIoU", "mF1", "bIoU@3", "WFm@1", "WFm@3", "WFm@5")
    table = {source: {k: round(rows[source][k], 4) for k in keys} for source in ("coarse", "refined")}
    return {"wfm3_gain": round(rows["refined"]["WFm@3"] - rows["coarse"]["WFm@3"], 4),
            "refinement_table": table,
            "refinement_settings": {"held_out_scenes": scenes, "scene_px": 256, "seed": 3,
                                    "coarse_maps": "starter segmenter", "model": "starter refiner",
                                    "guidance_scale": card.extra.get("guidance_scale"),
                                    "sampling_steps": card.extra.get("sampling_steps")}}
