"""`make demo`: segment a procedural 0.5 m scene with the shipped starter model.

Writes the scene, its class raster, class polygons (GeoPackage) and prints the accuracy
against the scene's own labels.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from core.checkpoint import load_card
from core.data.scenes import write_scene
from core.metrics.segmentation import confusion_matrix, scores
from core.progress import TqdmProgress
from core.raster import read_array
from core.segmentation.pipeline import SegmentParams, segment_raster


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__)
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.output)
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


if __name__ == "__main__":
    main()
