"""`python -m training <subcommand>`: fit every model of rs-diffusion headlessly.

Known failures (a bad config, data folder, model folder or saved state) print one line,
"error: <message>", and exit with code 2; --debug shows the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.checkpoint import ModelError
from core.fusion.convert import ConversionError
from core.raster import RasterError
from training import (augment_eval, changedet, convert_guided_diffusion, fcf, finetune, fusion, fusion_eval, idgbr,
                      idgbr_data, rdfmig, sar, satsynth, scenes, segment)
from training import export_onnx
from training.trainer import TrainingError

SUBCOMMANDS = {  # name: (add the arguments, run, help)
    "scenes": (scenes.add_arguments, scenes.main, "write a procedural labelled dataset (no download needed)"),
    "segment": (segment.add_arguments, segment.main, "train a segmentation model on a folder of image/mask pairs"),
    "finetune": (finetune.add_arguments, finetune.main,
                 "fit a segmenter, oil-spill or change detector to an image and its labels (polygons or a raster), "
                 "starting from the starter or another model (what the QGIS Train tools run)"),
    "satsynth": (satsynth.add_arguments, satsynth.main, "train the SatSynth joint image + label diffusion model"),
    "satsynth-sr": (satsynth.add_arguments, satsynth.main_sr, "train the SatSynth x2 super-resolution stage"),
    "synthesize": (satsynth.add_synthesize_arguments, satsynth.main_synthesize,
                   "generate image/label pairs with a SatSynth model (+ x2 stage) into a dataset folder"),
    "augment-eval": (augment_eval.add_arguments, augment_eval.main,
                     "train one segmenter per synthetic ratio R and score each on held-out real data"),
    "coarse-labels": (idgbr_data.add_coarse_arguments, idgbr_data.main_coarse,
                      "write coarse class maps for a dataset (a segmenter's predictions and/or degraded masks)"),
    "idgbr-embed": (idgbr.add_embed_arguments, idgbr.main_embed,
                    "train the IDGBR label embedding (class map <-> 3-channel image)"),
    "idgbr-vae": (idgbr.add_vae_arguments, idgbr.main_vae,
                  "train the small IDGBR autoencoder on image patches and embedded masks"),
    "idgbr": (idgbr.add_arguments, idgbr.main,
              "train the IDGBR boundary-refinement diffusion model on image/mask/coarse triplets"),
    "evaluate-refinement": (idgbr_data.add_evaluate_arguments, idgbr_data.main_evaluate,
                            "refine a dataset's coarse maps and compare coarse vs refined boundary metrics"),
    "sar-scenes": (sar.add_scenes_arguments, sar.main_scenes,
                   "write a procedural SAR oil-spill dataset (sea clutter, slicks, look-alikes, ships, land)"),
    "sar-jointnet": (sar.add_jointnet_arguments, sar.main_jointnet,
                     "train SAR-JointNet (joint SAR image + label diffusion), stage 1, 2 or 3"),
    "sar-synthesize": (sar.add_synthesize_arguments, sar.main_synthesize,
                       "generate SAR image / label / soft-label pairs with a SAR-JointNet model"),
    "sar-filter-pairs": (sar.add_filter_arguments, sar.main_filter,
                         "keep the generated SAR pairs whose labels a real-data model agrees with best"),
    "saross": (sar.add_saross_arguments, sar.main_saross,
               "train the SAROSS-Net oil-spill segmenter (with --synthetic: DAKD distillation)"),
    "sar-evaluate": (sar.add_evaluate_arguments, sar.main_evaluate,
                     "score a SAROSS-Net model on a SAR dataset (mIoU, per-class IoU and F1)"),
    "irvis-pairs": (fusion.add_pairs_arguments, fusion.main_pairs,
                    "write procedural co-registered infrared / visible pairs (ir/ and vi/)"),
    "fusion-prior": (fusion.add_arguments, fusion.main,
                     "train an unconditional diffusion prior on image patches (for Dig2DIG / DDFM fusion)"),
    "fuse": (fusion.add_fuse_arguments, fusion.main_fuse,
             "fuse every infrared / visible pair of a folder (Dig2DIG or DDFM) into a folder of fused images"),
    "evaluate-fusion": (fusion_eval.add_arguments, fusion_eval.main,
                        "score fused images against their infrared / visible pairs (EN, SD, SF, AG, EI, MI, SCD, "
                        "VIF, Qabf, Nabf, SSIM, MSE, PSNR, CC)"),
    "change-scenes": (changedet.add_scenes_arguments, changedet.main_scenes,
                      "write procedural bi-temporal change pairs (A/, B/, label/: buildings appear and disappear)"),
    "changedet": (changedet.add_arguments, changedet.main,
                  "train the FC-Siam-conc change detector (--synthetic: real:synthetic 1:R per batch)"),
    "changedet-evaluate": (changedet.add_evaluate_arguments, changedet.main_evaluate,
                           "score a change detector on whole images (IoU, F1, precision, recall of change)"),
    "fcf": (fcf.add_arguments, fcf.main,
            "train the RDF-MIG FCF module (each date's bands <-> one channel) on a change folder (A/, B/, label/)"),
    "rdfmig": (rdfmig.add_arguments, rdfmig.main,
               "train the RDF-MIG joint (date A, date B, change mask) diffusion model (--loss mse|mcrd, --vae)"),
    "change-vae": (rdfmig.add_vae_arguments, rdfmig.main_vae,
                   "train the small autoencoder of RDF-MIG's latent variant on FCF feature images"),
    "convert-guided-diffusion": (convert_guided_diffusion.add_arguments, convert_guided_diffusion.main,
                                 "turn a local guided-diffusion checkpoint (.pt) into a fusion-prior model folder"),
    "export-onnx": (export_onnx.add_arguments, export_onnx.main,
                    "write a segmenter, SAROSS-Net or FC-Siam-conc model as one .onnx file (Deepness, ONNX Runtime)"),
}
# Failures in the user's terms: their message is the whole story.
USER_ERRORS = (TrainingError, RasterError, ModelError, ConversionError, FileNotFoundError)
# A plain ValueError raised in these folders is our own parameter check, not a bug in a library call.
OUR_SOURCES = tuple(str(Path(__file__).resolve().parents[1] / name) for name in ("core", "training"))


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` says all there is to say in one line (else it is a bug and its traceback matters)."""
    if isinstance(exc, USER_ERRORS):
        return True
    if type(exc) is not ValueError or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(OUR_SOURCES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    debug_help = "on an error, show the full traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text)
        add_arguments(subparser)
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        SUBCOMMANDS[args.command][1](args)
    except Exception as exc:
        if args.debug or not is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
