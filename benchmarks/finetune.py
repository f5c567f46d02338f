"""The finetune section: does fitting a starter to a user's own labelled layers (training.finetune.fit_to_layers,
the call behind rsdiffusion:train_*) beat the starter and a trivial baseline on real imagery nobody here trained on?

Each task trains on one part of ../shared/data and is scored on a part never used in training, through the same
pipelines a user runs afterwards (detect_oil_spills, detect_changes, segment_raster):
- oil spills (sar_oilspill): the 4 train/ crops (SAR left half, mask right half, black = oil at < 128) as one 2 x 2
  mosaic; scored on the 11 test/ crops, each its own scene. Oil IoU / F1 and the share of pixels called land
  (there is none). Baseline: Gaussian blur + Otsu per crop, dark = oil.
- change (cd_dsifn): the first 6 pairs (sorted by name) as one 3 x 2 mosaic; scored on the last 4 pairs, each
  alone. Change IoU / F1. Baseline: mean |A - B| over bands, blurred, Otsu per pair.
- segmentation (seg_isprs, Potsdam RGB and Vaihingen NIR-R-G): one fit per crop on its top half, scored on its
  bottom half (0 = ignored). mIoU over the ISPRS classes present (impervious, building, low vegetation, tree, car)
  for the fine-tuned model and the majority class of the top half. The starter's classes differ: it is scored on
  3 merged classes both have (impervious = its "road", building, vegetation = low vegetation + tree; car pixels
  left out, its "bare soil" / "water" count as wrong); the fine-tuned model and the baseline are scored the same
  way too.
The PNG / JPEG inputs carry no CRS: they are written as GeoTIFFs with a dummy UTM CRS and 0.5 m pixels (the
starters' resolution). Budgets are the fit's defaults (training.finetune.DEFAULT_STEPS: 120 oil, 300 change, 160
segmentation optimiser steps of 4 patches of 128 px), each fit capped at MINUTES so that the whole section ends within
about 15 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

from benchmarks.harness import step
from core.device import describe_device, resolve_device

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CRS = "EPSG:32632"            # dummy: the crops carry no CRS
PIXEL_M = 0.5
PATCH = 128
MINUTES = {"oilspill": 3.0, "change": 3.0, "segmentation": 3.0}   # caps, so a loaded machine still ends in time
QUICK_STEPS = 4
BLUR_SIGMA = 2.0
CHANGE_TRAIN_PAIRS = 6
# ISPRS values (1 impervious, 2 building, 3 low vegetation, 4 tree, 5 car) -> the label values the fit is given:
# those with a starter class of the same meaning take its value (1 vegetation, 3 road, 4 building), the others new ones.
ISPRS_NAMES = {1: "impervious", 2: "building", 3: "low vegetation", 4: "tree", 5: "car"}
ISPRS_TO_FIT = {1: 3, 2: 4, 3: 1, 4: 5, 5: 6}
LABEL_NODATA = 255
# The 3 classes the starter and ISPRS share: ISPRS values and starter values merged into each.
MERGED = {"impervious": ({1}, {3}), "building": ({2}, {4}), "vegetation": ({3, 4}, {1})}


def bench(cfg: argparse.Namespace) -> dict:
    if not DATA.is_dir():
        return {"skipped": f"{DATA} not found (the real crops live in ../shared/data)"}
    from training.finetune import DEFAULT_STEPS
    steps = {k: QUICK_STEPS if cfg.quick else v for k, v in DEFAULT_STEPS.items()}
    result = {"settings": {"patch_size": PATCH, "batch_size": 4, "steps": steps, "minutes_cap": MINUTES,
                           "device": describe_device(resolve_device(cfg.device)), "pixel_m": PIXEL_M}}
    with tempfile.TemporaryDirectory(prefix="rsd-bench-finetune-") as tmp:
        tmp = Path(tmp)
        for name, run in (("oilspill", oilspill), ("change", change), ("segmentation", segmentation)):
            folder = tmp / name
            folder.mkdir()
            result[name] = run(cfg, folder, steps[name])
    return result


# --- oil spills ---------------------------------------------------------------------------------------------------

def oilspill(cfg: argparse.Namespace, tmp: Path, steps: int) -> dict:
    from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
    train = [read_sar_crop(p) for p in sorted((DATA / "sar_oilspill" / "train").glob("*.jpg"))]
    test = {p.stem: read_sar_crop(p) for p in sorted((DATA / "sar_oilspill" / "test").glob("*.jpg"))}
    sar = np.block([[train[0][0], train[1][0]], [train[2][0], train[3][0]]])
    oil = np.block([[train[0][1], train[1][1]], [train[2][1], train[3][1]]])
    write_tif(tmp / "train_sar.tif", sar)
    write_tif(tmp / "train_labels.tif", oil.astype(np.uint8))    # 0 sea, 1 oil: the starter's values
    fit = run_fit(cfg, "oilspill", tmp, steps, image_path=str(tmp / "train_sar.tif"),
                  labels_path=str(tmp / "train_labels.tif"))
    counts = {k: np.zeros(4, np.int64) for k in ("starter", "fine_tuned", "baseline")}   # tp, fp, fn, land
    pixels = 0
    with step(f"detect_oil_spills on {len(test)} test crops, starter and fine-tuned; blur + Otsu"):
        for name, (image, truth) in test.items():
            write_tif(tmp / f"{name}.tif", image)
            for key, model in (("starter", ""), ("fine_tuned", fit["model_dir"])):
                out = tmp / f"{name}_{key}.tif"
                detect_oil_spills(OilSpillParams(str(tmp / f"{name}.tif"), str(out), model_dir=model,
                                                 device=cfg.device))
                pred = read_tif(out)
                counts[key] += [*confusion(pred == 1, truth), np.count_nonzero(pred == 4)]
            dark = otsu_below(gaussian_filter(image.astype(np.float32), BLUR_SIGMA))
            counts["baseline"] += [*confusion(dark, truth), 0]
            pixels += truth.size
    table = {key: {**iou_f1(*c[:3]), "land_share": round(float(c[3] / pixels), 4)} for key, c in counts.items()}
    return {**table, "fit": fit, "train": "4 train/ crops as one 512 x 512 mosaic",
            "test": f"{len(test)} test/ crops ({pixels} px), oil = mask < 128",
            "note": "land_share: pixels called land on open sea; the fine-tuned model has only the classes of "
                    "the labels (sea, oil), so it cannot call land."}


def read_sar_crop(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(SAR uint8, oil bool) of one MCAN crop: SAR left half, JPEG mask right half, black = oil."""
    rgb = np.asarray(Image.open(path).convert("L"))
    half = rgb.shape[1] // 2
    return rgb[:, :half].copy(), rgb[:, half:] < 128


