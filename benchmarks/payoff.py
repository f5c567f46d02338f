"""The payoff section: does generated data help where labels are scarce? (issue 20)

One low-label protocol for the three synthesis methods, every step through our own trainers:
1. N_small real labelled samples (about 10% of the method's N_full) are the only labels. The generator is
   trained on them alone (no generator sees data the downstream model is denied), at about half its starter's
   budget: SAR-JointNet (DAKD), SatSynth base + x2 stage, FCF + RDF-MIG (MCRD).
2. It generates a set of pairs (SAR: with soft labels; change: A, B, mask triplets).
3. The downstream model (SAROSS-Net, the FPN segmenter, FC-Siam-conc) is trained from the same seed for the
   same steps with R = 0, 1, 3 generated samples per real one in every batch (R = 0 is the real-only
   control), at least two seeds per R.
4. Each model is scored on held-out data of its domain: procedural scenes / pairs of another seed, and the real
   crops of ../shared/data where the domain has them (sar_oilspill, cd_dsifn); none of them seen by anything.
Diagnostics per generator: label consistency, the R = 0 models scoring the generated images against the
generated labels (pairs whose labels do not match their images teach the wrong thing), and proxy FID against
held-out real data, next to the floor of the N_small real set against the same data. Acting on them (DAKD,
`DAKD_ROWS`): R1_consistent trains with R = 1 on the half of the pairs the first R = 0 model agrees with best
(`sar-filter-pairs`); the consistency of the kept half is scored by the other R = 0 model; R0.25 trains with one
generated mosaic per four real crops, R0.25_kd_scaled the same with the KD weight scaled by the generated share;
R1_hard drops KD (the paper's hard-label ablation); R1_long uses the pairs of a SAR-JointNet trained twice as long
(the starter's budget) on the same N_small scenes.
SatSynth: R1_no_x2 skips the x2 stage; RDF-MIG: the `_long` rows use a generator trained four times longer, the
`_concat` rows the supplement's ablation without FCF ([A, B, mask], every band kept), since `fcf_round_trip` shows
the FCF alone hiding the change from real-only detectors, and the `_fcf2` rows act on both causes: an FCF with two
code channels per date (which keeps colour; `fcf2_round_trip`) under the long generator (`_fcf2_xlong`: twice as
long again, since its masks still cover three times the real share). `paired_gain` summarises each R's gains
over R = 0 of the same seed: the noise a gain must clear is the spread of those paired differences.

About four hours on 2 CPU cores in all (RDF-MIG alone 165 minutes). Runs go to a work folder
(RS_DIFFUSION_PAYOFF_WORK, default runs/payoff) and are reused when their model exists, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F

from benchmarks.harness import step
from benchmarks.sar import REAL_CROPS, link_real_crops, rounded
from benchmarks.satsynth import SEGMENTER
from core.catalog import resolve_model_dir
from core.change.fcf import load_fcf
from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs
from core.data.change import list_change_triplets, write_change_dataset
from core.data.folder import FolderDataset
from core.data.sar import open_sar_dataset, scaled_sample, write_sar_dataset
from core.data.sar_scaling import SarScaling
from core.data.scenes import write_scene_dataset
from core.device import resolve_device
from core.metrics.fid import SegmenterFeatures, frechet_distance
from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs
from core.oilspill.pipeline import load_saross
from core.raster import raster_info, read_array, staged_dir, write_geotiff
from core.segmentation.model import load_segmenter
from core.synthesis.generate import SynthesisParams, synthesize_pairs
from training.augment_eval import AugmentEvalConfig, evaluate_on_real, run_augment_eval
from training.changedet import ChangeDetTrainConfig, evaluate_changedet, train_changedet
from training.config import load_config
from training.fcf import FcfTrainConfig, train_fcf
from training.rdfmig import RdfmigTrainConfig, train_rdfmig
from training.satsynth import SatSynthTrainConfig, train_satsynth
from training.sar import (SarJointNetTrainConfig, SarossTrainConfig, evaluate_saross, filter_consistent_pairs,
                          train_jointnet, train_saross)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
N_SMALL, N_FULL, HELD_OUT = 20, 200, 40
RATIOS = (0.0, 1.0, 3.0)
SEEDS = (1, 2)
GENERATED = 128
CONSISTENT_KEEP = 0.5   # share of the generated pairs kept by the label-consistency filter
LOW_RATIO = 0.25        # item 3's mixing ratio for DAKD: one generated mosaic per four real crops
JOINTNET_STEPS = {1: 400, 2: 600, 3: 200}
SAROSS_STEPS = 800
# DAKD rows: name -> (generated per real, pairs: "generated" or "consistent" (the filtered half), factor on
# lambda_kd). Item 3 acts on the mixing ratio (R0.25), the pairs (R1_consistent, and R1_long: pairs of a generator
# trained twice as long, "generated_long") and the KD term: R1_hard is the paper's own hard- vs soft-label ablation
# (DA without KD); R0.25_kd_scaled scales lambda_kd by the batch's generated share, since the KD term is a mean over
# the soft-labelled pixels alone and so keeps its full weight at any R.
DAKD_ROWS = {"R0": (0.0, "generated", 1.0), "R1": (1.0, "generated", 1.0), "R3": (3.0, "generated", 1.0),
             "R1_consistent": (1.0, "consistent", 1.0), f"R{LOW_RATIO:g}": (LOW_RATIO, "generated", 1.0),
             "R1_hard": (1.0, "generated", 0.0),
             f"R{LOW_RATIO:g}_kd_scaled": (LOW_RATIO, "generated", LOW_RATIO / (1 + LOW_RATIO)),
             "R1_long": (1.0, "generated_long", 1.0)}
QUICK = {"jointnet": {1: 20, 2: 20, 3: 10}, "saross": 40, "generated": 16, "seeds": (1,)}
KEYS = ("mIoU", "IoU/oil", "IoU/sea", "predicted/land")


def bench(cfg: argparse.Namespace) -> dict:
    work = Path(os.environ.get("RS_DIFFUSION_PAYOFF_WORK") or "runs/payoff") / ("quick" if cfg.quick else "full")
    return {"dakd": dakd_payoff(cfg, work), "satsynth": satsynth_payoff(cfg, work), "rdfmig": rdfmig_payoff(cfg, work)}


def _done(run: Path) -> bool:
    return (run / "model" / "model.json").is_file()


def dakd_payoff(cfg: argparse.Namespace, work: Path, rows: dict = DAKD_ROWS) -> dict:
    """DAKD's table for `rows` (R0 first: the other rows are scored against it and it filters the pairs)."""
    jointnet_steps = QUICK["jointnet"] if cfg.quick else JOINTNET_STEPS
    saross_steps = QUICK["saross"] if cfg.quick else SAROSS_STEPS
    seeds = QUICK["seeds"] if cfg.quick else SEEDS
    count = QUICK["generated"] if cfg.quick else GENERATED
    work.mkdir(parents=True, exist_ok=True)
    small, held_out = work / "scenes_small", work / "scenes_held_out"
    if not (small / "classes.json").is_file():
        with step(f"{N_SMALL} procedural SAR scenes (the only labels)"):
            write_sar_dataset(str(small), N_SMALL, 256, 7, "linear")
    _sar_held_out(held_out)
    sets = {"generated": work / "generated", "consistent": work / "generated_consistent",
            "generated_long": work / "generated_long"}
    # generated sets -> (run prefix, steps per stage); "generated_long" at twice the budget (the starter's)
    budgets = {"generated": ("jointnet", jointnet_steps),
               "generated_long": ("jointnet_long", {k: 2 * v for k, v in jointnet_steps.items()})}

    def generate(name: str) -> None:
        """Train SAR-JointNet's three stages on the N_small scenes with the set's budget, then sample its pairs."""
        prefix, steps = budgets[name]
        previous = ""
        for stage in (1, 2, 3):
            run = work / f"{prefix}_stage{stage}"
            if not _done(run):
                config = load_config(SarJointNetTrainConfig, str(CONFIGS / f"sar_jointnet_stage{stage}_starter.toml"))
                config = dataclasses.replace(config, data=str(small), output=str(run), init=previous,
                                             steps=steps[stage], device=cfg.device, resume=run.exists())
                with step(f"SAR-JointNet stage {stage} on the {N_SMALL} scenes, {config.steps} steps"):
                    train_jointnet(config)
            previous = str(run / "model")
        if not (sets[name] / "index.csv").is_file():
            with step(f"{count} generated pairs (DDIM-50) into {sets[name].name}"):
                synthesize_sar_pairs(SarSynthesisParams(output_dir=str(sets[name]), count=count,
                                                        model_dir=previous, steps=50, seed=1, device=cfg.device))

    crops = link_real_crops(REAL_CROPS, work / "real_crops") if REAL_CROPS.is_dir() else None
    cells: dict[str, list[dict]] = {}

    generate("generated")
    for name, (ratio, pairs, kd_factor) in rows.items():
        if pairs in budgets:
            generate(pairs)
        if pairs == "consistent" and not (sets["consistent"] / "classes.json").is_file():
            with step(f"keep the {CONSISTENT_KEEP:.0%} most label-consistent generated pairs"):
                filter_consistent_pairs(str(work / f"saross_R0_seed{seeds[0]}" / "model"), str(sets["generated"]),
                                        str(sets["consistent"]), CONSISTENT_KEEP, cfg.device)
        for seed in seeds:
            cells.setdefault(name, []).append(_saross_cell(
                cfg, work / f"saross_{name}_seed{seed}", small, held_out, crops, sets[pairs], ratio, seed,
                kd_factor, saross_steps))
    controls = [str(work / f"saross_R0_seed{seed}" / "model") for seed in seeds]
    made = {name: folder for name, folder in sets.items() if (folder / "classes.json").is_file()}
    consistency = {name: round(statistics.fmean(
        evaluate_saross(control, str(folder), device=cfg.device)["mIoU"]
        for control in (controls[-1:] if name == "consistent" else controls)), 4) for name, folder in made.items()}
    table = {name: _summary(runs) for name, runs in cells.items()}
    spread = {where: max(table[name][where]["mIoU"]["spread"] for name in table) for where in table["R0"]}
    return {"table": table, "miou_gain_over_r0": _gains(table, "mIoU"),
            "miou_gain_per_seed": _paired_gains(cells, "mIoU"),
            "paired_gain": _paired_summary(_paired_gains(cells, "mIoU")), "largest_seed_spread": spread,
            "proxy_fid": _sar_proxy_fid(controls[0], held_out, {
                **{f"{name}_vs_held_out": folder for name, folder in made.items() if name in budgets},
                "real_training_vs_held_out": small}, cfg.device),
            "label_consistency_miou": consistency,
            "settings": {"n_small": N_SMALL, "n_full": N_FULL, "held_out_scenes": HELD_OUT, "seeds": list(seeds),
                         "generated_pairs": count, "saross_steps": saross_steps, "work": str(work),
                         "jointnet_steps": {name: steps for name, (_, steps) in budgets.items()},
                         "note": "mean, spread (half the max - min over seeds) and std per cell; 'real' = the 15 crops "
                                 "of sar_oilspill (sea/oil only, predicted/land = false land); label consistency = "
                                 "the R=0 models' mIoU on each generated set (the consistent half: the R=0 model "
                                 "that did not choose it)"}}


