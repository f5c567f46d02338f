"""synthesize_pairs: a SatSynth model (+ optional x2 stage) -> a dataset folder of new pairs.

The output is the folder format every trainer here reads (images/, masks/, classes.json)
plus index.csv (one row per pair: files, seed, sampler, class fractions) and preview.png.
Generated pairs have no location, so the GeoTIFFs carry no CRS (pixel-unit transform at the
model's ground resolution). Images are written in the training data's value range and type.
"""
from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import starter_model_dir
from core.checkpoint import ModelCard, ModelError, load_card, load_into
from core.data.folder import write_class_table
from core.data.generated import GeneratedPairs
from core.device import describe_device, resolve_device
from core.diffusion.sampling import DDIM_ETA, SAMPLERS
from core.progress import Progress, SubProgress
from core.raster import hex_to_rgba, staged_dir, write_geotiff
from core.synthesis.satsynth import SR_TASK, TASK, build_denoiser, sample, super_resolve

PREVIEW_PAIRS = 8


@dataclass
class SynthesisParams:
    """One generation run; plain values so panel, Processing and tests share it."""
    output_dir: str
    count: int = 16
    model_dir: str = ""            # empty: the shipped starter base model
    sampler: str = "ddim"          # "ddpm": the paper's 1000 ancestral steps; "ddim": `steps` steps
    steps: int = 50
    eta: float = DDIM_ETA          # DDIM only: 1 = fresh noise each step (better from small models), 0 = deterministic
    super_resolution: bool = False
    sr_model_dir: str = ""         # empty: the shipped starter x2 model
    sr_steps: int = 50
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"

    def resolved_model_dir(self) -> str:
        return self.model_dir or str(starter_model_dir(TASK))

    def resolved_sr_model_dir(self) -> str:
        return self.sr_model_dir or str(starter_model_dir(SR_TASK))


@dataclass
class SynthesisResult:
    output_dir: str
    index_path: str
    preview_path: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    classes: list[dict] = field(default_factory=list)
    size: int = 0
    device: str = ""
    seconds: float = 0.0


def load_denoiser(model_dir: str, task: str, device: torch.device) -> tuple[torch.nn.Module, ModelCard]:
    card = load_card(model_dir, task=task)
    return load_into(build_denoiser(card.architecture), model_dir).to(device), card


def synthesize_pairs(params: SynthesisParams, progress: Progress | None = None) -> SynthesisResult:
    progress = progress or Progress()
    started = time.perf_counter()
    _check(params)
    device = resolve_device(params.device)
    base, card = load_denoiser(params.resolved_model_dir(), TASK, device)
    sr = sr_card = None
    if params.super_resolution:
        sr, sr_card = load_denoiser(params.resolved_sr_model_dir(), SR_TASK, device)
        _check_cascade(card, sr_card)
    size = card.architecture["unet"]["sample_size"] * (2 if sr else 1)
    steps = params.steps if params.sampler == "ddim" else 1000
    progress.info(f"Generating {params.count} pairs of {size} x {size} px with '{card.name}' "
                  f"({params.sampler.upper()}-{steps}{', x2 with ' + repr(sr_card.name) if sr else ''}) "
                  f"on {describe_device(device)}.")
    out_card = sr_card or card
    rows, preview = [], []
    with staged_dir(params.output_dir) as out:
        (out / "images").mkdir()
        (out / "masks").mkdir()
        batches = range(0, params.count, params.batch_size)
        for b, start in enumerate(batches):
            progress.check()
            count = min(params.batch_size, params.count - start)
            seed = params.seed + start   # batch seeds: a run is reproducible and its batches independent
            share = SubProgress(progress, b / len(batches), (b + (0.5 if sr else 1.0)) / len(batches))
            pairs = sample(base, card.architecture, count, params.sampler, params.steps, seed, progress=share,
                           eta=params.eta)
            if sr:
                share = SubProgress(progress, (b + 0.5) / len(batches), (b + 1) / len(batches))
                pairs = super_resolve(sr, sr_card.architecture, pairs, params.sr_steps, seed, progress=share)
            rows += _write_batch(out, pairs, out_card, start, seed)
            if len(preview) < PREVIEW_PAIRS:
                preview.append(pairs)
        write_class_table(out, [asdict(c) for c in out_card.classes], out_card.bands)
        _write_index(out / "index.csv", rows, params, card, sr_card)
        save_pair_grid(_first(preview, PREVIEW_PAIRS), [c.color for c in out_card.classes], out / "preview.png")
    final = Path(params.output_dir)
    progress.info(f"{params.count} pairs written to {final}.")
    return SynthesisResult(str(final), str(final / "index.csv"), str(final / "preview.png"),
                           [(str(final / r["image"]), str(final / r["mask"])) for r in rows],
                           [asdict(c) for c in out_card.classes], size,
                           describe_device(device), time.perf_counter() - started)


