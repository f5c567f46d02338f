"""synthesize_change_pairs: an RDF-MIG model -> a change folder of generated (A, B, mask) triplets.

The folder is the change layout every change trainer reads (A/, B/, label/ with the same names;
label 0 no change / 1 change), plus index.csv and preview.png (rows: A | B | mask). Images come
back in the training data's bands (RGB or RGB+NIR, in the card's band order), value range and
data type. Generated triplets have no location: no CRS.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import starter_model_dir
from core.change.rdfmig import TASK, ChangeTriplets, load_rdfmig
from core.device import describe_device, resolve_device
from core.progress import Progress, SubProgress
from core.raster import staged_dir, write_geotiff

CHANGE_COLORMAP = {0: (0, 0, 0, 255), 1: (255, 0, 0, 255)}
PREVIEW_TRIPLETS = 6


@dataclass
class ChangeSynthesisParams:
    """One generation run; plain values so Processing, CLI and tests share it."""
    output_dir: str
    count: int = 16
    model_dir: str = ""            # empty: the shipped starter RDF-MIG model
    steps: int = 50                # DDIM steps
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"

    def resolved_model_dir(self) -> str:
        return self.model_dir or str(starter_model_dir(TASK))


@dataclass
class ChangeSynthesisResult:
    output_dir: str
    index_path: str
    preview_path: str
    triplets: list[tuple[str, str, str]] = field(default_factory=list)   # A, B, label
    bands: list[str] = field(default_factory=list)
    size: int = 0
    device: str = ""
    seconds: float = 0.0


def synthesize_change_pairs(params: ChangeSynthesisParams, progress: Progress | None = None) -> ChangeSynthesisResult:
    progress = progress or Progress()
    started = time.perf_counter()
    if params.count < 1:
        raise ValueError("Number of triplets must be at least 1.")
    if not 1 <= params.steps <= 1000:
        raise ValueError(f"DDIM steps must be between 1 and 1000, not {params.steps}.")
    device = resolve_device(params.device)
    model, card = load_rdfmig(params.resolved_model_dir())
    model = model.to(device)
    size = card.tile_size
    progress.info(f"Generating {params.count} change triplets of {size} x {size} px ({', '.join(card.bands)}) with "
                  f"'{card.name}' (DDIM-{params.steps}) on {describe_device(device)}.")
    rows, preview = [], []
    with staged_dir(params.output_dir) as out:
        for sub in ("A", "B", "label"):
            (out / sub).mkdir()
        batches = range(0, params.count, params.batch_size)
        for i, start in enumerate(batches):
            progress.check()
            count = min(params.batch_size, params.count - start)
            seed = params.seed + start   # batch seeds: a run is reproducible and its batches independent
            triplets = model.sample(count, params.steps, seed, size,
                                    SubProgress(progress, i / len(batches), (i + 1) / len(batches)))
            rows += _write_batch(out, triplets, card, start, seed)
            if len(preview) < PREVIEW_TRIPLETS:
                preview.append(triplets)
        _write_index(out / "index.csv", rows, params, card.name)
        save_triplet_grid(ChangeTriplets(*(torch.cat([getattr(t, k) for t in preview])[:PREVIEW_TRIPLETS]
                                           for k in ("a", "b", "mask"))), out / "preview.png")
    final = Path(params.output_dir)
    progress.info(f"{params.count} triplets written to {final}.")
    return ChangeSynthesisResult(str(final), str(final / "index.csv"), str(final / "preview.png"),
                                 [tuple(str(final / r[k]) for k in ("A", "B", "label")) for r in rows],
                                 list(card.bands), size, describe_device(device), time.perf_counter() - started)


def to_raw(images: torch.Tensor, card) -> np.ndarray:
    """[-1, 1] images -> the training data's value range and data type (card normalisation and extra.dtype)."""
    low = np.asarray(card.normalization.mean, np.float32)[:, None, None]
    span = np.asarray(card.normalization.std, np.float32)[:, None, None]
    raw = low + (images.clamp(-1, 1).numpy() + 1) / 2 * span
    dtype = np.dtype(card.extra.get("dtype", "float32"))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        raw = np.clip(np.round(raw), max(info.min, 1), info.max)   # 0 stays free for nodata
    return raw.astype(dtype)


def _write_batch(out: Path, triplets: ChangeTriplets, card, start: int, seed: int) -> list[dict]:
    transform = (1.0, 0.0, 0.0, 0.0, -1.0, float(triplets.mask.shape[-2]))   # pixel grid, no location
    rows = []
    for i, (a, b, mask) in enumerate(zip(to_raw(triplets.a, card), to_raw(triplets.b, card),
                                         triplets.mask.numpy().astype(np.uint8))):
        name = f"change_{start + i:05d}.tif"
        write_geotiff(out / "A" / name, a, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "B" / name, b, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "label" / name, mask, crs_wkt=None, transform=transform, colormap=CHANGE_COLORMAP,
                      band_names=["change"])
        rows.append({"A": f"A/{name}", "B": f"B/{name}", "label": f"label/{name}", "seed": seed,
                     "index_in_batch": i, "changed_fraction": round(float(mask.mean()), 4)})
    return rows


def _write_index(path: Path, rows: list[dict], params: ChangeSynthesisParams, model: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "model", "ddim_steps"])
        writer.writeheader()
        writer.writerows(dict(r, model=model, ddim_steps=params.steps) for r in rows)


def save_triplet_grid(triplets: ChangeTriplets, path: str | Path) -> None:
    """One row per triplet: A | B | mask (RGB of the first three bands, mask in red)."""
    from PIL import Image
    rows = []
    for a, b, mask in zip(triplets.a, triplets.b, triplets.mask):
        to8 = lambda x: ((x[:3].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
        red = np.zeros((*mask.shape, 3), np.uint8)
        red[..., 0] = mask.numpy().astype(np.uint8) * 255
        rows.append(np.concatenate([to8(a), to8(b), red], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
