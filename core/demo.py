"""`make demo`: what the shipped starter models do, on procedural data, in a minute or two.

1. Segments a procedural 0.5 m scene: class raster, class polygons (GeoPackage) and the
   accuracy against the scene's own labels.
2. Generates new image/mask pairs with SatSynth (base + x2 stage) into a dataset folder
   with a preview grid.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from core.checkpoint import load_card
from core.data.scenes import write_scene
from core.metrics.segmentation import confusion_matrix, scores
from core.progress import TqdmProgress
from core.raster import read_array
from core.segmentation.pipeline import SegmentParams, segment_raster
from core.synthesis.generate import SynthesisParams, synthesize_pairs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__)
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pairs", type=int, default=8, help="SatSynth pairs to generate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.output)
    segment_demo(out, args)
    synthesis_demo(out, args)


def segment_demo(out: Path, args) -> None:
    scene, labels = out / "demo_scene.tif", out / "demo_scene_labels.tif"
    write_scene(scene, labels, args.size, args.size, seed=7, nodata_border=8)
    progress = TqdmProgress("segment")
    result = segment_raster(SegmentParams(
        input_path=str(scene), output_path=str(out / "demo_classes.tif"),
        polygons_path=str(out / "demo_polygons.gpkg"), device=args.device), progress)
    progress.close()

    card = load_card(SegmentParams("", "").resolved_model_dir())
    predicted, _ = read_array(result.output_path)
    truth, _ = read_array(labels)
    lookup = {c.value: i for i, c in enumerate(card.classes)}
    to_index = torch.full((256,), -100, dtype=torch.long)
    for value, index in lookup.items():
        to_index[value] = index
    cm = confusion_matrix(to_index[torch.from_numpy(predicted[0]).long()],
                          to_index[torch.from_numpy(truth[0]).long()], len(card.classes))
    metrics = scores(cm, [c.name for c in card.classes])
    print(f"\nclass raster : {result.output_path}\npolygons     : {result.polygons_path}")
    print(f"device       : {result.device}, {result.tiles} tiles in {result.seconds:.1f} s")
    print(f"vs. labels   : mIoU {metrics['mIoU']:.3f}, mean F1 {metrics['mF1']:.3f}, "
          f"pixel accuracy {metrics['accuracy']:.3f}")
    for c in card.classes:
        print(f"  {c.name:<10} IoU {metrics['IoU/' + c.name]:.3f}")


def synthesis_demo(out: Path, args) -> None:
    folder = out / "demo_pairs"
    shutil.rmtree(folder, ignore_errors=True)   # the demo's own output of an earlier run
    progress = TqdmProgress("synthesize")
    result = synthesize_pairs(SynthesisParams(str(folder), count=args.pairs, sampler="ddim", steps=50,
                                              super_resolution=True, device=args.device), progress)
    progress.close()
    print(f"\nSatSynth     : {len(result.pairs)} image/mask pairs of {result.size} px (DDIM-50, x2 stage) "
          f"in {result.seconds:.1f} s on {result.device}")
    print(f"dataset      : {result.output_dir} (index: {result.index_path})")
    print(f"preview grid : {result.preview_path}")


if __name__ == "__main__":
    main()
