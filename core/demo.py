"""`make demo`: what the shipped starter models do, on procedural data, in a minute or two.

1. Segments a procedural 0.5 m scene: class raster, class polygons (GeoPackage) and the
   accuracy against the scene's own labels.
2. Generates new image/mask pairs with SatSynth (base + x2 stage) into a dataset folder
   with a preview grid.
3. Refines the boundaries of the segmenter's map of another scene with IDGBR and scores the
   coarse and the refined map against the scene's labels (mIoU, boundary IoU, WFm at 3 px).
4. Detects oil spills in a procedural Sentinel-1-like scene (linear sigma0, 10 m) with a land
   mask: oil class raster, slick polygons with areas, scores against the scene's labels; and
   generates a few SAR training pairs with SAR-JointNet.
5. Fuses the shipped procedural infrared / visible pair (resources/samples/irvis) with Dig2DIG-25
   and the starter prior, writes the per-step infrared weight maps and scores the result with the
   fusion metrics.
6. Detects changes between two dates of a procedural scene (buildings built and demolished,
   seasonal vegetation, another illumination) with the FC-Siam-conc starter, scores them against
   the scene's change mask, and generates (A, B, change mask) triplets with the RDF-MIG starter.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from core.catalog import RESOURCES_DIR
from core.checkpoint import load_card
from core.data.folder import read_class_indices
from core.data.scenes import write_scene
from core.metrics.segmentation import change_scores, confusion_matrix, scores
from core.progress import TqdmProgress
from core.metrics.boundary import boundary_aware_scores
from core.oilspill.generate import SarSynthesisParams, synthesize_sar_pairs
from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
from core.refinement.pipeline import RefineParams, refine_raster
from core.segmentation.pipeline import SegmentParams, segment_raster
from core.synthesis.generate import SynthesisParams, synthesize_pairs

SAMPLE_IRVIS = RESOURCES_DIR / "samples" / "irvis"   # written by `make starter-fusion` (procedural, ours)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__)
    parser.add_argument("--output", default="demo_output")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pairs", type=int, default=8, help="SatSynth pairs to generate")
    parser.add_argument("--refine-size", type=int, default=384, help="side of the scene IDGBR refines (px)")
    parser.add_argument("--sar-size", type=int, default=1024, help="side of the SAR scene for oil-spill detection")
    parser.add_argument("--sar-pairs", type=int, default=4, help="SAR-JointNet pairs to generate")
    parser.add_argument("--fusion-pair", default=str(SAMPLE_IRVIS), help="folder with ir.tif and vi.tif to fuse")
    parser.add_argument("--change-size", type=int, default=512, help="side of the two-date scene (px)")
    parser.add_argument("--change-triplets", type=int, default=4, help="RDF-MIG triplets to generate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.output)
    segment_demo(out, args)
    synthesis_demo(out, args)
    refinement_demo(out, args)
    oilspill_demo(out, args)
    fusion_demo(out, args)
    change_demo(out, args)


def segment_demo(out: Path, args) -> None:
    scene, labels = out / "demo_scene.tif", out / "demo_scene_labels.tif"
    write_scene(scene, labels, args.size, args.size, seed=7, nodata_border=8)
    progress = TqdmProgress("segment")
    result = segment_raster(SegmentParams(
        input_path=str(scene), output_path=str(out / "demo_classes.tif"),
        polygons_path=str(out / "demo_polygons.gpkg"), device=args.device), progress)
    progress.close()

    card = load_card(SegmentParams("", "").resolved_model_dir())
    predicted, truth = (torch.from_numpy(read_class_indices(p, card.classes)) for p in (result.output_path, labels))
    cm = confusion_matrix(predicted, truth, len(card.classes), ignore_index=-1)
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


def refinement_demo(out: Path, args) -> None:
    """The segmenter's map of a new scene is the coarse map, as in the paper (any classifier's map would do)."""
    scene, labels = out / "refine_scene.tif", out / "refine_scene_labels.tif"
    coarse, refined = out / "refine_coarse.tif", out / "refine_refined.tif"
    write_scene(scene, labels, args.refine_size, args.refine_size, seed=8)
    segment_raster(SegmentParams(input_path=str(scene), output_path=str(coarse), device=args.device))
    progress = TqdmProgress("refine")
    result = refine_raster(RefineParams(image_path=str(scene), classification_path=str(coarse),
                                        output_path=str(refined), device=args.device), progress)
    progress.close()
    card = load_card(RefineParams("", "", "").resolved_model_dir())
    truth = read_class_indices(labels, card.classes)
    names = [c.name for c in card.classes]
    print(f"\nIDGBR        : {result.tiles} tiles refined in {result.seconds:.1f} s on {result.device}; "
          f"{result.changed_fraction:.1%} of the pixels changed class")
    print(f"refined map  : {result.output_path} (coarse: {coarse})")
    print(f"{'vs. labels':<13}  {'mIoU':>6} {'bIoU@3':>7} {'WFm@3':>6}")
    scored = {}
    for name, path in (("coarse", coarse), ("refined", refined)):
        m = scored[name] = boundary_aware_scores(read_class_indices(path, card.classes), truth, names, ignore=-1)
        print(f"  {name:<11}  {m['mIoU']:6.3f} {m['bIoU@3']:7.3f} {m['WFm@3']:6.3f}")
    print(refinement_verdict(scored["coarse"], scored["refined"]))


def refinement_verdict(coarse: dict[str, float], refined: dict[str, float]) -> str:
    """One plain sentence: did the refinement help on this scene? A refiner that lowers the scores must say so."""
    worse = [m for m in ("mIoU", "bIoU@3", "WFm@3") if refined[m] < coarse[m]]
    if not worse:
        return "verdict      : the refined map scores at least as well as the coarse map on every metric above."
    return (f"verdict      : the refined map scores LOWER than the coarse map ({', '.join(worse)}): on this scene "
            "the starter refiner does not improve the segmenter's map; keep the coarse map.")


def oilspill_demo(out: Path, args) -> None:
    from core.data.sar import write_land_mask, write_sar_scene
    scene, labels, land = out / "sar_scene.tif", out / "sar_scene_labels.tif", out / "sar_land.gpkg"
    write_sar_scene(scene, labels, args.sar_size, args.sar_size, seed=11, kind="linear")
    write_land_mask(labels, land)
    progress = TqdmProgress("oil spills")
    result = detect_oil_spills(OilSpillParams(
        input_path=str(scene), output_path=str(out / "sar_oil_classes.tif"), land_mask_path=str(land),
        polygons_path=str(out / "sar_oil_slicks.gpkg"), device=args.device), progress)
    progress.close()
    card = load_card(OilSpillParams("", "").resolved_model_dir())
    predicted, truth = (torch.from_numpy(read_class_indices(p, card.classes)) for p in (result.output_path, labels))
    metrics = scores(confusion_matrix(predicted, truth, len(card.classes), ignore_index=-1),
                     [c.name for c in card.classes])
    print(f"\noil spills   : {result.output_path} ({result.tiles} tiles in {result.seconds:.1f} s on {result.device}; "
          f"{result.scaling})")
    print(f"slicks       : {result.polygons_path}: {result.slicks} polygons, {result.oil_area_km2:.3f} km² of oil")
    print(f"vs. labels   : mIoU {metrics['mIoU']:.3f}, " + ", ".join(
        f"{c.name} IoU {metrics['IoU/' + c.name]:.3f}" for c in card.classes))
    folder = out / "sar_pairs"
    shutil.rmtree(folder, ignore_errors=True)   # the demo's own output of an earlier run
    progress = TqdmProgress("SAR pairs")
    pairs = synthesize_sar_pairs(SarSynthesisParams(str(folder), count=args.sar_pairs, steps=50, device=args.device),
                                 progress)
    progress.close()
    print(f"SAR-JointNet : {len(pairs.pairs)} SAR image / label / soft-label pairs of {pairs.size} px (DDIM-50) in "
          f"{pairs.seconds:.1f} s: {pairs.output_dir} (preview: {pairs.preview_path})")



def fusion_demo(out: Path, args) -> None:
    from core.fusion.pipeline import FusionParams, fuse_ir_visible
    from core.metrics.fusion import fusion_metrics, to_gray
    from core.raster import read_array
    pair = Path(args.fusion_pair)
    infrared, visible = pair / "ir.tif", pair / "vi.tif"
    progress = TqdmProgress("fusion")
    result = fuse_ir_visible(FusionParams(str(infrared), str(visible), str(out / "fused.tif"),
                                          weights_path=str(out / "fused_infrared_weights.tif"), device=args.device),
                             progress)
    progress.close()
    ir_gray, vis_gray, fused = (to_gray(read_array(p)[0]) for p in (infrared, visible, result.output_path))
    metrics = fusion_metrics(ir_gray, vis_gray, fused)
    baselines = {"average": fusion_metrics(ir_gray, vis_gray, np.round((ir_gray + vis_gray) / 2)),
                 "max": fusion_metrics(ir_gray, vis_gray, np.maximum(ir_gray, vis_gray))}
    print(f"\nfusion       : {result.output_path} (Dig2DIG-{result.settings['steps']}, S = "
          f"{result.settings['dig_interval']}, {result.tiles} tile(s) in {result.seconds:.1f} s on {result.device}; "
          f"prior {result.prior})")
    print(f"weights      : {result.weights_path}: mean infrared weight per DIG recomputation "
          + ", ".join(f"{w:.3f}" for w in result.mean_infrared_weight))
    shown = ("Qabf", "SSIM", "MI", "VIF", "EN", "SD")
    print("metrics      : " + ", ".join(f"{k} {metrics[k]:.3f}" for k in shown))
    for name, values in baselines.items():
        print(f"  {name + ' of sources':<19}: " + ", ".join(f"{k} {values[k]:.3f}" for k in shown))



def change_demo(out: Path, args) -> None:
    from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs
    from core.change.pipeline import ChangeParams, detect_changes
    from core.data.change import read_change_mask, write_change_pair
    date_a, date_b, truth = out / "change_date_a.tif", out / "change_date_b.tif", out / "change_truth.tif"
    write_change_pair(date_a, date_b, truth, args.change_size, args.change_size, seed=2027)
    progress = TqdmProgress("changes")
    result = detect_changes(ChangeParams(str(date_a), str(date_b), str(out / "changes.tif"),
                                         polygons_path=str(out / "changes.gpkg"), device=args.device), progress)
    progress.close()
    predicted, expected = (torch.from_numpy(read_change_mask(p)) for p in (result.output_path, truth))
    predicted = torch.where(predicted == 255, 0, predicted)     # nodata in the prediction: counted as no change
    metrics = change_scores(confusion_matrix(predicted, expected, 2, ignore_index=255))
    print(f"\nchanges      : {result.output_path} ({result.tiles} tiles in {result.seconds:.1f} s on {result.device}); "
          f"{result.polygons} change polygons, {result.changed_area_km2 * 1e6:.0f} m² ({result.polygons_path})")
    print(f"vs. truth    : change IoU {metrics['IoU']:.3f}, F1 {metrics['F1']:.3f}, recall {metrics['recall']:.3f}, "
          f"precision {metrics['precision']:.3f}")
    folder = out / "change_triplets"
    shutil.rmtree(folder, ignore_errors=True)   # the demo's own output of an earlier run
    progress = TqdmProgress("change triplets")
    triplets = synthesize_change_pairs(ChangeSynthesisParams(str(folder), count=args.change_triplets,
                                                             device=args.device), progress)
    progress.close()
    print(f"RDF-MIG      : {len(triplets.triplets)} (A, B, change mask) triplets of {triplets.size} px "
          f"({', '.join(triplets.bands)}; DDIM-50) in {triplets.seconds:.1f} s: {triplets.output_dir} "
          f"(preview: {triplets.preview_path})")


if __name__ == "__main__":
    main()