# --- change ---------------------------------------------------------------------------------------------------------

def change(cfg: argparse.Namespace, tmp: Path, steps: int) -> dict:
    from core.change.pipeline import ChangeParams, detect_changes
    root = DATA / "cd_dsifn"
    names = sorted(p.name for p in (root / "label").glob("*.png"))
    pairs = {n: (read_png(root / "A" / n), read_png(root / "B" / n), read_png(root / "label" / n) > 127)
             for n in names}
    train, test = names[:CHANGE_TRAIN_PAIRS], names[CHANGE_TRAIN_PAIRS:]
    grid = [train[:3], train[3:]]
    for i, what in enumerate(("A", "B")):
        write_tif(tmp / f"train_{what}.tif", np.concatenate(
            [np.concatenate([pairs[n][i] for n in row], axis=2) for row in grid], axis=1))
    write_tif(tmp / "train_label.tif", np.block([[pairs[n][2] for n in row] for row in grid]).astype(np.uint8))
    fit = run_fit(cfg, "change", tmp, steps, image_path=str(tmp / "train_A.tif"),
                  image_b_path=str(tmp / "train_B.tif"), labels_path=str(tmp / "train_label.tif"))
    counts = {k: np.zeros(3, np.int64) for k in ("starter", "fine_tuned", "baseline")}
    with step(f"detect_changes on {len(test)} test pairs, starter and fine-tuned; |A - B| + Otsu"):
        for n in test:
            a, b, truth = pairs[n]
            stem = Path(n).stem
            write_tif(tmp / f"{stem}_A.tif", a)
            write_tif(tmp / f"{stem}_B.tif", b)
            for key, model in (("starter", ""), ("fine_tuned", fit["model_dir"])):
                out = tmp / f"{stem}_{key}.tif"
                detect_changes(ChangeParams(str(tmp / f"{stem}_A.tif"), str(tmp / f"{stem}_B.tif"), str(out),
                                            model_dir=model, device=cfg.device))
                counts[key] += confusion(read_tif(out) == 1, truth)
            diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=0)
            counts["baseline"] += confusion(~otsu_below(gaussian_filter(diff, BLUR_SIGMA)), truth)
    return {**{key: iou_f1(*c) for key, c in counts.items()}, "fit": fit,
            "train": f"pairs {', '.join(Path(n).stem for n in train)} as one 768 x 512 mosaic",
            "test": f"pairs {', '.join(Path(n).stem for n in test)}, each alone, change = label > 127"}