def _saross_cell(cfg: argparse.Namespace, run: Path, data: Path, held_out: Path, crops: Path | None, pairs: Path,
                 ratio: float, seed: int, kd_factor: float, steps: int) -> dict:
    """Train (or reuse) one SAROSS-Net on `data` + `ratio` generated mosaics per real crop; its scores.
    The starter's config as measured here, before it gained `saturation` (0.5 since; it changes what the models
    call land on the real crops, not what generated pairs add): the tables' runs are trained without it."""
    if not _done(run):
        base = dataclasses.replace(load_config(SarossTrainConfig, str(CONFIGS / "saross_starter.toml")), saturation=0.0)
        ce, dice, kd = base.loss_weights
        config = dataclasses.replace(base, data=str(data), eval_data=str(held_out), output=str(run),
                                     synthetic=str(pairs) if ratio else "", synthetic_ratio=ratio,
                                     loss_weights=[ce, dice, kd * kd_factor], steps=steps, val_every=steps,
                                     seed=seed, device=cfg.device, resume=run.exists())
        with step(f"SAROSS-Net {run.name}, {steps} steps"):
            train_saross(config)
    model = str(run / "model")
    scores = {"procedural": rounded(_pick(evaluate_saross(model, str(held_out), device=cfg.device)), 4)}
    if crops:
        scores["real"] = rounded(_pick(evaluate_saross(model, str(crops), device=cfg.device)), 4)
    return scores


