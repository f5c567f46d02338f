"""The rdfmig section: is MCRD robust to noisy change masks, and does FCF beat plain concatenation?

Everything runs on procedural change pairs (core.data.change) at a small CPU budget:
- three joint models on the same real training set, whose masks are 20% corrupted (each corrupted
  sample carries another sample's mask): FCF + MSE, FCF + MCRD, and the concatenation ablation + MSE;
  FCF is the shipped starter (trained on clean data: masks do not enter it);
- each model generates a synthetic set twice the size of the real one (DDIM-50);
- the same FC-Siam-conc is trained on real (noisy) + each synthetic set (1 : 2 per batch) and on real
  data alone, and scored on held-out procedural pairs with clean masks (IoU / F1 / recall of change);
- proxy FID of the generated date-B images against real ones, with the starter segmenter's encoder
  (core.metrics.fid; no Inception weights here).
mcrd_noisy_label_gain = IoU(MCRD synthetic) - IoU(MSE synthetic); fcf_vs_concat compares FID and IoU.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import step
from core.catalog import starter_model_dir
from core.change.generate import ChangeSynthesisParams, synthesize_change_pairs
from core.data.change import list_change_triplets, write_change_dataset
from core.device import resolve_device
from core.metrics.fid import SegmenterFeatures, frechet_distance
from core.raster import read_array
from core.segmentation.model import load_segmenter
from training.changedet import ChangeDetTrainConfig, evaluate_changedet, train_changedet
from training.rdfmig import RdfmigTrainConfig, train_rdfmig

LABEL_NOISE = 0.2
JOINT_MODELS = {"fcf_mse": ("fcf", "mse"), "fcf_mcrd": ("fcf", "mcrd"), "concat_mse": ("concat", "mse")}


def bench(cfg: argparse.Namespace) -> dict:
    fcf = starter_model_dir("fcf")
    if not (fcf / "model.json").is_file():
        raise SystemExit(f"rdfmig: no FCF starter in {fcf} (run `make starter-rdfmig`).")
    real_count, held_out, size = (8, 4, 128) if cfg.quick else (60, 20, 128)
    joint_steps, detector_steps = (20, 20) if cfg.quick else (500, 400)
    with tempfile.TemporaryDirectory(prefix="rsd-bench-rdfmig-") as tmp:
        tmp = Path(tmp)
        with step(f"{real_count} training + {held_out} held-out procedural pairs"):
            real = write_change_dataset(tmp / "real", real_count, size, seed=101)
            test = write_change_dataset(tmp / "test", held_out, size, seed=202)
        synthetic, fid = {}, {}
        features = SegmenterFeatures(*load_segmenter(cfg.model), resolve_device(cfg.device))
        real_b = features(np.stack([read_array(b)[0] for _, b, _ in list_change_triplets(real)])[:, :, :64, :64])
        for name, (representation, loss) in JOINT_MODELS.items():
            with step(f"RDF-MIG {name} ({joint_steps} steps, {LABEL_NOISE:.0%} corrupted masks)"):
                model = train_rdfmig(RdfmigTrainConfig(
                    data=str(real), output=str(tmp / name), fcf=str(fcf), representation=representation, loss=loss,
                    label_noise=LABEL_NOISE, steps=joint_steps, val_every=0, checkpoint_every=10 ** 6, seed=3,
                    device=cfg.device))
            with step(f"{2 * real_count} triplets from {name} (DDIM-50)"):
                result = synthesize_change_pairs(ChangeSynthesisParams(
                    str(tmp / f"{name}_pairs"), count=2 * real_count, model_dir=str(model), steps=50, seed=7,
                    device=cfg.device))
            synthetic[name] = result.output_dir
            generated_b = np.stack([read_array(b)[0] for _, b, _ in list_change_triplets(result.output_dir)])
            fid[name] = round(frechet_distance(real_b, features(generated_b)), 3)
        scores = {}
        for name, folder in {"real_only": "", **synthetic}.items():
            with step(f"FC-Siam-conc on real{' + ' + name if folder else ' only'} ({detector_steps} steps)"):
                detector = train_changedet(ChangeDetTrainConfig(
                    data=str(real), output=str(tmp / f"det_{name}"), synthetic=folder, eval_data=str(test),
                    steps=detector_steps, val_every=detector_steps, checkpoint_every=10 ** 6, seed=4,
                    device=cfg.device))
                metrics = evaluate_changedet(str(detector), str(test), device=cfg.device)
            scores[name] = {k: round(float(metrics[k]), 4) for k in ("IoU", "F1", "recall", "precision")}
    return {
        "mcrd_noisy_label_gain": round(scores["fcf_mcrd"]["IoU"] - scores["fcf_mse"]["IoU"], 4),
        "fcf_vs_concat": {"proxy_fid_fcf": fid["fcf_mse"], "proxy_fid_concat": fid["concat_mse"],
                          "iou_fcf": scores["fcf_mse"]["IoU"], "iou_concat": scores["concat_mse"]["IoU"]},
        "proxy_fid_b_images": fid, "downstream_change_scores": scores,
        "budget": {"real_pairs": real_count, "held_out_pairs": held_out, "size": size, "label_noise": LABEL_NOISE,
                   "joint_steps": joint_steps, "detector_steps": detector_steps, "synthetic_per_real": 2},
        "note": "Procedural pairs; joint models 'small' (64 px) trained on 20%-corrupted masks; detectors scored on "
                "held-out pairs with clean masks; proxy FID with the starter segmenter's encoder (not Inception).",
    }
