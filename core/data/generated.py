"""Generated training data: what a joint image + label generator hands back, the one writer that puts
generated samples into a dataset folder, and the conversion of model images back to raw values.

`write_generated_folder` is shared by SatSynth, SAR-JointNet and RDF-MIG: it checks the count, stages the
folder (nothing is left behind on an error or a cancel), draws the samples batch by batch with batch seeds
(seed + index of the batch's first sample, so a run is reproducible and its batches independent), shows
progress, writes index.csv (one row per sample plus the run's columns) and hands the first batches to the
method for its preview. What a sample is and how it is written stay with the method.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.progress import Progress, SubProgress
from core.raster import hex_to_rgba, staged_dir


@dataclass
class GeneratedPairs:
    images: torch.Tensor         # (B, bands, H, W) in [0, 1]
    labels: torch.Tensor         # (B, H, W) class indices, always < K
    probabilities: torch.Tensor  # (B, K, H, W) soft labels


def check_generation(count: int, batch_size: int, what: str = "pairs") -> None:
    """The run's numbers, checked before any model is loaded."""
    if count < 1:
        raise ValueError(f"Number of {what} must be at least 1.")
    if batch_size < 1:
        raise ValueError(f"Batch size must be at least 1, not {batch_size}.")


def write_generated_folder(output_dir: str, count: int, batch_size: int, seed: int, subfolders: Sequence[str],
                           generate: Callable[[int, int, Progress], Any],
                           write_batch: Callable[[Path, Any, int, int], list[dict]],
                           run_columns: dict[str, str], finish: Callable[[Path, list[Any]], None],
                           preview_batches: int, progress: Progress, what: str = "pairs") -> list[dict]:
    """Generate `count` samples (checked by `check_generation`) into `output_dir` (which must not exist or be
    empty); returns the index rows.

    generate(count, batch_seed, progress) -> a batch; write_batch(folder, batch, first_index, batch_seed) ->
    index rows of its samples; finish(folder, first batches) writes the method's extras (classes.json,
    preview.png) into the staged folder.
    """
    rows, kept = [], []
    with staged_dir(output_dir) as out:
        for sub in subfolders:
            (out / sub).mkdir()
        starts = range(0, count, batch_size)
        for b, start in enumerate(starts):
            progress.check()
            batch_seed = seed + start
            batch = generate(min(batch_size, count - start), batch_seed,
                             SubProgress(progress, b / len(starts), (b + 1) / len(starts)))
            rows += write_batch(out, batch, start, batch_seed)
            if len(kept) < preview_batches:
                kept.append(batch)
        with open(out / "index.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[*rows[0], *run_columns])
            writer.writeheader()
            writer.writerows({**row, **run_columns} for row in rows)
        finish(out, kept)
    progress.info(f"{count} {what} written to {Path(output_dir)}.")
    return rows


def first_pairs(batches: list[GeneratedPairs], n: int) -> GeneratedPairs:
    """The first n pairs of some batches, for a preview."""
    return GeneratedPairs(torch.cat([b.images for b in batches])[:n], torch.cat([b.labels for b in batches])[:n],
                          probabilities=None)


def pair_grid(pairs: GeneratedPairs, colors: list[str]) -> np.ndarray:
    """Rows of image | label map as one RGB array (first three bands, or gray for one band)."""
    palette = np.array([hex_to_rgba(c)[:3] for c in colors], dtype=np.uint8)
    rows = []
    for image, labels in zip(pairs.images, pairs.labels):
        rgb = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
        rgb = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        rows.append(np.concatenate([rgb, palette[labels.numpy()]], axis=1))
    return np.concatenate(rows, axis=0)


def save_pair_grid(pairs: GeneratedPairs, colors: list[str], path: str | Path) -> None:
    from PIL import Image
    Image.fromarray(pair_grid(pairs, colors)).save(path)


def to_raw(images01: torch.Tensor, card) -> np.ndarray:
    """Model images in [0, 1] -> the training data's value range and data type: the card's normalisation
    (minimum and range) and `extra.dtype`. Integers are rounded and clipped to the type; unsigned ones start
    at 1, because 0 is the nodata value of the rasters our readers and pipelines write."""
    low = np.asarray(card.normalization.offset, dtype=np.float32)[:, None, None]
    span = np.asarray(card.normalization.scale, dtype=np.float32)[:, None, None]
    raw = images01.clamp(0, 1).numpy() * span + low
    dtype = np.dtype(card.extra.get("dtype", "float32"))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        raw = np.clip(np.round(raw), 1 if info.min == 0 else info.min, info.max)
    return raw.astype(dtype)
