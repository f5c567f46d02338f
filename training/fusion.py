"""`python -m training fusion-prior`: fit an unconditional DDPM prior on image patches;
`python -m training irvis-pairs`: write procedural infrared / visible pairs to train and test on;
`python -m training fuse`: fuse every pair of a folder (Dig2DIG or DDFM), e.g. for evaluate-fusion.

The prior is what Dig2DIG / DDFM sample from; when no pretrained prior (e.g. a converted
guided-diffusion 256 model) is at hand, this trains a small one. Every image below --data
(infrared and visible alike; gray images repeated to 3 bands) gives random patches in [0, 1]
(core.data.images), scaled to [-1, 1]; the loss is epsilon-MSE with the linear 1e-4..0.02,
T = 1000 schedule that DDFM samples with.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.checkpoint import ModelCard, Normalization
from core.data.images import ImagePatchDataset, list_images
from core.fusion.prior import TASK, architecture_for
from core.diffusion.losses import diffusion_loss
from core.diffusion.sampling import denoise
from core.diffusion.schedules import training_scheduler
from training.config import DiffusionLossConfig, RunConfig, add_run_arguments, config_from_args
from training.trainer import Trainer, seed_everything


@dataclass(kw_only=True)
class FusionPriorTrainConfig(DiffusionLossConfig, RunConfig):
    preset: str = "small"
    patch_size: int = 64
    batch_size: int = 16
    samples_per_image: int = 8
    steps: int = 4000
    lr: float = 4e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    val_every: int = 1000          # save a grid of prior samples (DDIM-25) this often; 0: never
    checkpoint_every: int = 500


def train_fusion_prior(cfg: FusionPriorTrainConfig) -> Path:
    from diffusers import UNet2DModel
    images = list_images(cfg.data)
    architecture = architecture_for(cfg.preset, cfg.patch_size)
    seed_everything(cfg.seed)
    unet = UNet2DModel(**architecture["unet"])
    scheduler = training_scheduler()
    criterion, loss_entry = cfg.loss_criterion()
    run = Path(cfg.output)
    trainer = Trainer(unet, cfg.train_settings())
    loader = trainer.loader(ImagePatchDataset(images, cfg.patch_size, 3, cfg.samples_per_image), cfg.batch_size,
                            cfg.num_workers)
    card = ModelCard(
        task=TASK, name=cfg.name or run.name, architecture=architecture, bands=["red", "green", "blue"],
        normalization=Normalization([0.5] * 3, [0.5] * 3), tile_size=cfg.patch_size,
        training_data=f"{Path(cfg.data).resolve().name}: {len(images)} images",
        extra={**loss_entry,
               "input": "each source scaled to [0, 1] (8-bit: / 255; other types: 0.1-99.9 percentile range), "
                        "then to [-1, 1]; gray sources repeated to 3 bands",
               "schedule": "linear betas 1e-4..0.02, T = 1000, epsilon prediction"})

    def loss_fn(net, batch):
        return diffusion_loss(net, scheduler, batch * 2 - 1, criterion=criterion)

    def sample_grid(net):
        _save_sample_grid(net, run / f"samples_{trainer.step:06d}.png", cfg.seed)
        return {}

    trainer.fit(loader, loss_fn, sample_grid)
    card.extra["steps"] = trainer.step
    return trainer.export(card)


def _save_sample_grid(unet, path: Path, seed: int, count: int = 4, size: int = 64) -> None:
    """What the prior draws from pure noise (DDIM-25, eta 0): a quick look at what it has learned."""
    from PIL import Image
    x = denoise(unet, (count, 3, size, size), "ddim", 25, seed, eta=0.0)
    tiles = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    Image.fromarray(np.concatenate(list(tiles), axis=1)).save(path)


def add_arguments(parser) -> None:
    add_run_arguments(parser, "FusionPriorTrainConfig")


def main(args) -> None:
    print(f"model written to {train_fusion_prior(config_from_args(FusionPriorTrainConfig, args))}")


def add_pairs_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="folder to write (ir/ and vi/ with the same file names)")
    parser.add_argument("--count", type=int, default=50, help="number of pairs")
    parser.add_argument("--size", type=int, default=256, help="pair size in pixels")
    parser.add_argument("--seed", type=int, default=0)


def main_pairs(args) -> None:
    from core.data.irvis import write_irvis_dataset
    print(f"{args.count} pairs written to {write_irvis_dataset(args.output, args.count, args.size, args.seed)}")


def add_fuse_arguments(parser) -> None:
    from core.fusion.em import EM_MODES
    from core.fusion.pipeline import DEFAULT_BATCH
    from core.fusion.sampler import DIG_DISTANCES, DIG_KINDS, FUSION_MODES
    parser.add_argument("--pairs", required=True, help="folder with ir/ and vi/ holding the pairs under the same names")
    parser.add_argument("--output", required=True, help="folder for the fused images (NAME.tif)")
    parser.add_argument("--model", default="", help="fusion prior folder (default: the starter prior)")
    parser.add_argument("--mode", choices=FUSION_MODES, default="dig", help="dig (Dig2DIG) or ddfm (fixed weights)")
    parser.add_argument("--steps", type=int, default=25, help="reverse steps (Dig2DIG 25, DDFM 100 in the papers)")
    parser.add_argument("--dig-interval", type=int, default=10, help="S: recompute the DIG weights every S steps")
    parser.add_argument("--dig-kind", choices=DIG_KINDS, default="scalar")
    parser.add_argument("--dig-distance", choices=DIG_DISTANCES, default="l2",
                        help="l of Eq. 8: l2 (the paper), squared_l2, mse (per-pixel mean: an ablation)")
    parser.add_argument("--dig-temperature", type=float, default=1.0, help="softmax(DIG / T); 1 = the paper's Eq. 11")
    parser.add_argument("--dig-patch", type=int, default=64, help="spatial DIG: patch size in pixels")
    parser.add_argument("--ddfm-mode", choices=EM_MODES, default="paper", help="EM wiring (see core/fusion/em.py)")
    parser.add_argument("--tile-size", type=int, default=256, help="fixed tile (DIG's distances are over the tile)")
    parser.add_argument("--overlap", type=int, default=32,
                        help="pixels shared by neighbouring tiles (at most half a tile)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="tiles per prior forward")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_fuse(args) -> None:
    from core.fusion.pipeline import FusionParams, fuse_folder
    from core.fusion.sampler import FusionSettings
    from core.progress import TqdmProgress
    settings = FusionSettings(mode=args.mode, steps=args.steps, dig_interval=args.dig_interval,
                              dig_kind=args.dig_kind, dig_distance=args.dig_distance,
                              dig_temperature=args.dig_temperature, dig_patch=args.dig_patch, em_mode=args.ddfm_mode,
                              seed=args.seed)
    progress = TqdmProgress("fuse")
    results = fuse_folder(args.pairs, args.output, FusionParams("", "", "", model_dir=args.model, settings=settings,
                                                                tile_size=args.tile_size, overlap=args.overlap,
                                                                batch_size=args.batch_size,
                                                                device=args.device),
                          progress)
    progress.close()
    print(f"{len(results)} fused images written to {args.output} ({results[0].prior}; "
          f"{sum(r.seconds for r in results):.1f} s)")