# --- segmentation -------------------------------------------------------------------------------------------------

def segmentation(cfg: argparse.Namespace, tmp: Path, steps: int) -> dict:
    result = {}
    for city in ("potsdam", "vaihingen"):
        folder = tmp / city
        folder.mkdir()
        result[city] = segment_city(cfg, folder, city, steps)
    for key in ("mIoU_5", "mIoU_3_merged"):
        result[f"mean_{key}"] = {who: round(float(np.mean([result[c][who][key] for c in ("potsdam", "vaihingen")
                                                           if key in result[c][who]])), 4)
                                 for who in ("starter", "fine_tuned", "baseline") if key in result["potsdam"][who]}
    return result


def segment_city(cfg: argparse.Namespace, tmp: Path, city: str, steps: int) -> dict:
    from core.segmentation.pipeline import SegmentParams, segment_raster
    root = DATA / "seg_isprs" / city
    image = read_png(next((root / "img_dir").glob("*.png")))
    truth = np.asarray(Image.open(next((root / "ann_dir").glob("*.png"))))
    half = truth.shape[0] // 2
    fit_labels = np.full(truth[:half].shape, LABEL_NODATA, np.uint8)
    for isprs, value in ISPRS_TO_FIT.items():
        fit_labels[truth[:half] == isprs] = value
    write_tif(tmp / "top.tif", image[:, :half])
    write_tif(tmp / "top_labels.tif", fit_labels, nodata=LABEL_NODATA)
    write_tif(tmp / "bottom.tif", image[:, half:])
    fit = run_fit(cfg, "segmentation", tmp, steps, image_path=str(tmp / "top.tif"),
                  labels_path=str(tmp / "top_labels.tif"))
    bottom = truth[half:]
    fit_to_isprs = {v: k for k, v in ISPRS_TO_FIT.items()}
    preds = {}
    with step(f"segment_raster on the bottom half of {city}, starter and fine-tuned"):
        for key, model in (("starter", ""), ("fine_tuned", fit["model_dir"])):
            segment_raster(SegmentParams(str(tmp / "bottom.tif"), str(tmp / f"{key}.tif"), model_dir=model,
                                         device=cfg.device))
            preds[key] = read_tif(tmp / f"{key}.tif")
    train_values, train_counts = np.unique(truth[:half][truth[:half] > 0], return_counts=True)
    majority = int(train_values[train_counts.argmax()])
    fine = np.vectorize(lambda v: fit_to_isprs.get(int(v), 0))(preds["fine_tuned"])
    starter_as_isprs = np.zeros_like(bottom)     # starter value -> the merged ISPRS class it stands for
    for _, (isprs, starter) in MERGED.items():
        for v in starter:
            starter_as_isprs[preds["starter"] == v] = min(isprs)
    baseline = np.full_like(bottom, majority)
    return {
        "starter": {"mIoU_3_merged": merged_miou(starter_as_isprs, bottom)},
        "fine_tuned": {"mIoU_5": miou(fine, bottom), "mIoU_3_merged": merged_miou(fine, bottom)},
        "baseline": {"mIoU_5": miou(baseline, bottom), "mIoU_3_merged": merged_miou(baseline, bottom),
                     "class": ISPRS_NAMES[majority]},
        "fine_tuned_per_class_IoU": per_class_iou(fine, bottom),
        "fit": fit, "bands": "RGB" if city == "potsdam" else "NIR-R-G (given to the RGB starter as is)",
        "train": f"top half {image.shape[2]} x {half} px",
        "test": f"bottom half, {int((bottom > 0).sum())} labelled px",
    }


