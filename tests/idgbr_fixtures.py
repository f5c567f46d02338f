"""A tiny IDGBR model directory with random weights, for tests of everything that loads a refiner."""
from __future__ import annotations

from pathlib import Path

import torch

from core.checkpoint import ClassInfo, ModelCard, Normalization, save_model
from core.refinement.model import GUIDANCE_SCALE, SAMPLING_STEPS, TASK, architecture_for, build_model

DEFAULT_CLASSES = [(0, "background", "#000000"), (1, "building", "#d9463b"), (2, "road", "#9a9a9a")]


def make_refiner_dir(path: str | Path, classes: list[tuple[int, str, str]] | None = None, tile_size: int = 32,
                     seed: int = 0) -> Path:
    """A real model directory (model.json + model.safetensors via save_model): the small preset with random
    weights, RGB uint8 images scaled from [0, 255]."""
    classes = classes or DEFAULT_CLASSES
    architecture = architecture_for("small", len(classes))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(architecture)
    card = ModelCard(task=TASK, name="tiny random refiner", architecture=architecture,
                     bands=["red", "green", "blue"], normalization=Normalization(offset=[0.0] * 3, scale=[255.0] * 3),
                     classes=[ClassInfo(value, name, color) for value, name, color in classes], tile_size=tile_size,
                     extra={"dtype": "uint8", "sampling_steps": SAMPLING_STEPS, "guidance_scale": GUIDANCE_SCALE})
    return save_model(path, card, model.state_dict())
