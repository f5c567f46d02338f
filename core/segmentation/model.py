"""Segmentation networks: smp encoder + decoder + head, built from a card's architecture."""
from __future__ import annotations

import os
from typing import Any

import segmentation_models_pytorch as smp
import torch

from core.checkpoint import ModelCard, load_card, load_into

ARCHITECTURES = ("FPN", "Unet", "UnetPlusPlus", "DeepLabV3Plus")
# Small enough to ship (~8 MB) and to train on a CPU in minutes.
STARTER_ARCHITECTURE = {"arch": "Unet", "encoder": "tu-mobilenetv3_small_100",
                        "decoder": {"decoder_channels": [128, 64, 32, 16, 16]}}
# The per-class output convolution of every smp model: one row per class, what fine-tuning remaps by class name.
HEAD_KEYS = ("segmentation_head.0.weight", "segmentation_head.0.bias")


def build_segmenter(architecture: dict[str, Any]) -> torch.nn.Module:
    """architecture = {arch, encoder, in_channels, classes, decoder: {...smp kwargs}}."""
    arch = architecture["arch"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown segmentation architecture '{arch}'; choose one of {', '.join(ARCHITECTURES)}.")
    return smp.create_model(arch, encoder_name=architecture["encoder"], encoder_weights=None,
                            in_channels=architecture["in_channels"], classes=architecture["classes"],
                            **architecture.get("decoder", {}))


def load_segmenter(model_dir: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """A trained segmentation model and its card, e.g. for the proxy-FID features (core.metrics.fid)."""
    card = load_card(model_dir, task="segmentation")
    return load_into(build_segmenter(card.architecture), model_dir), card


def load_encoder_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Initialise the encoder from a local file (safetensors, or a tensor-only torch file)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if len(missing) == len(model.encoder.state_dict()):
        raise ValueError(f"Encoder weights {path} share no tensor names with encoder "
                         f"'{type(model.encoder).__name__}'.")