def _sar_proxy_fid(model_dir: Path, reference: Path, sets: dict[str, Path], device: str) -> dict:
    """Proxy FID of SAR sets against `reference` with a real-only SAROSS-Net's encoder (no SAR Inception exists):
    every 64 px crop (the generated pairs' size) of each image, stretched as the model's card says."""
    model, card = load_saross(str(model_dir))
    scaling = SarScaling.from_dict(card.extra.get("sar_scaling"))
    features = SegmenterFeatures(model, card, resolve_device(device))

    def crops(root: Path) -> np.ndarray:
        data = open_sar_dataset(root, skip_unlabelled=True)
        return features(_crops([scaled_sample(data, i, scaling)[0][None] for i in range(len(data.samples))], 64))

    real = crops(reference)
    return {name: round(frechet_distance(real, crops(root)), 3) for name, root in sets.items()}


def _pick(result: dict) -> dict:
    return {k: result.get(k, 0.0) for k in KEYS}


def _summary(runs: list[dict]) -> dict:
    """{where: {metric: {mean, spread, std}}} over the seeds: spread = half the max - min, std = the sample
    standard deviation (0 with one seed)."""
    def cell(values: list[float]) -> dict:
        return {"mean": round(statistics.fmean(values), 4), "spread": round((max(values) - min(values)) / 2, 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
    return {where: {key: cell([r[where][key] for r in runs]) for key in runs[0][where]} for where in runs[0]}


def _gains(table: dict, key: str) -> dict:
    """Each R's mean `key` minus R = 0's, per place scored."""
    return {name: {where: round(table[name][where][key]["mean"] - table["R0"][where][key]["mean"], 4)
                   for where in table[name]} for name in table if name != "R0"}


def _paired_gains(cells: dict[str, list[dict]], key: str) -> dict:
    """Each R's `key` minus R = 0's of the same seed, seed by seed (runs are listed in seed order)."""
    return {name: {where: [round(run[where][key] - control[where][key], 4) for run, control in zip(runs, cells["R0"])]
                   for where in runs[0]} for name, runs in cells.items() if name != "R0"}


def _paired_summary(per_seed: dict) -> dict:
    """The per-seed gains (`_paired_gains`) summarised: mean, spread (half the max - min) and the seeds with a
    positive gain. R and R = 0 of one seed share the real data and the initialisation, so the spread of the paired
    differences, not of either cell, is the noise a gain must clear."""
    return {name: {where: {"mean": round(statistics.fmean(gains), 4),
                           "spread": round((max(gains) - min(gains)) / 2, 4),
                           "positive_seeds": f"{sum(g > 0 for g in gains)}/{len(gains)}"}
                   for where, gains in places.items()} for name, places in per_seed.items()}


def _upsampled_copy(source: Path, target: Path) -> Path:
    """Generated pairs at twice the size and half the pixel size: bilinear image, nearest labels."""
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "classes.json", target / "classes.json")
    for image_path, mask_path in FolderDataset.open(source).pairs:
        info, (image, _), (mask, _) = raster_info(image_path), read_array(image_path), read_array(mask_path)
        transform = (info.transform[0] / 2, 0.0, info.transform[2], 0.0, info.transform[4] / 2, info.transform[5])
        upsampled = F.interpolate(torch.from_numpy(image.astype(np.float32))[None], scale_factor=2,
                                  mode="bilinear", align_corners=False)[0].numpy()
        dtype, mask_dtype = np.dtype(info.dtype), np.dtype(raster_info(mask_path).dtype)
        if np.issubdtype(dtype, np.integer):
            upsampled = np.clip(np.round(upsampled), np.iinfo(dtype).min, np.iinfo(dtype).max)
        write_geotiff(target / "images" / image_path.name, upsampled.astype(dtype), crs_wkt=info.crs_wkt,
                      transform=transform, band_names=info.band_names)
        write_geotiff(target / "masks" / mask_path.name, mask.repeat(2, axis=-2).repeat(2, axis=-1).astype(mask_dtype),
                      crs_wkt=info.crs_wkt, transform=transform)
    return target


def _crops(images: list[np.ndarray], size: int) -> np.ndarray:
    """Every non-overlapping size x size crop of (bands, H, W) images: the proxy FID's samples."""
    return np.stack([image[:, r:r + size, c:c + size] for image in images
                     for r in range(0, image.shape[1] - size + 1, size)
                     for c in range(0, image.shape[2] - size + 1, size)]).astype(np.float32)


def _proxy_fid(cfg: argparse.Namespace, reference: list[np.ndarray], sets: dict[str, list[np.ndarray]],
               size: int) -> dict:
    """Proxy FID (the starter segmenter's encoder; core.metrics.fid) of each set against `reference`."""
    features = SegmenterFeatures(*load_segmenter(cfg.model), resolve_device(cfg.device))
    real = features(_crops(reference, size))
    return {name: round(frechet_distance(real, features(_crops(images, size))), 3) for name, images in sets.items()}


# --- SatSynth ---------------------------------------------------------------------------------------------------------

SATSYNTH = {"n_small": 24, "n_full": 240, "held_out": 40, "base_steps": 1500, "sr_steps": 500, "generated": 72,
            "segmenter_steps": 300, "seeds": (3, 4, 5, 6, 7)}
SATSYNTH_QUICK = {**SATSYNTH, "n_small": 4, "held_out": 2, "base_steps": 4, "sr_steps": 4, "generated": 4,
                  "segmenter_steps": 4, "seeds": (3,)}


def satsynth_payoff(cfg: argparse.Namespace, work: Path) -> dict:
    """N_small procedural scenes are the only labels: the SatSynth base and x2 stages learn them alone (half
    the starter's steps), generate GENERATED pairs (DDIM-25 + x2 DDIM-25), and the bench's FPN segmenter
    trains with R = 0, 1, 3 generated per real patch (training.augment_eval: balanced batches, same steps and
    seed for every R), one run per seed; held-out procedural scenes score."""
    budget = SATSYNTH_QUICK if cfg.quick else SATSYNTH
    small, held_out = work / "satsynth_scenes_small", work / "satsynth_scenes_held_out"
    generated = work / "satsynth_generated"
    if not (small / "classes.json").is_file():
        with step(f"{budget['n_small']} procedural scenes (the only labels)"):
            write_scene_dataset(small, budget["n_small"], 256, seed=1)
    _scenes_held_out(held_out, budget)
    runs = {}
    for stage, toml, steps in (("base", "satsynth_starter.toml", budget["base_steps"]),
                               ("sr", "satsynth_sr_starter.toml", budget["sr_steps"])):
        run = work / f"satsynth_{stage}"
        if not _done(run):
            config = load_config(SatSynthTrainConfig, str(CONFIGS / toml))
            config = dataclasses.replace(config, name=f"payoff SatSynth {stage} ({budget['n_small']} scenes)",
                                         data=str(small), output=str(run), steps=steps, device=cfg.device,
                                         resume=run.exists())
            with step(f"SatSynth {stage} on the {budget['n_small']} scenes, {steps} steps"):
                train_satsynth(config, super_resolution=stage == "sr")
        runs[stage] = str(run / "model")
    if not (generated / "index.csv").is_file():
        with step(f"{budget['generated']} generated pairs (DDIM-25, x2 DDIM-25)"):
            synthesize_pairs(SynthesisParams(str(generated), count=budget["generated"], model_dir=runs["base"],
                                             steps=25, super_resolution=True, sr_model_dir=runs["sr"], sr_steps=25,
                                             seed=11, device=cfg.device))
    cells, consistency = _segmenter_cells(cfg, work / "satsynth_segmenters", small, generated, held_out, budget,
                                          budget["seeds"])
    # Acting on the diagnostics: the x2 stage fitted on N_small scenes draws grain over its images, so R1_no_x2
    # trains on the same base pairs brought to 0.5 m without it (bilinear image, nearest labels: the x2 stage's
    # own condition).
    base_only, no_x2 = work / "satsynth_generated_base", work / "satsynth_generated_no_x2"
    if not (no_x2 / "classes.json").is_file():
        with step(f"the same {budget['generated']} base pairs without the x2 stage, upsampled 2x"):
            synthesize_pairs(SynthesisParams(str(base_only), count=budget["generated"], model_dir=runs["base"],
                                             steps=25, seed=11, device=cfg.device))
            _upsampled_copy(base_only, no_x2)
    consistency_no_x2 = []
    for seed in budget["seeds"]:
        out = work / f"satsynth_segmenters_no_x2_seed{seed}"
        with step(f"FPN segmenter R = 1 without the x2 stage, seed {seed}"):
            rows = run_augment_eval(AugmentEvalConfig(
                data=str(small), synthetic=str(no_x2), eval_data=str(held_out), output=str(out), ratios=[1.0],
                segmenter={**SEGMENTER, "steps": budget["segmenter_steps"], "seed": seed}, device=cfg.device,
                resume=True))
        cells.setdefault("R1_no_x2", []).append(
            {"procedural": {k: v for k, v in rows[0].items() if k in ("mIoU", "mF1") or k.startswith("IoU/")}})
        consistency_no_x2.append(evaluate_on_real(work / f"satsynth_segmenters_seed{seed}" / "R0" / "model",
                                                  FolderDataset.open(no_x2).pairs, cfg.device)["mIoU"])
    table = {name: _summary(rows) for name, rows in cells.items()}
    read = lambda folder: [read_array(image)[0] for image, _ in FolderDataset.open(folder).pairs]   # noqa: E731
    fid = _proxy_fid(cfg, read(held_out), {"generated": read(generated), "no_x2": read(no_x2),
                                           "real_training": read(small)}, 128)
    return {"table": table, "miou_gain_over_r0": _gains(table, "mIoU"),
            "miou_gain_per_seed": _paired_gains(cells, "mIoU"),
            "paired_gain": _paired_summary(_paired_gains(cells, "mIoU")),
            "largest_seed_spread": {"procedural": max(table[n]["procedural"]["mIoU"]["spread"] for n in table)},
            "label_consistency_miou": {"generated": round(statistics.fmean(consistency), 4),
                                       "generated_no_x2": round(statistics.fmean(consistency_no_x2), 4)},
            "proxy_fid": {"generated_vs_held_out": fid["generated"], "generated_no_x2_vs_held_out": fid["no_x2"],
                          "real_training_vs_held_out": fid["real_training"]},
            "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in budget.items()},
                         "segmenter": {**SEGMENTER, "steps": budget["segmenter_steps"]}, "work": str(work),
                         "note": "mean, spread (half the max - min over seeds) and std per cell, held-out procedural "
                                 "scenes (seed 2); label consistency = the R=0 segmenters' mIoU of the generated "
                                 "images against the generated labels; proxy FID on 128 px crops (0.5 m) with the "
                                 "starter segmenter's encoder, generated and the N_small real scenes each against "
                                 "the held-out scenes"}}