def per_class_iou(pred: np.ndarray, truth: np.ndarray) -> dict:
    keep = truth > 0
    out = {}
    for v, name in ISPRS_NAMES.items():
        inter = np.count_nonzero((pred == v) & (truth == v) & keep)
        union = np.count_nonzero(((pred == v) | (truth == v)) & keep)
        if np.count_nonzero(truth[keep] == v):
            out[name] = round(inter / union, 4)
    return out


def miou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over the classes present in the scored truth (0 = ignored)."""
    return round(float(np.mean(list(per_class_iou(pred, truth).values()))), 4)


def merged_miou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU over impervious, building, vegetation (low vegetation + tree); car and ignored pixels left out."""
    keep = np.isin(truth, [1, 2, 3, 4])
    ious = []
    for isprs, _ in MERGED.values():
        p, t = np.isin(pred, list(isprs)) & keep, np.isin(truth, list(isprs)) & keep
        ious.append(np.count_nonzero(p & t) / max(1, np.count_nonzero(p | t)))
    return round(float(np.mean(ious)), 4)


# --- shared --------------------------------------------------------------------------------------------------------

def run_fit(cfg: argparse.Namespace, task: str, tmp: Path, steps: int, **layers) -> dict:
    """fit_to_layers from the task's starter on the whole training part (no hold-out: scoring is done here)."""
    from training.finetune import FitParams, fit_to_layers
    with step(f"fit_to_layers {task}: {steps} steps, at most {MINUTES[task]:g} min"):
        started = time.perf_counter()
        fit = fit_to_layers(FitParams(task=task, output_model=str(tmp / "model"), steps=steps, patch_size=PATCH,
                                      time_budget_minutes=MINUTES[task], val_fraction=0.0, device=cfg.device,
                                      **layers))
    return {"model_dir": fit.model_dir, "steps": fit.steps, "train_patches": fit.train_patches,
            "seconds": round(time.perf_counter() - started, 1), "stopped_early": fit.stopped_early}


def confusion(pred: np.ndarray, truth: np.ndarray) -> list[int]:
    return [int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred & ~truth)),
            int(np.count_nonzero(~pred & truth))]


def iou_f1(tp: int, fp: int, fn: int) -> dict:
    return {"IoU": round(tp / max(1, tp + fp + fn), 4), "F1": round(2 * tp / max(1, 2 * tp + fp + fn), 4)}


def otsu_below(values: np.ndarray) -> np.ndarray:
    """Pixels below Otsu's threshold (256 bins over the value range)."""
    hist, edges = np.histogram(values, bins=256)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = ((hist * centers).sum() - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return values <= centers[int(between.argmax())]


def read_png(path: Path) -> np.ndarray:
    """(bands, rows, cols) or (rows, cols) for a single-band file."""
    data = np.asarray(Image.open(path))
    return data.transpose(2, 0, 1).copy() if data.ndim == 3 else data


def write_tif(path: Path, data: np.ndarray, nodata: float | None = None) -> None:
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=CRS, transform=from_origin(500000, 5000000, PIXEL_M, PIXEL_M),
                       nodata=nodata) as dst:
        dst.write(data)


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)
