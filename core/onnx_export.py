"""ONNX export of the raster segmenters, in the form Deepness (the QGIS ONNX plugin) and ONNX Runtime read.

Deepness feeds one input, N x C x H x W float tiles made from 8-bit bands as x / 255 and then
(x - mean) / std with the `standardization_mean` / `standardization_std` metadata, and reads class
probabilities (N x classes x H x W) from a "Segmentor". So the graph ends with the softmax; a model that takes
one tensor per date (FC-Siam-conc) reads both dates stacked along the channels, date A's bands then date B's
(our change pipeline's own layout); and the card's normalisation (raw - offset) / scale becomes
mean = offset / 255, std = scale / 255, exact for 8-bit rasters. The whole card travels too
(`rs_diffusion_card`), so nothing the card says is lost. Only the batch axis is dynamic: Deepness cuts tiles of
`tile_size`, and FC-Siam-conc's padding to a multiple of 16 is fixed at export for that size.

This module is method-agnostic (the adapters load the model): onnx and onnxruntime are optional dependencies
(`pip install 'rs-diffusion[onnx]'`), imported only when an export or an ONNX Runtime session is asked for.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.checkpoint import ModelCard, ModelError

OPSET = 17
TOLERANCE = 1e-4          # largest |ONNX Runtime - torch| probability accepted right after an export
DEFAULT_OVERLAP_PERCENT = 15
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"


def require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or one clear error saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ModelError(f"ONNX export needs the optional packages onnx and onnxruntime ({exc.name} is missing): "
                         "pip install 'rs-diffusion[onnx]' (or: pip install onnx onnxruntime).") from exc
    return onnx, onnxruntime


class Probabilities(nn.Module):
    """The exported graph: class probabilities from one input tensor (two dates stacked along channels when the
    model takes one tensor per date)."""

    def __init__(self, model: nn.Module, tile_size: int):
        super().__init__()
        self.model = model
        self.dates = len(inspect.signature(model.forward).parameters)
        if self.dates not in (1, 2) or (self.dates == 2 and tile_size % model.multiple):
            raise ModelError(f"Cannot export {type(model).__name__} at tile size {tile_size}: ONNX export takes "
                             "one-image models, and two-date models at a tile size they need no padding for.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dates == 1:
            return torch.softmax(self.model(x), dim=1)
        # FC-Siam-conc's forward runs both dates as one encoder batch and splits it with len(a), which the tracer
        # freezes at the example's batch size; one encoder pass per date is the same computation in eval mode
        # and keeps the batch axis dynamic.
        a, b = x.chunk(2, dim=1)
        return torch.softmax(self.model.decode(self.model.encoder(a), self.model.encoder(b)), dim=1)


@dataclass
class OnnxExport:
    path: str
    input_shape: list           # ["batch", C, H, W]
    metadata: dict[str, str]    # key -> JSON text, as written into the file
    max_abs_difference: float   # ONNX Runtime vs torch on the check batch


def deepness_metadata(card: ModelCard, dates: int, overlap_percent: int) -> dict[str, str]:
    """Deepness's metadata keys (values JSON-encoded, as its documentation for model creators asks)."""
    values: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(card.classes)},
        "tile_size": card.tile_size,
        "tiles_overlap": overlap_percent,
        "standardization_mean": [o / 255.0 for o in card.normalization.offset] * dates,
        "standardization_std": [s / 255.0 for s in card.normalization.scale] * dates,
    }
    if card.ground_resolution:
        values["resolution"] = card.ground_resolution * 100.0    # Deepness: centimetres per pixel
    metadata = {key: json.dumps(value) for key, value in values.items()}
    metadata["rs_diffusion_card"] = json.dumps(asdict(card))
    return metadata


def export_onnx(model: nn.Module, card: ModelCard, output: str | os.PathLike,
                overlap_percent: int = DEFAULT_OVERLAP_PERCENT) -> OnnxExport:
    """Write `model` (weights loaded, as its card describes it) to `output` and check it with ONNX Runtime."""
    onnx, _ = require_onnx()
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ValueError(f"The ONNX file name must end in .onnx, not '{output.name}'.")
    if not 0 <= overlap_percent < 100:
        raise ValueError(f"Tile overlap must be a percentage in [0, 100), not {overlap_percent}.")
    if not card.classes:
        raise ModelError(f"Model '{card.name}' has no classes: only segmenters export to ONNX.")
    output.parent.mkdir(parents=True, exist_ok=True)
    graph = Probabilities(model.cpu().eval(), card.tile_size).eval()
    channels = len(card.bands) * graph.dates
    example = torch.randn(2, channels, card.tile_size, card.tile_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, (example,), str(output), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    metadata = deepness_metadata(card, graph.dates, overlap_percent)
    proto = onnx.load(str(output))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{card.name} (rs-diffusion {card.task} model)"
    onnx.save(proto, str(output))
    with torch.no_grad():
        expected = graph(example).numpy()
    got = ort_session(output).run(None, {INPUT_NAME: example[:1].numpy()})[0]
    difference = float(np.abs(got - expected[:1]).max())
    if not difference <= TOLERANCE:
        raise ModelError(f"The ONNX file {output} disagrees with the torch model by {difference:.2g} "
                         f"(more than {TOLERANCE:g}): an operator did not export faithfully.")
    return OnnxExport(str(output), ["batch", channels, card.tile_size, card.tile_size], metadata, difference)


def ort_session(model: str | os.PathLike | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session (a file, or a serialised model) with as many threads as torch uses."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ONNX Runtime threads otherwise spin for a while after each run, taking the cores from torch work that
    # follows (a pipeline mixing both, or a benchmark interleaving them)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