def _segmenter_cells(cfg: argparse.Namespace, prefix: Path, data: Path, generated: Path, held_out: Path, budget: dict,
                     seeds) -> tuple[dict[str, list[dict]], list[float]]:
    """The FPN segmenter trained with R = 0, 1, 3 per seed (runs in `prefix`_seed<N>, reused when done): the cells of
    the table, and the R = 0 models' mIoU on the generated pairs (label consistency)."""
    cells: dict[str, list[dict]] = {}
    consistency = []
    for seed in seeds:
        out = prefix.parent / f"{prefix.name}_seed{seed}"
        with step(f"FPN segmenters R = 0, 1, 3 on {data.name}, seed {seed}, {budget['segmenter_steps']} steps each"):
            rows = run_augment_eval(AugmentEvalConfig(
                data=str(data), synthetic=str(generated), eval_data=str(held_out), output=str(out),
                ratios=list(RATIOS), segmenter={**SEGMENTER, "steps": budget["segmenter_steps"], "seed": seed},
                device=cfg.device, resume=True))
        for row in rows:
            cells.setdefault(f"R{row['R']:g}", []).append(
                {"procedural": {k: v for k, v in row.items() if k in ("mIoU", "mF1") or k.startswith("IoU/")}})
        consistency.append(evaluate_on_real(out / "R0" / "model", FolderDataset.open(generated).pairs,
                                            cfg.device)["mIoU"])
    return cells, consistency


