"""synthesize_change_pairs: an RDF-MIG model -> a change folder of generated (A, B, mask) triplets.

The folder is the change layout every change trainer reads (A/, B/, label/ with the same names;
label 0 no change / 1 change), plus index.csv and preview.png (rows: A | B | mask). Images come
back in the training data's bands (RGB or RGB+NIR, in the card's band order), value range and
data type. Generated triplets have no location: no CRS.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import resolve_model_dir
from core.change.rdfmig import TASK, ChangeTriplets, load_rdfmig
from core.data.generated import check_generation, to_raw, write_generated_folder
from core.device import describe_device, resolve_device
from core.progress import Progress
from core.raster import write_geotiff

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
        return resolve_model_dir(self.model_dir, TASK)


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
    check_generation(params.count, params.batch_size, "triplets")
    if not 1 <= params.steps <= 1000:
        raise ValueError(f"DDIM steps must be between 1 and 1000, not {params.steps}.")
    device = resolve_device(params.device)
    model, card = load_rdfmig(params.resolved_model_dir())
    model = model.to(device)
    size = card.tile_size
    progress.info(f"Generating {params.count} change triplets of {size} x {size} px ({', '.join(card.bands)}) with "
                  f"'{card.name}' (DDIM-{params.steps}) on {describe_device(device)}.")

    def finish(out: Path, first: list[ChangeTriplets]) -> None:
        save_triplet_grid(ChangeTriplets(*(torch.cat([getattr(t, k) for t in first])[:PREVIEW_TRIPLETS]
                                           for k in ("a", "b", "mask"))), out / "preview.png")

    rows = write_generated_folder(
        params.output_dir, params.count, params.batch_size, params.seed, ("A", "B", "label"),
        lambda count, seed, share: model.sample(count, params.steps, seed, size, share),
        lambda out, triplets, start, seed: _write_batch(out, triplets, card, start, seed),
        {"model": card.name, "ddim_steps": str(params.steps)}, finish, PREVIEW_TRIPLETS, progress, "triplets")
    final = Path(params.output_dir)
    return ChangeSynthesisResult(str(final), str(final / "index.csv"), str(final / "preview.png"),
                                 [tuple(str(final / r[k]) for k in ("A", "B", "label")) for r in rows],
                                 list(card.bands), size, describe_device(device), time.perf_counter() - started)


def _write_batch(out: Path, triplets: ChangeTriplets, card, start: int, seed: int) -> list[dict]:
    transform = (1.0, 0.0, 0.0, 0.0, -1.0, float(triplets.mask.shape[-2]))   # pixel grid, no location
    rows = []
    for i, (a, b, mask) in enumerate(zip(to_raw((triplets.a + 1) / 2, card), to_raw((triplets.b + 1) / 2, card),
                                         triplets.mask.numpy().astype(np.uint8))):
        name = f"change_{start + i:05d}.tif"
        write_geotiff(out / "A" / name, a, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "B" / name, b, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "label" / name, mask, crs_wkt=None, transform=transform, colormap=CHANGE_COLORMAP,
                      band_names=["change"])
        rows.append({"A": f"A/{name}", "B": f"B/{name}", "label": f"label/{name}", "seed": seed,
                     "index_in_batch": i, "changed_fraction": round(float(mask.mean()), 4)})
    return rows


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
