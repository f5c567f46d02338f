"""`python -m training augment-eval`: does synthetic data help? (SatSynth's downstream test)

Trains the same segmenter (smp FPN by default) once per ratio R (synthetic samples per real
one, balanced in every batch), each from the same seed and for the same number of steps,
and evaluates every model on held-out REAL images only: `eval_data` when given, otherwise
the validation split of `data`, which no run trains on. Writes augment_eval.csv, .md and
.png (mIoU / mean F1 vs R) in the output folder, one run folder per R beside them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from core.checkpoint import load_card, load_into
from core.data.folder import FolderDataset, PatchDataset
from core.device import resolve_device
from core.raster import raster_info
from core.segmentation.model import build_segmenter
from core.segmentation.pipeline import TASK
from training.config import add_run_arguments, config_from_args
from training.trainer import TrainingError
from training.segment import SegmentTrainConfig, evaluate, split_pairs, train_segmenter


@dataclass
class AugmentEvalConfig:
    data: str                      # real labelled pairs (folder format)
    synthetic: str                 # generated pairs (e.g. rsdiffusion:synthesize_pairs)
    output: str
    ratios: list[float] = field(default_factory=lambda: [0, 1, 3])
    eval_data: str = ""            # held-out real pairs; empty: the validation split of `data`
    segmenter: dict[str, Any] = field(default_factory=lambda: {"arch": "FPN"})  # SegmentTrainConfig fields
    device: str = "auto"
    resume: bool = False
    steps: int = 0                 # 0: the segmenter's own


def segment_config(cfg: AugmentEvalConfig, ratio: float) -> SegmentTrainConfig:
    """The per-R training config: identical for every R except the synthetic ratio and run folder."""
    values = {"steps": cfg.steps} if cfg.steps else {}
    values.update(cfg.segmenter)
    if cfg.eval_data:
        values["val_fraction"] = 0.0   # the held-out set is separate: train on every real image
    return SegmentTrainConfig(**{**values, "data": cfg.data, "output": str(Path(cfg.output) / f"R{ratio:g}"),
                                 "name": f"augment-eval R={ratio:g}", "synthetic": cfg.synthetic if ratio else "",
                                 "synthetic_ratio": ratio, "device": cfg.device})


def held_out_pairs(cfg: AugmentEvalConfig, seg: SegmentTrainConfig):
    if cfg.eval_data:
        return FolderDataset.open(cfg.eval_data).pairs
    _, val_pairs = split_pairs(FolderDataset.open(cfg.data).pairs, seg.val_fraction, seg.seed)
    if not val_pairs:
        raise TrainingError("No held-out real images: give eval_data or a val_fraction above 0.")
    return val_pairs


def evaluate_on_real(model_dir: Path, pairs, device: str) -> dict[str, float]:
    """Whole images (padded, padding ignored) with the model's own normalisation."""
    card = load_card(model_dir, task=TASK)
    torch_device = resolve_device(device)
    model = load_into(build_segmenter(card.architecture), model_dir).to(torch_device)
    size = max(max(raster_info(image).width, raster_info(image).height) for image, _ in pairs)
    size = -(-size // 32) * 32   # smp encoders need a multiple of 32
    dataset = PatchDataset(pairs, card.classes, card.normalization.offset, card.normalization.scale, size, train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    return evaluate(model, loader, len(card.classes), [c.name for c in card.classes], torch_device)


def run_augment_eval(cfg: AugmentEvalConfig) -> list[dict[str, Any]]:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for ratio in tqdm(cfg.ratios, desc="augment-eval", unit="run"):
        seg = segment_config(cfg, ratio)
        model_dir = Path(seg.output) / "model"
        if not (cfg.resume and model_dir.is_dir()):   # --resume skips the runs already finished
            train_segmenter(seg)
        metrics = evaluate_on_real(model_dir, held_out_pairs(cfg, seg), cfg.device)
        rows.append({"R": ratio, "mIoU": round(metrics["mIoU"], 4), "mF1": round(metrics["mF1"], 4),
                     "accuracy": round(metrics["accuracy"], 4),
                     **{k: round(v, 4) for k, v in metrics.items() if k.startswith("IoU/")}})
        tqdm.write(f"R={ratio:g}: mIoU {metrics['mIoU']:.4f}, mF1 {metrics['mF1']:.4f}")
    write_report(rows, out, cfg)
    return rows


def write_report(rows: list[dict[str, Any]], out: Path, cfg: AugmentEvalConfig) -> None:
    with open(out / "augment_eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = ["R", "mIoU", "mF1", "accuracy"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:g}" for k in keys) + " |" for r in rows]
    note = (f"Held-out real images: {cfg.eval_data or 'validation split of ' + cfg.data}. "
            f"Synthetic pairs: {cfg.synthetic}.")
    (out / "augment_eval.md").write_text("\n".join(lines) + "\n\n" + note + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for key in ("mIoU", "mF1"):
        ax.plot([r["R"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    ax.set_xlabel("R (synthetic samples per real sample)")
    ax.set_ylabel("held-out real score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "augment_eval.png", dpi=90)
    plt.close(fig)


def add_arguments(parser) -> None:
    add_run_arguments(parser, "AugmentEvalConfig")


def main(args) -> None:
    run_augment_eval(config_from_args(AugmentEvalConfig, args))