# --- RDF-MIG ----------------------------------------------------------------------------------------------------------

RDFMIG = {"n_small": 6, "n_full": 60, "held_out": 20, "size": 128, "fcf_steps": 500, "joint_steps": 500,
          "joint_steps_long": 2000, "joint_steps_xlong": 4000, "generated": 24, "detector_steps": 400, "seeds": (4, 5)}
RDFMIG_QUICK = {**RDFMIG, "n_small": 2, "held_out": 2, "fcf_steps": 4, "joint_steps": 4, "joint_steps_long": 6,
                "joint_steps_xlong": 8, "generated": 4, "detector_steps": 4, "seeds": (4,)}
DSIFN = REAL_CROPS.parent / "cd_dsifn"
CHANGE_KEYS = ("IoU", "F1", "recall", "precision")


def rdfmig_payoff(cfg: argparse.Namespace, work: Path) -> dict:
    """N_small procedural change pairs (10% of the rdfmig section's 60) are the only labels: the FCF and the
    RDF-MIG joint model (MCRD) learn them alone, generate GENERATED triplets (DDIM-50), and FC-Siam-conc trains
    with R = 0, 1, 3 generated patches per real one in every batch, same steps and seed for every R; held-out
    procedural pairs (clean masks) and the real DSIFN pairs of ../shared/data score."""
    budget = RDFMIG_QUICK if cfg.quick else RDFMIG
    small, held_out = work / "rdfmig_pairs_small", work / "rdfmig_pairs_held_out"
    if not (small / "label").is_dir():
        with step(f"{budget['n_small']} procedural change pairs (the only labels)"):
            write_change_dataset(small, budget["n_small"], budget["size"], seed=101)
    _pairs_held_out(held_out, budget)
    fcf, fcf2 = work / "rdfmig_fcf", work / "rdfmig_fcf2"
    for folder, code_channels in ((fcf, 1), (fcf2, 2)):
        if not _done(folder):
            config = load_config(FcfTrainConfig, str(CONFIGS / "fcf_starter.toml"))
            config = dataclasses.replace(config, name=f"payoff FCF ({budget['n_small']} pairs, {code_channels} code "
                                         f"channel(s))", data=str(small), output=str(folder), steps=budget["fcf_steps"],
                                         code_channels=code_channels, device=cfg.device, resume=folder.exists())
            with step(f"FCF ({code_channels} code channel(s)) on the {budget['n_small']} pairs, {config.steps} steps"):
                train_fcf(config)
    cells: dict[str, list[dict]] = {}
    consistency: dict[str, list[float]] = {}
    sets = {}
    # Acting on the diagnostics: at joint_steps the generator draws texture without scenes and masks its images
    # do not show (consistency near 0), so the `_long` rows use the same recipe trained joint_steps_long steps.
    # The FCF round trip alone already hides the change from real-trained detectors (its one-channel code loses
    # the colour of new roofs: `fcf_round_trip`), so the `_concat` rows use the paper's ablation [A, B, mask],
    # which keeps every band, at the base budget, and the `_fcf2` rows an FCF with two code channels per date (the
    # colour comes back: `fcf2_round_trip`) at the long budget; its masks cover three times the real pairs' share,
    # so `_fcf2_xlong` trains the same generator twice as long again.
    for variant, steps, representation, fcf_dir in (("", budget["joint_steps"], "fcf", fcf),
                                                    ("_concat", budget["joint_steps"], "concat", fcf),
                                                    ("_long", budget["joint_steps_long"], "fcf", fcf),
                                                    ("_fcf2", budget["joint_steps_long"], "fcf", fcf2),
                                                    ("_fcf2_xlong", budget["joint_steps_xlong"], "fcf", fcf2)):
        joint, generated = work / f"rdfmig_joint{variant}", work / f"rdfmig_generated{variant}"
        if not _done(joint):
            config = load_config(RdfmigTrainConfig, str(CONFIGS / "rdfmig_starter.toml"))
            config = dataclasses.replace(config, name=f"payoff RDF-MIG ({budget['n_small']} pairs, {representation}, "
                                         f"{steps} steps)", data=str(small), output=str(joint),
                                         fcf=str(fcf_dir / "model"), representation=representation, steps=steps,
                                         val_every=0, device=cfg.device, resume=joint.exists())
            with step(f"RDF-MIG{variant} ({representation} + MCRD) on the {budget['n_small']} pairs, {steps} steps"):
                train_rdfmig(config)
        if not (generated / "index.csv").is_file():
            with step(f"{budget['generated']} generated triplets (DDIM-50), generator of {steps} steps"):
                synthesize_change_pairs(ChangeSynthesisParams(str(generated), count=budget["generated"],
                                                              model_dir=str(joint / "model"), steps=50, seed=7,
                                                              device=cfg.device))
        sets[f"generated{variant}"] = generated
        for ratio in RATIOS if not variant else RATIOS[1:]:
            for seed in budget["seeds"]:
                name = f"R{ratio:g}{variant}"
                cells.setdefault(name, []).append(_detector_cell(
                    cfg, work / f"rdfmig_detector_{name}_seed{seed}", small, held_out, generated, ratio, seed,
                    budget["detector_steps"]))
        for seed in budget["seeds"]:
            control = work / f"rdfmig_detector_R0_seed{seed}" / "model"
            consistency.setdefault(f"generated{variant}", []).append(
                evaluate_changedet(str(control), str(generated), device=cfg.device)["IoU"])
    table = {name: _summary(rows) for name, rows in cells.items()}
    read_b = lambda folder: [read_array(b)[0] for _, b, _ in list_change_triplets(folder)]   # noqa: E731
    fid = _proxy_fid(cfg, read_b(held_out), {**{name: read_b(folder) for name, folder in sets.items()},
                                             "real_training": read_b(small)}, 64)
    controls = [work / f"rdfmig_detector_R0_seed{seed}" / "model" for seed in budget["seeds"]]
    return {"table": table, "iou_gain_over_r0": _gains(table, "IoU"),
            "iou_gain_per_seed": _paired_gains(cells, "IoU"),
            "paired_gain": _paired_summary(_paired_gains(cells, "IoU")),
            "largest_seed_spread": {where: max(table[n][where]["IoU"]["spread"] for n in table)
                                    for where in table["R0"]},
            "label_consistency_iou": {name: round(statistics.fmean(values), 4) for name, values in consistency.items()},
            "changed_fraction": {name: round(_changed_fraction(folder), 4)
                                 for name, folder in {**sets, "real_training": small}.items()},
            "change_contrast": {name: round(_change_contrast(folder), 2)
                                for name, folder in {**sets, "real_training": small}.items()},
            "proxy_fid_b_images": {f"{name}_vs_held_out": value for name, value in fid.items()},
            "fcf_round_trip": _fcf_round_trip(cfg, fcf / "model", held_out, work / "rdfmig_held_out_fcf_round_trip",
                                              controls),
            "fcf2_round_trip": _fcf_round_trip(cfg, fcf2 / "model", held_out,
                                               work / "rdfmig_held_out_fcf2_round_trip", controls),
            "settings": {**{k: list(v) if isinstance(v, tuple) else v for k, v in budget.items()}, "work": str(work),
                         "note": "mean, spread (half the max - min over seeds) and std per cell of change IoU / F1 / "
                                 "recall / precision; 'real' = the DSIFN pairs of ../shared/data/cd_dsifn (none "
                                 "trained on); label consistency = the R=0 detectors' change IoU on the generated "
                                 "triplets; proxy FID of date-B images on 64 px crops with the starter segmenter's "
                                 "encoder, generated and the N_small real pairs each against the held-out pairs"}}


