"""Start a model from another model's weights (fine-tuning, `--init-from MODEL`).

Every tensor whose name and shape match is copied. The head (the per-class output convolution, named by the
model module's HEAD_KEYS / head_keys) is rebuilt for the new class table: the row of a class whose name the base
model also has is copied, other rows keep their fresh initialisation. Any other tensor of another shape (the first
convolution when the band count differs) keeps its fresh initialisation, and the notes say so.
"""
from __future__ import annotations

import torch

from core.checkpoint import ClassInfo, ModelCard, load_weights
from training.trainer import TrainingError


def class_rows(base: list[ClassInfo], classes: list[ClassInfo]) -> list[int | None]:
    """For each class of the new table, the base model's output row of the same name (case-insensitive) or None."""
    by_name = {c.name.strip().lower(): i for i, c in enumerate(base)}
    return [by_name.get(c.name.strip().lower()) for c in classes]


def transfer_weights(model: torch.nn.Module, base_state: dict[str, torch.Tensor], head: tuple[str, ...],
                     rows: list[int | None]) -> list[str]:
    """Copy `base_state` into `model` as the module docstring says; the names of re-initialised tensors."""
    state = model.state_dict()
    fresh = []
    for key, tensor in state.items():
        base = base_state.get(key)
        if key in head and base is not None and base.shape[1:] == tensor.shape[1:]:
            merged = tensor.clone()
            for i, row in enumerate(rows):
                if row is not None and row < len(base):
                    merged[i] = base[row]
            state[key] = merged
        elif base is not None and base.shape == tensor.shape:
            state[key] = base.to(tensor.dtype)
        else:
            fresh.append(key)
    model.load_state_dict(state)
    return fresh


def start_from(model: torch.nn.Module, base_dir: str, base: ModelCard, classes: list[ClassInfo],
               head: tuple[str, ...], bands: int) -> list[str]:
    """Load the base model's weights into `model`; the notes a user should read (what was kept, what is new)."""
    rows = class_rows(base.classes, classes) if base.classes else list(range(len(classes)))
    fresh = transfer_weights(model, load_weights(base_dir), head, rows)
    body = [key for key in fresh if key not in head]
    if len(body) > 8:
        raise TrainingError(f"Model '{base.name}' ({base_dir}) shares too little with the model being trained "
                            f"({len(body)} tensors differ, e.g. {', '.join(body[:3])}): choose a base model of "
                            "the same architecture, or train from scratch.")
    notes = [f"Encoder and decoder start from '{base.name}'."]
    kept = [c.name for c, row in zip(classes, rows) if row is not None]
    new = [c.name for c, row in zip(classes, rows) if row is None]
    if len(classes) != len(base.classes or classes) or new or rows != list(range(len(rows))):
        notes.append("New output head for the classes " + ", ".join(c.name for c in classes)
                     + (f"; kept from the base model: {', '.join(kept)}" if kept else "")
                     + (f"; new: {', '.join(new)}" if new else "") + ".")
    if bands != len(base.bands):
        notes.append(f"The base model takes {len(base.bands)} band(s) ({', '.join(base.bands)}) and the data has "
                     f"{bands}: its first convolution is re-initialised ({', '.join(body) or 'none'}) and learnt "
                     "from your data.")
    elif body:
        notes.append(f"Re-initialised (shape differs from the base model): {', '.join(body)}.")
    return notes
