"""`python -m training export-onnx`: a segmenter, SAROSS-Net or FC-Siam-conc model folder -> one .onnx file
for Deepness / ONNX Runtime (core/onnx_export.py says what the file holds)."""
from __future__ import annotations

import argparse

from core.change.pipeline import load_changedet
from core.checkpoint import ModelError, load_card
from core.oilspill.pipeline import load_saross
from core.onnx_export import DEFAULT_OVERLAP_PERCENT, OnnxExport, export_onnx
from core.segmentation.model import load_segmenter

LOADERS = {"segmentation": load_segmenter, "saross": load_saross, "changedet": load_changedet}


def export_model_dir(model_dir: str, output: str, overlap_percent: int = DEFAULT_OVERLAP_PERCENT) -> OnnxExport:
    task = load_card(model_dir).task
    if task not in LOADERS:
        raise ModelError(f"'{model_dir}' is a '{task}' model; ONNX export takes {', '.join(LOADERS)} models.")
    model, card = LOADERS[task](model_dir)
    return export_onnx(model, card, output, overlap_percent)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (model.json + model.safetensors)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--overlap-percent", type=int, default=DEFAULT_OVERLAP_PERCENT,
                        help="tile overlap Deepness proposes, in percent of the tile (default %(default)s)")


def main(args: argparse.Namespace) -> None:
    result = export_model_dir(args.model, args.output, args.overlap_percent)
    print(f"ONNX model written to {result.path}: input {result.input_shape}, class probabilities out; "
          f"ONNX Runtime matches torch within {result.max_abs_difference:.1e}.")