def _detector_cell(cfg: argparse.Namespace, run: Path, data: Path, held_out: Path, generated: Path, ratio: float,
                   seed: int, steps: int) -> dict:
    """Train (or reuse) one FC-Siam-conc on `data` + `ratio` generated patches per real one; its scores."""
    if not _done(run):
        with step(f"FC-Siam-conc {run.name}, {steps} steps"):
            train_changedet(ChangeDetTrainConfig(
                data=str(data), output=str(run), synthetic=str(generated) if ratio else "", synthetic_ratio=ratio,
                eval_data=str(held_out), steps=steps, val_every=steps, checkpoint_every=10 ** 6, seed=seed,
                device=cfg.device, resume=run.exists()))
    scores = {"procedural": _change_scores(run, held_out, cfg.device)}
    if DSIFN.is_dir():
        scores["real"] = _change_scores(run, DSIFN, cfg.device)
    return scores


def _changed_fraction(folder: Path) -> float:
    """Share of changed pixels over a change folder's masks."""
    return float(np.mean([(read_array(mask)[0] > 0).mean() for _, _, mask in list_change_triplets(folder)]))


def _change_contrast(folder: Path) -> float:
    """Mean |B - A| inside the change masks over the mean outside, over a change folder: how strongly the images
    change where the labels say they do (about 4.5 for the procedural pairs; 1 when masks and images are unrelated)."""
    inside, outside = [], []
    for a, b, mask in list_change_triplets(folder):
        changed = read_array(mask)[0][0] > 0
        if changed.any() and not changed.all():
            difference = np.abs(read_array(b)[0].astype(np.float64) - read_array(a)[0]).mean(axis=0)
            inside.append(difference[changed].mean())
            outside.append(difference[~changed].mean())
    return float(np.mean(inside) / np.mean(outside)) if inside else float("nan")


def _fcf_round_trip(cfg: argparse.Namespace, fcf_dir: Path, source: Path, target: Path, detectors: list[Path]) -> dict:
    """The real-only detectors' change IoU on `source` pairs (8-bit, as the procedural ones) as they are and after
    A and B went through the FCF (encode, decode): what a perfect generator on this FCF could at best show them."""
    if not (target / "label").is_dir():
        fcf, card = load_fcf(fcf_dir)
        offset = np.asarray(card.normalization.offset, dtype=np.float32)[:, None, None]
        scale = np.asarray(card.normalization.scale, dtype=np.float32)[:, None, None]
        with staged_dir(target) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            for triplet in list_change_triplets(staging):
                for image in triplet[:2]:
                    with rasterio.open(image, "r+") as dataset:
                        if dataset.dtypes[0] != "uint8":
                            raise ValueError(f"{image}: the FCF round trip reads 8-bit pairs, not {dataset.dtypes[0]}.")
                        x = torch.from_numpy((dataset.read().astype(np.float32) - offset) / scale)
                        with torch.no_grad():
                            restored = fcf(x[None])[0].numpy() * scale + offset
                        dataset.write(np.clip(np.round(restored), 0, 255).astype(np.uint8))
    score = lambda folder: round(statistics.fmean(   # noqa: E731
        evaluate_changedet(str(detector), str(folder), device=cfg.device)["IoU"] for detector in detectors), 4)
    return {"as_is": score(source), "fcf_round_trip": score(target), **_colour_errors(source, target)}


