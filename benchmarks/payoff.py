"""The payoff section: does generated data help where labels are scarce? (issue 20, DAKD so far)

The low-label protocol for SAR oil spills, every step through our own trainers:
1. N_SMALL procedural scenes (10% of the starter's 200) are the only real labelled data. SAR-JointNet (three
   stages) is trained on them alone: no generator sees data the downstream model is denied.
2. It generates GENERATED pairs with soft labels.
3. SAROSS-Net is trained from the same seeds for the same steps with R = 0, 1, 3 generated mosaics per real
   crop in every batch (DAKD at T = 2; R = 0 is the real-only control), SEEDS seeds per R.
4. Each model is scored on held-out procedural scenes (another seed, never trained on) and on the real crops
   of ../shared/data/sar_oilspill (none of them seen by anything).
Diagnostic: label consistency, the R = 0 models' mIoU of the generated images against the generated labels
(pairs whose labels do not match their images teach the wrong thing). Acting on it: R1_consistent trains with
R = 1 on the half of the pairs the first R = 0 model agrees with best (`sar-filter-pairs`); the consistency of
the kept half is scored by the other R = 0 model (which did not choose them).

Budgets are half the starter's (JointNet 400 / 600 / 200 steps, SAROSS-Net 800): the whole table is about an
hour on 2 CPU cores. Runs go to a work folder (RS_DIFFUSION_PAYOFF_WORK, default runs/payoff) and are reused
when their model exists, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from pathlib import Path

from benchmarks.harness import step
from benchmarks.sar import REAL_CROPS, link_real_crops, rounded
from core.data.sar import write_sar_dataset
from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs
from training.config import load_config
from training.sar import (SarJointNetTrainConfig, SarossTrainConfig, evaluate_saross, filter_consistent_pairs,
                          train_jointnet, train_saross)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
N_SMALL, N_FULL, HELD_OUT = 20, 200, 40
RATIOS = (0.0, 1.0, 3.0)
SEEDS = (1, 2)
GENERATED = 128
CONSISTENT_KEEP = 0.5   # share of the generated pairs kept by the label-consistency filter
JOINTNET_STEPS = {1: 400, 2: 600, 3: 200}
SAROSS_STEPS = 800
QUICK = {"jointnet": {1: 20, 2: 20, 3: 10}, "saross": 40, "generated": 16, "seeds": (1,)}
KEYS = ("mIoU", "IoU/oil", "IoU/sea", "predicted/land")


def bench(cfg: argparse.Namespace) -> dict:
    work = Path(os.environ.get("RS_DIFFUSION_PAYOFF_WORK") or "runs/payoff") / ("quick" if cfg.quick else "full")
    return {"dakd": dakd_payoff(cfg, work)}


def _done(run: Path) -> bool:
    return (run / "model" / "model.json").is_file()


def dakd_payoff(cfg: argparse.Namespace, work: Path) -> dict:
    jointnet_steps = QUICK["jointnet"] if cfg.quick else JOINTNET_STEPS
    saross_steps = QUICK["saross"] if cfg.quick else SAROSS_STEPS
    seeds = QUICK["seeds"] if cfg.quick else SEEDS
    count = QUICK["generated"] if cfg.quick else GENERATED
    work.mkdir(parents=True, exist_ok=True)
    small, held_out, generated = work / "scenes_small", work / "scenes_held_out", work / "generated"
    if not (small / "classes.json").is_file():
        with step(f"{N_SMALL} procedural SAR scenes (the only labels) and {HELD_OUT} held-out ones"):
            write_sar_dataset(str(small), N_SMALL, 256, 7, "linear")
            write_sar_dataset(str(held_out), HELD_OUT, 256, 99, "linear")
    previous = ""
    for stage in (1, 2, 3):
        run = work / f"jointnet_stage{stage}"
        if not _done(run):
            config = load_config(SarJointNetTrainConfig, str(CONFIGS / f"sar_jointnet_stage{stage}_starter.toml"))
            config = dataclasses.replace(config, data=str(small), output=str(run), init=previous,
                                         steps=jointnet_steps[stage], device=cfg.device, resume=run.exists())
            with step(f"SAR-JointNet stage {stage} on the {N_SMALL} scenes, {config.steps} steps"):
                train_jointnet(config)
        previous = str(run / "model")
    if not (generated / "index.csv").is_file():
        with step(f"{count} generated pairs (DDIM-50)"):
            synthesize_sar_pairs(SarSynthesisParams(output_dir=str(generated), count=count, model_dir=previous,
                                                    steps=50, seed=1, device=cfg.device))
    crops = link_real_crops(REAL_CROPS, work / "real_crops") if REAL_CROPS.is_dir() else None
    base = load_config(SarossTrainConfig, str(CONFIGS / "saross_starter.toml"))
    cells: dict[str, list[dict]] = {}
    consistency = []
    consistent = work / "generated_consistent"

    def train_and_score(name: str, ratio: float, pairs: Path, seed: int) -> None:
        run = work / f"saross_{name}_seed{seed}"
        if not _done(run):
            config = dataclasses.replace(base, data=str(small), eval_data=str(held_out), output=str(run),
                                         synthetic=str(pairs) if ratio else "", synthetic_ratio=ratio,
                                         steps=saross_steps, val_every=saross_steps, seed=seed,
                                         device=cfg.device, resume=run.exists())
            with step(f"SAROSS-Net {name} seed {seed}, {saross_steps} steps"):
                train_saross(config)
        model = str(run / "model")
        scores = {"procedural": rounded(_pick(evaluate_saross(model, str(held_out), device=cfg.device)), 4)}
        if crops:
            scores["real"] = rounded(_pick(evaluate_saross(model, str(crops), device=cfg.device)), 4)
        cells.setdefault(name, []).append(scores)
        if ratio == 0:
            consistency.append(evaluate_saross(model, str(generated), device=cfg.device)["mIoU"])

    for ratio in RATIOS:
        for seed in seeds:
            train_and_score(f"R{ratio:g}", ratio, generated, seed)
    # Item 3: the pairs the first real-only model agrees with best (training.sar.filter_consistent_pairs)
    if not (consistent / "classes.json").is_file():
        with step(f"keep the {CONSISTENT_KEEP:.0%} most label-consistent generated pairs"):
            filter_consistent_pairs(str(work / f"saross_R0_seed{seeds[0]}" / "model"), str(generated),
                                    str(consistent), CONSISTENT_KEEP, cfg.device)
    for seed in seeds:
        train_and_score("R1_consistent", 1.0, consistent, seed)
    table = {name: _summary(runs) for name, runs in cells.items()}
    gains = {name: {where: round(table[name][where]["mIoU"]["mean"] - table["R0"][where]["mIoU"]["mean"], 4)
                    for where in table[name]} for name in table if name != "R0"}
    spread = {where: max(table[name][where]["mIoU"]["spread"] for name in table) for where in table["R0"]}
    return {"table": table, "miou_gain_over_r0": gains, "largest_seed_spread": spread,
            "label_consistency_miou": round(statistics.fmean(consistency), 4),
            "label_consistency_miou_kept": round(evaluate_saross(
                str(work / f"saross_R0_seed{seeds[-1]}" / "model"), str(consistent), device=cfg.device)["mIoU"], 4),
            "settings": {"n_small": N_SMALL, "n_full": N_FULL, "held_out_scenes": HELD_OUT, "seeds": list(seeds),
                         "generated_pairs": count, "jointnet_steps": jointnet_steps, "saross_steps": saross_steps,
                         "work": str(work),
                         "note": "mean and spread (half the max - min over seeds) per cell; 'real' = the 15 crops "
                                 "of sar_oilspill (sea/oil only, predicted/land = false land); label consistency = "
                                 "the R=0 models' mIoU on the generated pairs"}}


def _pick(result: dict) -> dict:
    return {k: result.get(k, 0.0) for k in KEYS}


def _summary(runs: list[dict]) -> dict:
    """{where: {metric: {mean, spread}}} over the seeds."""
    return {where: {key: {"mean": round(statistics.fmean(r[where][key] for r in runs), 4),
                          "spread": round((max(r[where][key] for r in runs) - min(r[where][key] for r in runs)) / 2, 4)}
                    for key in KEYS} for where in runs[0]}