def _check(params: SynthesisParams) -> None:
    if params.count < 1:
        raise ValueError("Number of pairs must be at least 1.")
    if params.sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler '{params.sampler}'; choose one of {', '.join(SAMPLERS)}.")
    if params.sampler == "ddim" and not 1 <= params.steps <= 1000:
        raise ValueError(f"DDIM steps must be between 1 and 1000, not {params.steps}.")


def _check_cascade(card: ModelCard, sr_card: ModelCard) -> None:
    """The x2 stage must speak the base model's bands and classes."""
    if sr_card.bands != card.bands or [c.value for c in sr_card.classes] != [c.value for c in card.classes]:
        raise ModelError(f"Super-resolution model '{sr_card.name}' ({len(sr_card.bands)} bands, "
                         f"{len(sr_card.classes)} classes) does not match base model '{card.name}' "
                         f"({len(card.bands)} bands, {len(card.classes)} classes).")


def to_raw(images01: torch.Tensor, card: ModelCard) -> np.ndarray:
    """[0, 1] model images -> the training data's range and type (scaling stored in the card)."""
    low = np.asarray(card.normalization.mean, dtype=np.float32)[:, None, None]
    span = np.asarray(card.normalization.std, dtype=np.float32)[:, None, None]
    raw = images01.numpy() * span + low
    dtype = np.dtype(card.extra.get("dtype", "float32"))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        raw = np.clip(np.round(raw), info.min, info.max)
    return raw.astype(dtype)


def _write_batch(out: Path, pairs: GeneratedPairs, card: ModelCard, start: int, seed: int) -> list[dict]:
    values = np.array([c.value for c in card.classes], dtype=np.uint8 if len(card.classes) <= 255 else np.uint16)
    res = card.ground_resolution or 1.0
    transform = (res, 0.0, 0.0, 0.0, -res, pairs.labels.shape[-2] * res)   # pixel grid from (0, 0) up
    rows = []
    for i, (image, labels) in enumerate(zip(to_raw(pairs.images, card), pairs.labels.numpy())):
        name = f"pair_{start + i:05d}.tif"
        write_geotiff(out / "images" / name, image, crs_wkt=None, transform=transform, band_names=card.bands)
        write_geotiff(out / "masks" / name, values[labels], crs_wkt=None, transform=transform,
                      colormap=card.colormap)
        fractions = np.bincount(labels.ravel(), minlength=len(card.classes)) / labels.size
        rows.append({"id": start + i, "image": f"images/{name}", "mask": f"masks/{name}", "batch_seed": seed,
                     **{f"fraction_{c.name}": round(float(f), 4) for c, f in zip(card.classes, fractions)}})
    return rows


def _write_index(path: Path, rows: list[dict], params: SynthesisParams, card: ModelCard,
                 sr_card: ModelCard | None) -> None:
    ddim = params.sampler == "ddim"
    extra = {"model": card.name, "sampler": f"ddim-{params.steps}" if ddim else "ddpm-1000",
             "ddim_eta": f"{params.eta:g}" if ddim else "",
             "super_resolution": f"{sr_card.name} (ddim-{params.sr_steps})" if sr_card else "off"}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], *extra])
        writer.writeheader()
        writer.writerows({**r, **extra} for r in rows)


def _first(batches: list[GeneratedPairs], n: int) -> GeneratedPairs:
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
