"""`python -m training <subcommand>`: fit every model of rs-diffusion headlessly."""
from __future__ import annotations

import argparse
import logging
import sys

from training import (augment_eval, changedet, convert_guided_diffusion, fcf, fusion, fusion_eval, idgbr, idgbr_data,
                      rdfmig, sar, satsynth, scenes, segment)

SUBCOMMANDS = {  # name: (add the arguments, run, help)
    "scenes": (scenes.add_arguments, scenes.main, "write a procedural labelled dataset (no download needed)"),
    "segment": (segment.add_arguments, segment.main, "train a segmentation model on a folder of image/mask pairs"),
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
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SUBCOMMANDS[args.command][1](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
