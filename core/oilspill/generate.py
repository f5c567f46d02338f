"""synthesize_sar_pairs: a SAR-JointNet model -> a dataset folder of generated SAR training pairs.

The folder is our dataset format (images/, masks/, classes.json) plus soft/ (the teacher's
soft labels: one float32 probability band per class, for DAKD distillation), index.csv and
preview.png. Images are 8-bit amplitude (1..255) in the model's stretched domain; readers
re-stretch them like any 8-bit SAR image. Generated pairs have no location: no CRS.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import resolve_model_dir
from core.checkpoint import ModelCard, load_card, load_into
from core.data.folder import write_class_table
from core.data.generated import GeneratedPairs, check_generation, save_pair_grid, write_generated_folder
from core.device import describe_device, resolve_device
from core.oilspill.jointnet import DEFAULT_SAMPLING_STEPS, TASK, SarPairs, build_jointnet, sample_pairs
from core.progress import Progress
from core.raster import write_geotiff

PREVIEW_PAIRS = 8
SOFT_DIR = "soft"


@dataclass
class SarSynthesisParams:
    """One generation run; plain values so Processing, CLI and tests share it."""
    output_dir: str
    count: int = 16
    model_dir: str = ""            # empty: the shipped starter SAR-JointNet
    steps: int = DEFAULT_SAMPLING_STEPS
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


@dataclass
class SarSynthesisResult:
    output_dir: str
    index_path: str
    preview_path: str
    pairs: list[tuple[str, str, str]] = field(default_factory=list)   # image, mask, soft label
    classes: list[dict] = field(default_factory=list)
    size: int = 0
    device: str = ""
    seconds: float = 0.0


def load_jointnet(model_dir: str, device: torch.device) -> tuple[torch.nn.Module, ModelCard]:
    card = load_card(model_dir, task=TASK)
    return load_into(build_jointnet(card.architecture), model_dir).to(device).eval(), card


def synthesize_sar_pairs(params: SarSynthesisParams, progress: Progress | None = None) -> SarSynthesisResult:
    progress = progress or Progress()
    started = time.perf_counter()
    check_generation(params.count, params.batch_size)
    if not 1 <= params.steps <= 1000:
        raise ValueError(f"DDIM steps must be between 1 and 1000, not {params.steps}.")
    device = resolve_device(params.device)
    model, card = load_jointnet(params.resolved_model_dir(), device)
    if card.extra.get("stage", 3) < 2:
        raise ValueError(f"Model '{card.name}' finished training stage 1 only (images, no labels); "
                         "generate pairs with a stage 2 or 3 SAR-JointNet.")
    size = card.architecture["sample_size"]
    progress.info(f"Generating {params.count} SAR pairs of {size} x {size} px with '{card.name}' "
                  f"(DDIM-{params.steps}, b = {card.architecture['balance']:.3f}) on {describe_device(device)}.")

    def finish(out: Path, first: list[SarPairs]) -> None:
        write_class_table(out, [asdict(c) for c in card.classes], card.bands)
        save_pair_grid(_preview(first), [c.color for c in card.classes], out / "preview.png")

    rows = write_generated_folder(
        params.output_dir, params.count, params.batch_size, params.seed, ("images", "masks", SOFT_DIR),
        lambda count, seed, share: sample_pairs(model, count, params.steps, seed, progress=share),
        lambda out, pairs, start, seed: _write_batch(out, pairs, card, start, seed),
        {"model": card.name, "ddim_steps": str(params.steps)}, finish, PREVIEW_PAIRS, progress)
    final = Path(params.output_dir)
    return SarSynthesisResult(str(final), str(final / "index.csv"), str(final / "preview.png"),
                              [tuple(str(final / r[k]) for k in ("image", "mask", "soft")) for r in rows],
                              [asdict(c) for c in card.classes], size, describe_device(device),
                              time.perf_counter() - started)


def to_amplitude8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] model images -> uint8 1..255 (0 stays free for nodata)."""
    return (np.round((images.clamp(-1, 1).numpy() + 1) / 2 * 254) + 1).astype(np.uint8)


def _write_batch(out: Path, pairs: SarPairs, card: ModelCard, start: int, seed: int) -> list[dict]:
    values = np.array([c.value for c in card.classes], dtype=np.uint8)
    transform = (1.0, 0.0, 0.0, 0.0, -1.0, float(pairs.labels.shape[-2]))   # pixel grid, no location
    rows = []
    for i, (image, labels, soft) in enumerate(zip(to_amplitude8(pairs.images), pairs.labels.numpy(),
                                                  pairs.probabilities.numpy())):
        name = f"sar_{start + i:05d}.tif"
        write_geotiff(out / "images" / name, image, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "masks" / name, values[labels], crs_wkt=None, transform=transform, colormap=card.colormap)
        write_geotiff(out / SOFT_DIR / name, soft.astype(np.float32), crs_wkt=None, transform=transform,
                      band_names=[c.name for c in card.classes])
        fractions = np.bincount(labels.ravel(), minlength=len(card.classes)) / labels.size
        rows.append({"image": f"images/{name}", "mask": f"masks/{name}", "soft": f"{SOFT_DIR}/{name}",
                     "seed": seed, "index_in_batch": i,
                     **{f"fraction_{c.name}": round(float(f), 4) for c, f in zip(card.classes, fractions)}})
    return rows


def _preview(batches: list[SarPairs]) -> GeneratedPairs:
    images = torch.cat([p.images for p in batches])[:PREVIEW_PAIRS]
    labels = torch.cat([p.labels for p in batches])[:PREVIEW_PAIRS]
    return GeneratedPairs(images=(images.clamp(-1, 1) + 1) / 2, labels=labels, probabilities=None)
