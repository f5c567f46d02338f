"""Model directories: `model.json` (the card) + `model.safetensors` (the weights).

The card carries everything a pipeline needs to use the weights correctly on a new
raster (task, architecture, classes, band order, normalisation, tile size), so the
plugin never guesses. Weights are safetensors: loading them can never execute code.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
LOADED_MODELS_KEPT = 3   # inference models kept built and loaded between runs (each a few to ~100 MB)
_LOADED: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
_LOADED_LOCK = threading.Lock()


class ModelError(ValueError):
    """A model directory that cannot be used, explained for the user."""


@dataclass
class ClassInfo:
    value: int
    name: str
    color: str  # "#rrggbb"


@dataclass
class Normalization:
    """x = (raw - offset) / scale per band, in the raw units of the input raster: the band mean and standard
    deviation for the segmenters, the minimum and range for models that work in [0, 1] (SatSynth, IDGBR,
    change detection), the midpoint and half-range for [-1, 1] (FCF, the fusion prior)."""
    offset: list[float]
    scale: list[float]

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> "Normalization":
        """Also reads cards written before the fields were renamed (format 1 used "mean" / "std")."""
        data = dict(data)
        for old, new in (("mean", "offset"), ("std", "scale")):
            if old in data and new not in data:
                data[new] = data.pop(old)
        return cls(**data)


@dataclass
class ModelCard:
    task: str
    name: str
    architecture: dict[str, Any]
    bands: list[str]
    normalization: Normalization
    classes: list[ClassInfo] = field(default_factory=list)
    tile_size: int = 256
    ground_resolution: float | None = None
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        data = dict(data)
        data["normalization"] = Normalization.from_dict(data["normalization"])
        data["classes"] = [ClassInfo(**c) for c in data.get("classes", [])]
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"Unknown field(s) in model card: {', '.join(sorted(unknown))}.")
        return cls(**data)

    @property
    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        from core.raster import hex_to_rgba
        return {c.value: hex_to_rgba(c.color) for c in self.classes}


def load_card(model_dir: str | os.PathLike, task: str | None = None) -> ModelCard:
    """Read and validate a card; `task` rejects a model made for another task."""
    path = Path(model_dir)
    card_path = path / CARD_NAME if path.is_dir() else path
    if not card_path.is_file():
        raise ModelError(f"'{model_dir}' is not a model directory: {CARD_NAME} not found.")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
        card = ModelCard.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ModelError(f"Model card {card_path} is invalid: {exc}") from exc
    if card.format_version > FORMAT_VERSION:
        raise ModelError(f"Model card {card_path} has format {card.format_version}; this plugin reads "
                         f"up to {FORMAT_VERSION}. Update rs-diffusion.")
    if task is not None and card.task != task:
        raise ModelError(f"Model '{card.name}' is a '{card.task}' model, but this tool needs a '{task}' model.")
    if len(card.normalization.offset) != len(card.bands) or len(card.normalization.scale) != len(card.bands):
        raise ModelError(f"Model card {card_path}: normalisation must have one offset and scale per band.")
    _check_against_architecture(card, card_path)
    return card


def _check_against_architecture(card: ModelCard, card_path: Path) -> None:
    """The card's class and band lists must match what the architecture (and so the strictly loaded weights)
    outputs and takes: a 5-class head read through a 3-class card would silently mislabel every pixel."""
    outputs = card.architecture.get("classes")
    if card.classes and isinstance(outputs, int) and outputs != len(card.classes):
        raise ModelError(f"Model card {card_path}: its 'classes' field lists {len(card.classes)} classes, but its "
                         f"architecture (and weights) have {outputs} output classes.")
    inputs = card.architecture.get("in_channels", card.architecture.get("bands"))
    if isinstance(inputs, int) and inputs != len(card.bands):
        raise ModelError(f"Model card {card_path}: its 'bands' field lists {len(card.bands)} bands, but its "
                         f"architecture (and weights) take {inputs} input channels.")


def load_weights(model_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(model_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelError(f"Weights file missing: {path}.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"Weights file {path} is corrupt or not safetensors: {exc}") from exc


def load_into(model: torch.nn.Module, model_dir: str | os.PathLike) -> torch.nn.Module:
    """Load weights strictly: a missing or unexpected tensor means card and weights disagree."""
    state = load_weights(model_dir)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"Weights in {model_dir} do not match the architecture in its card: "
                         f"{str(exc).splitlines()[0]}") from exc
    return model


def load_for_inference(model_dir: str | os.PathLike, build: Callable[[], torch.nn.Module],
                       device: torch.device | str = "cpu") -> torch.nn.Module:
    """load_into(build(), model_dir) on `device` in eval mode, kept for the next run in this process (a QGIS
    session, a batch of Processing runs): building the model is a fixed cost per run (smp's create_model was 8%
    of a 1024 px segmentation). Keyed on the folder, the device and its card and weights files' size and
    modification time, so a retrained or replaced model is loaded afresh. Every caller gets the same object:
    for inference only (no training, no weight changes, no in-place conversion)."""
    folder = Path(model_dir).resolve()
    key = (str(folder), str(device), *((f.stat().st_mtime_ns, f.stat().st_size)
                                        for f in (folder / CARD_NAME, folder / WEIGHTS_NAME) if f.is_file()))
    with _LOADED_LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    model = load_into(build(), model_dir).to(device).eval()
    with _LOADED_LOCK:
        _LOADED[key] = model
        while len(_LOADED) > LOADED_MODELS_KEPT:
            _LOADED.popitem(last=False)
    return model


def save_model(model_dir: str | os.PathLike, card: ModelCard, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write card + weights to a temporary directory, then swap it in place."""
    from core.raster import staged_dir
    with staged_dir(model_dir, replace=True) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME))
        (tmp / CARD_NAME).write_text(card.to_json(), encoding="utf-8")
    return Path(model_dir)