def _colour_errors(source: Path, target: Path) -> dict:
    """Mean absolute error (8-bit levels) of the round-tripped date-B images, split into luminance (band mean)
    and chroma (each band minus the band mean), over all pixels and over the changed ones."""
    errors: dict[str, list[float]] = {"luminance": [], "chroma": [], "chroma_changed": []}
    for (_, b, mask), (_, restored, _) in zip(list_change_triplets(source), list_change_triplets(target)):
        x, y = read_array(b)[0].astype(np.float64), read_array(restored)[0].astype(np.float64)
        chroma = np.abs((x - x.mean(axis=0)) - (y - y.mean(axis=0))).mean(axis=0)
        errors["luminance"].append(np.abs(x.mean(axis=0) - y.mean(axis=0)).mean())
        errors["chroma"].append(chroma.mean())
        changed = read_array(mask)[0][0] > 0
        if changed.any():
            errors["chroma_changed"].append(chroma[changed].mean())
    return {f"{name}_mae": round(float(np.mean(values)), 2) for name, values in errors.items()}


def _change_scores(run: Path, data: Path, device: str) -> dict:
    metrics = evaluate_changedet(str(run / "model"), str(data), device=device)
    return {k: round(float(metrics[k]), 4) for k in CHANGE_KEYS}


# --- held-out sets, shared by N_small and N_full ----------------------------------------------------------------------

def _sar_held_out(folder: Path) -> None:
    if not (folder / "classes.json").is_file():
        with step(f"{HELD_OUT} held-out procedural SAR scenes"):
            write_sar_dataset(str(folder), HELD_OUT, 256, 99, "linear")


def _scenes_held_out(folder: Path, budget: dict) -> None:
    if not (folder / "classes.json").is_file():
        with step(f"{budget['held_out']} held-out procedural scenes"):
            write_scene_dataset(folder, budget["held_out"], 256, seed=2)


def _pairs_held_out(folder: Path, budget: dict) -> None:
    if not (folder / "label").is_dir():
        with step(f"{budget['held_out']} held-out procedural change pairs"):
            write_change_dataset(folder, budget["held_out"], budget["size"], seed=202)


# --- N_full: the same protocol with today's full real sets ----------------------------------------------------------
# The generator at N_full is the shipped starter: it was trained on exactly the full set written here (the
# Makefile's command, same seed), so no generator sees data the downstream model is denied. Its budget is the
# starter's (about twice the N_small generators'); the downstream trainers, steps, seeds, R, pool sizes and
# held-out sets are the N_small tables'. Section `synthesis_payoff_full` (about an hour on 2 CPU cores).

FULL_QUICK_COUNT = 4


