"""synthesize_pairs: a SatSynth model (+ optional x2 stage) -> a dataset folder of new pairs.

The output is the folder format every trainer here reads (images/, masks/, classes.json)
plus index.csv (one row per pair: files, seed, sampler, class fractions) and preview.png.
Generated pairs have no location, so the GeoTIFFs carry no CRS (pixel-unit transform at the
model's ground resolution). Images are written in the training data's value range and type.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import resolve_model_dir
from core.checkpoint import ModelCard, ModelError, load_card, load_into
from core.data.folder import write_class_table
from core.data.generated import (GeneratedPairs, check_generation, first_pairs, save_pair_grid, to_raw,
                                 write_generated_folder)
from core.device import describe_device, resolve_device
from core.diffusion.sampling import DDIM_ETA, SAMPLERS
from core.progress import Progress, SubProgress
from core.raster import write_geotiff
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
        return resolve_model_dir(self.model_dir, TASK)

    def resolved_sr_model_dir(self) -> str:
        return resolve_model_dir(self.sr_model_dir, SR_TASK)


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

    def generate(count: int, seed: int, progress: Progress) -> GeneratedPairs:
        pairs = sample(base, count, params.sampler, params.steps, seed,
                       progress=SubProgress(progress, 0, 0.5 if sr else 1), eta=params.eta)
        if sr:
            pairs = super_resolve(sr, pairs, params.sr_steps, seed,
                                  progress=SubProgress(progress, 0.5, 1))
        return pairs

    def finish(out: Path, first: list[GeneratedPairs]) -> None:
        write_class_table(out, [asdict(c) for c in out_card.classes], out_card.bands)
        save_pair_grid(first_pairs(first, PREVIEW_PAIRS), [c.color for c in out_card.classes], out / "preview.png")

    rows = write_generated_folder(
        params.output_dir, params.count, params.batch_size, params.seed, ("images", "masks"), generate,
        lambda out, pairs, start, seed: _write_batch(out, pairs, out_card, start, seed),
        _run_columns(params, card, sr_card), finish, PREVIEW_PAIRS, progress)
    final = Path(params.output_dir)
    return SynthesisResult(str(final), str(final / "index.csv"), str(final / "preview.png"),
                           [(str(final / r["image"]), str(final / r["mask"])) for r in rows],
                           [asdict(c) for c in out_card.classes], size,
                           describe_device(device), time.perf_counter() - started)


def _check(params: SynthesisParams) -> None:
    check_generation(params.count, params.batch_size)
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


def _run_columns(params: SynthesisParams, card: ModelCard, sr_card: ModelCard | None) -> dict[str, str]:
    ddim = params.sampler == "ddim"
    return {"model": card.name, "sampler": f"ddim-{params.steps}" if ddim else "ddpm-1000",
            "ddim_eta": f"{params.eta:g}" if ddim else "",
            "super_resolution": f"{sr_card.name} (ddim-{params.sr_steps})" if sr_card else "off"}
