"""`python -m training satsynth` / `satsynth-sr`: fit the joint image + label DDPM (SatSynth
base model) and its x2 super-resolution stage.

Reads the folder dataset format; images are scaled to [0, 1] per band with the dataset's
range (stored in the card), labels become analog bits. Pixels whose label is not in the
class table are trained as class 0 (a diffusion model must generate every pixel).
Writes `<output>/model` plus training state, log.csv, curves.png and sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import ModelCard, Normalization
from core.data.folder import FolderDataset, PatchDataset, band_ranges
from core.data.generated import GeneratedPairs, save_pair_grid
from core.diffusion.losses import diffusion_loss
from core.diffusion.sampling import DDIM_ETA, SAMPLERS
from core.diffusion.schedules import training_scheduler
from core.synthesis.satsynth import (SR_TASK, TASK, architecture_for, build_denoiser, downsample_pair,
                                     joint_tensor, prediction_type, sample, sr_architecture_for, sr_loss,
                                     super_resolve)
from training.config import DiffusionLossConfig, RunConfig, add_run_arguments, config_from_args
from training.trainer import Trainer, TrainingError, seed_everything


@dataclass(kw_only=True)
class SatSynthTrainConfig(DiffusionLossConfig, RunConfig):
    preset: str = "small"
    patch_size: int = 64           # base: generated size; SR: the high-res training crop
    base_downsample: int = 1       # base only: learn the data at 1/2^k resolution (1, 2, 4...) for the SR cascade
    batch_size: int = 16
    samples_per_image: int = 4
    steps: int = 5000
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    val_every: int = 1000          # save a grid of generated pairs (DDIM-20) this often; 0: never
    checkpoint_every: int = 500


def train_satsynth(cfg: SatSynthTrainConfig, super_resolution: bool = False) -> Path:
    """The base model, or with `super_resolution` the x2 stage, trained on real high-res
    patches and their 2x-downsampled versions."""
    data = FolderDataset.open(cfg.data)
    pairs, classes, band_names, first = data.pairs, data.classes, data.bands, data.first
    low, span = band_ranges(pairs)
    k, bands = len(classes), len(band_names)
    architecture = (sr_architecture_for if super_resolution else architecture_for)(cfg.preset, bands, k)
    seed_everything(cfg.seed)   # same config, same initial weights
    model = build_denoiser(architecture)
    scheduler = training_scheduler(prediction_type(architecture))
    criterion, loss_entry = cfg.loss_criterion()
    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings())
    factor = 1 if super_resolution else cfg.base_downsample
    if factor < 1 or factor & (factor - 1):
        raise TrainingError(f"base_downsample must be a power of two (1, 2, 4...), not {factor}.")
    dataset = PatchDataset(pairs, classes, low, span, cfg.patch_size * factor, cfg.samples_per_image, train=True)
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)

    def loss_fn(net, batch):
        image, labels = batch
        labels = labels.clamp(min=0)
        for _ in range(factor.bit_length() - 1):
            image, labels = downsample_pair(image, labels)
        x0 = joint_tensor(image, labels, k)
        if not super_resolution:
            return diffusion_loss(net, scheduler, x0, criterion=criterion)
        return sr_loss(net, scheduler, x0, joint_tensor(*downsample_pair(image, labels), k), bands, criterion=criterion)

    def sample_grid(net):
        if super_resolution:  # real patches, downsampled and brought back up
            image, labels = next(iter(loader))
            low_image, low_labels = downsample_pair(image[:4], labels[:4].clamp(min=0))
            low = GeneratedPairs(low_image, low_labels, probabilities=None)
            generated = super_resolve(net, low, steps=20, seed=cfg.seed)
        else:
            generated = sample(net, count=4, steps=20, seed=cfg.seed, size=cfg.patch_size)
        save_pair_grid(generated, [c.color for c in classes], run / f"samples_{trainer.step:06d}.png")
        return {}

    trainer.fit(loader, loss_fn, sample_grid)
    return trainer.export(ModelCard(
        task=SR_TASK if super_resolution else TASK, name=cfg.name or run.name, architecture=architecture, bands=list(band_names),
        normalization=Normalization(offset=low, scale=span), classes=classes, tile_size=cfg.patch_size,
        ground_resolution=round(first.resolution[0] * factor, 4) if first.crs_wkt else None,
        training_data=f"{Path(cfg.data).resolve().name}: {len(pairs)} images",
        extra={**loss_entry, "steps": trainer.step, "base_downsample": factor, "dtype": first.dtype,
               "scaling": "x01 = (raw - mean) / std per band (dataset range)",
               "unlabelled_pixels_trained_as": classes[0].name}))


def add_arguments(parser) -> None:
    add_run_arguments(parser, "SatSynthTrainConfig")


def main(args) -> None:
    print(f"model written to {train_satsynth(config_from_args(SatSynthTrainConfig, args))}")


def main_sr(args) -> None:
    cfg = config_from_args(SatSynthTrainConfig, args)
    print(f"model written to {train_satsynth(cfg, super_resolution=True)}")


def add_synthesize_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="new or empty folder for the pairs (dataset format)")
    parser.add_argument("--count", type=int, default=16, help="number of pairs")
    parser.add_argument("--model", default="", help="SatSynth model directory (default: the starter model)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddpm = the paper's 1000 steps")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=DDIM_ETA,
                        help="DDIM eta: 1 = stochastic (default), 0 = deterministic")
    parser.add_argument("--sr", action="store_true", help="add the x2 super-resolution stage")
    parser.add_argument("--sr-model", default="", help="x2 model directory (default: the starter x2 model)")
    parser.add_argument("--sr-steps", type=int, default=50, help="DDIM steps of the x2 stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_synthesize(args) -> None:
    from core.progress import TqdmProgress
    from core.synthesis.generate import SynthesisParams, synthesize_pairs
    progress = TqdmProgress("synthesize")
    result = synthesize_pairs(SynthesisParams(
        output_dir=args.output, count=args.count, model_dir=args.model, sampler=args.sampler, steps=args.steps, eta=args.eta,
        super_resolution=args.sr, sr_model_dir=args.sr_model, sr_steps=args.sr_steps, seed=args.seed,
        batch_size=args.batch_size,
        device=args.device), progress)
    progress.close()
    print(f"{len(result.pairs)} pairs written to {result.output_dir} (index: {result.index_path})")