def bench_full(cfg: argparse.Namespace) -> dict:
    work = Path(os.environ.get("RS_DIFFUSION_PAYOFF_WORK") or "runs/payoff") / ("quick" if cfg.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    return {"dakd": dakd_full(cfg, work), "satsynth": satsynth_full(cfg, work), "rdfmig": rdfmig_full(cfg, work)}


def _report(cells: dict[str, list[dict]], key: str) -> dict:
    """The table over seeds, each R's gain over R = 0 (mean and seed by seed) and the largest seed spread."""
    table = {name: _summary(runs) for name, runs in cells.items()}
    return {"table": table, "gain_over_r0": _gains(table, key), "gain_per_seed": _paired_gains(cells, key),
            "paired_gain": _paired_summary(_paired_gains(cells, key)),
            "largest_seed_spread": {where: max(table[n][where][key]["spread"] for n in table)
                                    for where in table["R0"]}}


def dakd_full(cfg: argparse.Namespace, work: Path) -> dict:
    """DAKD at N_full: the 200 scenes of `make starter-sar`, pairs from the shipped SAR-JointNet."""
    saross_steps = QUICK["saross"] if cfg.quick else SAROSS_STEPS
    seeds = QUICK["seeds"] if cfg.quick else SEEDS
    count = QUICK["generated"] if cfg.quick else GENERATED
    n_full = FULL_QUICK_COUNT if cfg.quick else N_FULL
    full, held_out, generated = work / "sar_scenes_full", work / "scenes_held_out", work / "sar_generated_starter"
    if not (full / "classes.json").is_file():
        with step(f"the SAR starter's {n_full} procedural scenes (make starter-sar)"):
            write_sar_dataset(str(full), n_full, 256, 7, "linear")
    _sar_held_out(held_out)
    if not (generated / "index.csv").is_file():
        with step(f"{count} pairs from the shipped SAR-JointNet (DDIM-50)"):
            synthesize_sar_pairs(SarSynthesisParams(output_dir=str(generated), count=count, steps=50, seed=1,
                                                    device=cfg.device))
    crops = link_real_crops(REAL_CROPS, work / "real_crops") if REAL_CROPS.is_dir() else None
    cells: dict[str, list[dict]] = {}
    for ratio in RATIOS:
        for seed in seeds:
            cells.setdefault(f"R{ratio:g}", []).append(_saross_cell(
                cfg, work / f"saross_full_R{ratio:g}_seed{seed}", full, held_out, crops, generated, ratio, seed,
                1.0, saross_steps))
    controls = [str(work / f"saross_full_R0_seed{seed}" / "model") for seed in seeds]
    return {**_report(cells, "mIoU"),
            "label_consistency_miou": round(statistics.fmean(
                evaluate_saross(control, str(generated), device=cfg.device)["mIoU"] for control in controls), 4),
            "proxy_fid": _sar_proxy_fid(controls[0], held_out, {"generated_vs_held_out": generated,
                                                                "real_training_vs_held_out": full}, cfg.device),
            "settings": {"n_full": n_full, "generator": "resources/models/sar_jointnet_starter (800/1200/400 steps)",
                         "held_out_scenes": HELD_OUT, "seeds": list(seeds), "generated_pairs": count,
                         "saross_steps": saross_steps, "work": str(work),
                         "note": "as synthesis_payoff.dakd, with the full real set and the shipped generator"}}


def satsynth_full(cfg: argparse.Namespace, work: Path) -> dict:
    """SatSynth at N_full: the 240 scenes of `make starter-satsynth`, pairs from the shipped base + x2 models."""
    budget = SATSYNTH_QUICK if cfg.quick else SATSYNTH
    n_full = FULL_QUICK_COUNT if cfg.quick else budget["n_full"]
    seeds = budget["seeds"][:2]
    full, held_out = work / "satsynth_scenes_full", work / "satsynth_scenes_held_out"
    generated = work / "satsynth_generated_starter"
    if not (full / "classes.json").is_file():
        with step(f"the SatSynth starter's {n_full} procedural scenes (make starter-satsynth)"):
            write_scene_dataset(full, n_full, 256, seed=1)
    _scenes_held_out(held_out, budget)
    if not (generated / "index.csv").is_file():
        with step(f"{budget['generated']} pairs from the shipped SatSynth (DDIM-25, x2 DDIM-25)"):
            synthesize_pairs(SynthesisParams(str(generated), count=budget["generated"], steps=25,
                                             super_resolution=True, sr_steps=25, seed=11, device=cfg.device))
    cells, consistency = _segmenter_cells(cfg, work / "satsynth_full_segmenters", full, generated, held_out, budget,
                                          seeds)
    read = lambda folder: [read_array(image)[0] for image, _ in FolderDataset.open(folder).pairs]   # noqa: E731
    fid = _proxy_fid(cfg, read(held_out), {"generated": read(generated), "real_training": read(full)}, 128)
    return {**_report(cells, "mIoU"), "label_consistency_miou": round(statistics.fmean(consistency), 4),
            "proxy_fid": {f"{name}_vs_held_out": value for name, value in fid.items()},
            "settings": {"n_full": n_full, "generator": "resources/models/satsynth_starter + satsynth_sr_starter "
                         "(3000 + 1000 steps)", "held_out": budget["held_out"], "seeds": list(seeds),
                         "generated": budget["generated"], "segmenter_steps": budget["segmenter_steps"],
                         "work": str(work),
                         "note": "as synthesis_payoff.satsynth, with the full real set and the shipped generator"}}


def rdfmig_full(cfg: argparse.Namespace, work: Path) -> dict:
    """RDF-MIG at N_full: the 120 pairs of 256 px of `make starter-rdfmig` (the set the shipped RDF-MIG learned;
    the rdfmig section's own 60 pairs were never a generator's training set), triplets from the shipped model."""
    budget = RDFMIG_QUICK if cfg.quick else RDFMIG
    n_full = FULL_QUICK_COUNT if cfg.quick else 120
    full, held_out = work / "rdfmig_pairs_full", work / "rdfmig_pairs_held_out"
    generated = work / "rdfmig_generated_starter"
    if not (full / "label").is_dir():
        with step(f"the RDF-MIG starter's {n_full} procedural change pairs (make starter-rdfmig)"):
            write_change_dataset(full, n_full, 256, seed=0)
    _pairs_held_out(held_out, budget)
    if not (generated / "index.csv").is_file():
        with step(f"{budget['generated']} triplets from the shipped RDF-MIG (DDIM-50)"):
            synthesize_change_pairs(ChangeSynthesisParams(str(generated), count=budget["generated"], steps=50, seed=7,
                                                          device=cfg.device))
    cells: dict[str, list[dict]] = {}
    for ratio in RATIOS:
        for seed in budget["seeds"]:
            cells.setdefault(f"R{ratio:g}", []).append(_detector_cell(
                cfg, work / f"rdfmig_detector_full_R{ratio:g}_seed{seed}", full, held_out, generated, ratio, seed,
                budget["detector_steps"]))
    controls = [work / f"rdfmig_detector_full_R0_seed{seed}" / "model" for seed in budget["seeds"]]
    read_b = lambda folder: [read_array(b)[0] for _, b, _ in list_change_triplets(folder)]   # noqa: E731
    fid = _proxy_fid(cfg, read_b(held_out), {"generated": read_b(generated), "real_training": read_b(full)}, 64)
    return {**_report(cells, "IoU"),
            "label_consistency_iou": round(statistics.fmean(
                evaluate_changedet(str(control), str(generated), device=cfg.device)["IoU"] for control in controls), 4),
            "changed_fraction": {"generated": round(_changed_fraction(generated), 4),
                                 "real_training": round(_changed_fraction(full), 4)},
            "change_contrast": {"generated": round(_change_contrast(generated), 2),
                                "real_training": round(_change_contrast(full), 2)},
            "fcf_round_trip": _fcf_round_trip(cfg, Path(resolve_model_dir("", "fcf")), held_out,
                                              work / "rdfmig_held_out_fcf_round_trip_starter", controls),
            "proxy_fid_b_images": {f"{name}_vs_held_out": value for name, value in fid.items()},
            "settings": {"n_full": n_full, "pair_size": 256, "generator": "resources/models/rdfmig_starter "
                         "(1500 steps, on the fcf_starter)", "held_out": budget["held_out"],
                         "seeds": list(budget["seeds"]), "generated": budget["generated"],
                         "detector_steps": budget["detector_steps"], "work": str(work),
                         "note": "as synthesis_payoff.rdfmig, with the full real set and the shipped generator"}}
