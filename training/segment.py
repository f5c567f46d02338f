"""`python -m training segment`: fit an smp segmenter on a folder dataset.

Writes `<output>/model` (card + safetensors, loadable by the plugin) and, beside it, the
training state for `--resume`, `log.csv` and `curves.png`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoint import ModelCard, Normalization, load_card
from core.data.folder import IGNORE_INDEX, FolderDataset, PatchDataset, band_statistics
from core.metrics.segmentation import confusion_matrix, scores
from core.segmentation.model import HEAD_KEYS, STARTER_ARCHITECTURE, build_segmenter, load_encoder_weights
from core.segmentation.pipeline import TASK
from training.config import RunConfig, add_init_from_argument, add_run_arguments, config_from_args
from training.monitor import TrainingMonitor, monitored
from training.trainer import Trainer, TrainingError, seed_everything
from training.transfer import start_from


@dataclass(kw_only=True)
class SegmentTrainConfig(RunConfig):
    arch: str = STARTER_ARCHITECTURE["arch"]
    encoder: str = STARTER_ARCHITECTURE["encoder"]
    decoder: dict[str, Any] = field(default_factory=lambda: dict(STARTER_ARCHITECTURE["decoder"]))
    encoder_weights: str = ""        # optional local file; never downloaded
    patch_size: int = 256            # training crops
    tile_size: int = 256             # inference tiles, stored in the card
    samples_per_image: int = 4
    val_fraction: float = 0.2
    synthetic: str = ""              # optional folder of generated pairs (e.g. from synthesize_pairs)
    synthetic_ratio: float = 0.0     # R synthetic per real sample in every batch; 0: real data only
    init_from: str = ""              # a segmentation model folder to fine-tune (its arch, encoder, decoder, weights)
    eval_data: str = ""              # held-out dataset folder (same class table); empty: a val_fraction split
    class_weights: list[float] = field(default_factory=list)   # cross-entropy weight per class; empty: equal


def split_pairs(pairs, val_fraction: float, seed: int):
    """Deterministic image-level split: validation never sees a training image."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = int(round(len(pairs) * val_fraction)) if len(pairs) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(pairs) > 1 else 0), len(pairs) - 1)
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def evaluate(model: torch.nn.Module, loader, n_classes: int, names: list[str], device) -> dict[str, float]:
    """Scores on batches (image, class indices, ...): any further items (e.g. soft labels) are ignored."""
    model.eval()
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    with torch.inference_mode():
        for x, y, *_ in loader:
            pred = model(x.to(device)).argmax(1).cpu()
            cm += confusion_matrix(pred, y, n_classes, IGNORE_INDEX)
    return scores(cm, names)


def open_synthetic(folder: str, real: FolderDataset) -> FolderDataset:
    """Generated pairs must use the real data's bands and class values."""
    synthetic = FolderDataset.open(folder)
    if len(synthetic.bands) != len(real.bands):
        raise TrainingError(f"Synthetic set {folder} has {len(synthetic.bands)} bands; the real data has "
                            f"{len(real.bands)}.")
    unknown = {c.value for c in synthetic.classes} - {c.value for c in real.classes}
    if unknown:
        raise TrainingError(f"Synthetic set {folder} has class values {sorted(unknown)} that the real data's "
                            "class table does not know.")
    return synthetic


