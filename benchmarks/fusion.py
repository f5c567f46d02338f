"""The fusion section: Dig2DIG-25 against DDFM-100 with the same prior on real infrared / visible pairs.

Both run through fuse_ir_visible (one tile per pair) with the shipped starter prior on the first
pairs of ../shared/data/irvis_roadscene, interleaved pair by pair so machine load hits both alike.
dig25_vs_ddfm100_speedup is DDFM-100's wall time over DIG-25's (the paper: 180 s / 52 s = 3.46 on
an A6000 with the 552.8M guided-diffusion prior). The metrics (core.metrics.fusion, CDDFuse
conventions) are means over the same pairs; the plain average of the two sources is scored too,
as the floor a fusion method should clear.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import step
from core.catalog import starter_model_dir
from core.data.images import list_fusion_pairs
from core.fusion.pipeline import FusionParams, fuse_ir_visible
from core.fusion.prior import TASK
from core.fusion.sampler import FusionSettings
from core.metrics.fusion import fusion_metrics, to_gray
from core.raster import read_array

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT.parent / "shared" / "data" / "irvis_roadscene"
REPORTED = ("Qabf", "SSIM", "MI", "VIF", "Nabf", "PSNR", "CC", "EN", "SD")
SPEEDUP_TARGET, SEED_SPEEDUP = 3.5, 3.46
METHODS = {"dig25": FusionSettings(mode="dig", steps=25, dig_interval=10),
           "ddfm100": FusionSettings(mode="ddfm", steps=100)}


def bench(cfg: argparse.Namespace, prior_dir: str | Path | None = None, pairs_dir: str | Path = PAIRS) -> dict:
    prior_dir = Path(prior_dir or starter_model_dir(TASK))
    if not (prior_dir / "model.json").is_file():
        raise SystemExit(f"fusion: no fusion prior in {prior_dir} (run `make starter-fusion`).")
    pairs = list_fusion_pairs(pairs_dir)[:2 if cfg.quick else 3]
    seconds = {name: 0.0 for name in METHODS}
    scores: dict[str, list[dict]] = {name: [] for name in (*METHODS, "average")}
    prior = ""
    with tempfile.TemporaryDirectory(prefix="rsd-bench-fusion-") as tmp:
        for infrared, visible in pairs:
            sources = [to_gray(read_array(p)[0]) for p in (infrared, visible)]
            scores["average"].append(fusion_metrics(*sources, np.round((sources[0] + sources[1]) / 2)))
            for name, settings in METHODS.items():
                output = Path(tmp) / f"{name}_{infrared.stem}.tif"
                params = FusionParams(str(infrared), str(visible), str(output), model_dir=str(prior_dir),
                                      settings=dataclasses.replace(settings), tile_size=512, device=cfg.device)
                with step(f"{name} {infrared.name}"):
                    started = time.perf_counter()
                    result = fuse_ir_visible(params)
                    seconds[name] += time.perf_counter() - started
                prior = result.prior
                scores[name].append(fusion_metrics(*sources, to_gray(read_array(output)[0])))
    means = {name: {k: round(float(np.mean([s[k] for s in rows])), 4) for k in REPORTED}
             for name, rows in scores.items()}
    speedup = seconds["ddfm100"] / seconds["dig25"]
    return {
        "dig25_vs_ddfm100_speedup": round(speedup, 2),
        "speedup_target": SPEEDUP_TARGET, "speedup_meets_target": speedup >= SPEEDUP_TARGET,
        "paper_speedup": SEED_SPEEDUP,
        "seconds_per_pair": {name: round(s / len(pairs), 1) for name, s in seconds.items()},
        "metrics_dig25": means["dig25"], "metrics_ddfm100": means["ddfm100"],
        "metrics_average_of_sources": means["average"],
        "dig25_at_least_ddfm100": {k: means["dig25"][k] >= means["ddfm100"][k] for k in ("Qabf", "SSIM")},
        "pairs": [p[0].name for p in pairs], "data": str(Path(pairs_dir).name), "prior": prior,
        "note": "Both with the same prior and pairs, one 512 px tile per pair, DIG-25 = non-uniform 25 steps with "
                "scalar DIG every 10 steps (4 noise levels x 2 sources of extra prior evaluations), DDFM-100 = "
                "uniform 100 steps, fixed weights; EM wiring 'paper'.",
    }