def train_segmenter(cfg: SegmentTrainConfig, monitor: TrainingMonitor | None = None) -> Path:
    """`monitor`: per-step reports, cancel and time budget for interactive callers (training.monitor)."""
    data = FolderDataset.open(cfg.data)
    pairs, classes, band_names, first = data.pairs, data.classes, data.bands, data.first
    if cfg.eval_data:
        train_pairs, val_pairs = pairs, FolderDataset.open(cfg.eval_data).pairs
    else:
        train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    mean, std = band_statistics(train_pairs)
    names = [c.name for c in classes]
    if cfg.class_weights and len(cfg.class_weights) != len(classes):
        raise TrainingError(f"class_weights has {len(cfg.class_weights)} values; the class table has "
                            f"{len(classes)} classes ({', '.join(names)}).")
    base = load_card(cfg.init_from, task=TASK) if cfg.init_from else None
    arch = base.architecture if base else {"arch": cfg.arch, "encoder": cfg.encoder, "decoder": cfg.decoder}
    architecture = {"arch": arch["arch"], "encoder": arch["encoder"], "in_channels": len(band_names),
                    "classes": len(classes), "decoder": arch.get("decoder", {})}
    seed_everything(cfg.seed)   # same config, same initial weights
    model = build_segmenter(architecture)
    if base is not None:
        init_notes = start_from(model, cfg.init_from, base, classes, HEAD_KEYS, len(band_names))
        for note in init_notes:
            (monitor.progress.info if monitor else print)(note)
    elif cfg.encoder_weights:
        load_encoder_weights(model, cfg.encoder_weights)

    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings())
    train_set = PatchDataset(train_pairs, classes, mean, std, cfg.patch_size, cfg.samples_per_image, train=True)
    if cfg.synthetic and cfg.synthetic_ratio > 0:
        synthetic = open_synthetic(cfg.synthetic, data)
        synthetic_set = PatchDataset(synthetic.pairs, classes, mean, std, cfg.patch_size, cfg.samples_per_image,
                                     train=True)
        loader = trainer.balanced_loader(train_set, synthetic_set, cfg.batch_size, cfg.synthetic_ratio,
                                         cfg.num_workers)
    else:
        loader = trainer.loader(train_set, cfg.batch_size, cfg.num_workers)
    val_loader = (torch.utils.data.DataLoader(PatchDataset(val_pairs, classes, mean, std, cfg.patch_size, train=False),
                                              batch_size=cfg.batch_size) if val_pairs else None)

    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=trainer.device) \
        if cfg.class_weights else None

    def loss_fn(net, batch):
        x, y = batch
        logits = net(x)
        if not (y != IGNORE_INDEX).any():     # all ignored: the weighted mean would be 0 / 0
            return logits.sum() * 0
        return F.cross_entropy(logits.float(), y, weight=weights, ignore_index=IGNORE_INDEX)

    def validate(net):
        return evaluate(net, val_loader, len(classes), names, trainer.device)

    loss_fn, validate = monitored(trainer, loss_fn, validate if val_loader is not None else None, monitor)
    metrics = trainer.fit(loader, loss_fn, validate)
    return trainer.export(ModelCard(
        task=TASK, name=cfg.name or run.name, architecture=architecture, bands=list(band_names),
        normalization=Normalization(offset=mean, scale=std), classes=classes, tile_size=cfg.tile_size,
        ground_resolution=round(first.resolution[0], 4) if first.crs_wkt else None,
        training_data=f"{Path(cfg.data).resolve().name}: {len(train_pairs)} train / {len(val_pairs)} val images"
                      + (f" + {Path(cfg.synthetic).resolve().name} (synthetic, R={cfg.synthetic_ratio:g})"
                         if cfg.synthetic and cfg.synthetic_ratio > 0 else ""),
        metrics={k: round(v, 4) for k, v in metrics.items() if np.isfinite(v)},
        extra={"steps": trainer.step, "patch_size": cfg.patch_size, "ema_decay": cfg.ema_decay,
               **({"base_model": base.name, "init_notes": init_notes} if base else {}),
               **({"class_weights": list(cfg.class_weights)} if cfg.class_weights else {})}))


def add_arguments(parser) -> None:
    add_run_arguments(parser, "SegmentTrainConfig")
    add_init_from_argument(parser, "segmentation")


def main(args) -> None:
    cfg = config_from_args(SegmentTrainConfig, args)
    model_dir = train_segmenter(cfg)
    print(f"model written to {model_dir}")
