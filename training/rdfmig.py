"""`python -m training rdfmig`: fit the RDF-MIG joint (date A, date B, change mask) diffusion model.

Reads a change folder (A/, B/, label/; core.data.change) and, for the FCF representation, a
trained FCF model (`python -m training fcf`), frozen here. `loss = "mcrd"` swaps the epsilon-MSE
for the robust MCRD loss (sigma from e_max and beta by the supplement's Eq. 16; core.diffusion.losses).
`label_noise` corrupts that share of the training masks (a benchmark of robustness: noisy labels
are what MCRD is for). `vae` switches to the latent variant (the supplement's 512 px LDM): a local
Stable Diffusion folder (its vae/) or a small autoencoder of ours, fitted on the feature images by
`python -m training change-vae` (train_change_vae below). Writes `<output>/model` plus training
state, log.csv, curves.png and sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from core.change.fcf import load_fcf, psnr
from core.change.latent import SMALL_VAE, VAE_TASK, load_vae
from core.change.rdfmig import TASK, RdfmigModel, architecture_for, build_denoiser, joint_image
from core.checkpoint import ModelCard, Normalization, save_model
from core.data.change import ChangePatchDataset, list_change_triplets
from core.raster import raster_info
from core.diffusion.losses import diffusion_loss
from core.diffusion.schedules import training_scheduler
from training.autoencoder import autoencoder_loss, latent_scaling_factor, loss_description
from training.config import DiffusionLossConfig, RunConfig, add_run_arguments, config_from_args
from training.trainer import Trainer, TrainingError, seed_everything, stacked


@dataclass(kw_only=True)
class RdfmigTrainConfig(DiffusionLossConfig, RunConfig):
    fcf: str = ""                  # FCF model folder (required for representation "fcf")
    representation: str = "fcf"    # fcf | concat (the supplement's ablation)
    label_noise: float = 0.0       # share of training masks replaced by a wrong one (robustness benchmark)
    vae: str = ""                  # latent variant: SD diffusers folder or change-vae model folder; "": pixels
    preset: str = "small"
    patch_size: int = 64
    batch_size: int = 16
    samples_per_image: int = 4
    steps: int = 3000
    lr: float = 4e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    val_every: int = 1000          # save a grid of generated triplets (DDIM-20) this often; 0: never
    checkpoint_every: int = 500


class NoisyMasks(torch.utils.data.Dataset):
    """Replaces the mask of a fixed `share` of the samples by the mask of another sample (a plausible but
    wrong label, as a careless annotator gives)."""

    def __init__(self, dataset, share: float, seed: int):
        self.dataset = dataset
        rng = np.random.default_rng(seed)
        n = len(dataset)
        self.wrong = {int(i): int(rng.integers(n)) for i in rng.choice(n, int(round(share * n)), replace=False)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        a, b, mask = self.dataset[index]
        if index in self.wrong:
            mask = self.dataset[self.wrong[index]][2]
        return a, b, mask


def train_rdfmig(cfg: RdfmigTrainConfig) -> Path:
    triplets = list_change_triplets(cfg.data)
    dataset = ChangePatchDataset(triplets, cfg.patch_size, cfg.samples_per_image, train=True)
    bands = dataset.bands
    fcf, fcf_card = _frozen_fcf(cfg.fcf, bands, cfg.data) if cfg.representation == "fcf" else (None, None)
    vae, vae_source = load_vae(cfg.vae) if cfg.vae else (None, None)
    if vae is not None:
        vae.requires_grad_(False).eval()
    architecture = architecture_for(cfg.preset, cfg.representation, bands, vae, cfg.patch_size,
                                    fcf.code_channels if fcf is not None else 1)
    criterion, loss_entry = cfg.loss_criterion()
    seed_everything(cfg.seed)
    model = build_denoiser(architecture)
    scheduler = training_scheduler()
    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings())
    frozen = RdfmigModel(architecture, model, fcf, vae).to(trainer.device)   # the FCF and VAE of every step
    train_set = NoisyMasks(dataset, cfg.label_noise, cfg.seed) if cfg.label_noise > 0 else dataset
    loader = trainer.loader(train_set, cfg.batch_size, cfg.num_workers)

    def loss_fn(net, batch):
        a, b, mask = batch
        x0 = frozen.target(a * 2 - 1, b * 2 - 1, (mask == 1).long())
        return diffusion_loss(net, scheduler, x0, criterion=criterion)

    def sample_grid(net):
        from core.change.generate import save_triplet_grid
        generated = RdfmigModel(architecture, net, fcf, vae).sample(4, steps=20, seed=cfg.seed, size=cfg.patch_size)
        save_triplet_grid(generated, run / f"samples_{trainer.step:06d}.png")
        return {}

    trainer.fit(loader, loss_fn, sample_grid)
    extra = {**loss_entry, "steps": trainer.step, "label_noise": cfg.label_noise,
             "dtype": raster_info(triplets[0][0]).dtype, "fcf": fcf_card.name if fcf_card else None,
             "fcf_architecture": fcf_card.architecture if fcf_card else None,
             "scaling": "x01 = (raw - mean) / std per band (dataset range), then 2 x01 - 1"}
    if vae_source:
        extra["latent"] = f"denoiser on the latents of {vae_source} (frozen; its weights are in this folder)"
    state = RdfmigModel(architecture, trainer.eval_model, fcf, vae).state_dict()   # everything sampling needs
    low, high = dataset.unit_ranges()
    card = ModelCard(task=TASK, name=cfg.name or run.name, architecture=architecture,
                     bands=list(dataset.band_names),
                     normalization=Normalization(offset=[low] * bands, scale=[high - low] * bands),
                     tile_size=cfg.patch_size,
                     training_data=f"{Path(cfg.data).resolve().name}: {len(triplets)} triplets", extra=extra)
    model_dir = run / "model"
    if trainer.dist.main:
        save_model(model_dir, card, state)
    trainer.dist.close()
    return model_dir


def _frozen_fcf(model_dir: str, bands: int, data: str):
    if not model_dir:
        raise TrainingError("The FCF representation needs a trained FCF model (`fcf = ...`; `python -m training fcf`).")
    fcf, card = load_fcf(model_dir)
    if fcf.bands != bands:
        raise TrainingError(f"FCF model '{model_dir}' reduces {fcf.bands}-band images but '{data}' has {bands}.")
    return fcf.requires_grad_(False).eval(), card


# --- the latent variant's small autoencoder ---------------------------------------------------------------
PREVIEW_TRIPLETS = 4   # the triplets whose tiles score the autoencoder during training


@dataclass(kw_only=True)
class ChangeVaeTrainConfig(RunConfig):
    """`data` is a change folder (A/, B/, label/)."""
    fcf: str                       # the FCF model whose feature images the autoencoder learns
    patch_size: int = 128
    samples_per_image: int = 4
    steps: int = 2000
    kl_weight: float = 1e-4
    val_every: int = 500
    checkpoint_every: int = 500


def train_change_vae(cfg: ChangeVaeTrainConfig) -> Path:
    """A small AutoencoderKL (SD's 8x layout, core.change.latent.SMALL_VAE) on FCF feature images."""
    triplets = list_change_triplets(cfg.data)
    dataset = ChangePatchDataset(triplets, cfg.patch_size, cfg.samples_per_image, train=True)
    fcf, fcf_card = _frozen_fcf(cfg.fcf, dataset.bands, cfg.data)
    if fcf.code_channels != 1:
        raise TrainingError(f"The change autoencoder learns 3-channel feature images; FCF model '{cfg.fcf}' has "
                            f"{fcf.code_channels} code channels per date ({fcf.feature_channels}-channel feature "
                            f"images). Train it on a 1-channel FCF (code_channels = 1).")
    seed_everything(cfg.seed)
    vae = AutoencoderKL.from_config(SMALL_VAE)
    run = Path(cfg.output)
    trainer = Trainer(vae, cfg.train_settings())
    fcf.to(trainer.device)
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)
    fixed = ChangePatchDataset(triplets[:PREVIEW_TRIPLETS], cfg.patch_size, train=False)
    fixed_x = _feature_images(fcf, [t.to(trainer.device) for t in stacked(fixed)])

    def validate(net):
        net.eval()
        with torch.no_grad():
            recon = net.decode(net.encode(fixed_x).latent_dist.mode()).sample.clamp(-1, 1)
        mask_accuracy = ((recon[:, 2] > 0) == (fixed_x[:, 2] > 0)).float().mean().item()
        return {"feature_psnr": psnr(recon, fixed_x), "mask_accuracy": mask_accuracy}

    def loss_fn(net, batch):
        return autoencoder_loss(net, _feature_images(fcf, batch), cfg.kl_weight)

    metrics = trainer.fit(loader, loss_fn, validate)
    trainer.eval_model.eval()
    feature_batches = (_feature_images(fcf, [t.to(trainer.device) for t in batch]) for batch in loader)
    config = {**SMALL_VAE, "scaling_factor": round(latent_scaling_factor(trainer.eval_model, feature_batches), 6)}
    low, high = dataset.unit_ranges()
    card = ModelCard(task=VAE_TASK, name=cfg.name or run.name, architecture={"vae": config},
                     bands=list(dataset.band_names),
                     normalization=Normalization(offset=[low] * dataset.bands, scale=[high - low] * dataset.bands),
                     tile_size=cfg.patch_size, metrics={k: round(v, 4) for k, v in metrics.items()},
                     training_data=f"{Path(cfg.data).resolve().name}: feature images of {len(triplets)} triplets",
                     extra={"steps": trainer.step, "loss": loss_description(cfg.kl_weight), "fcf": fcf_card.name,
                            "metrics_on": f"every {cfg.patch_size} px tile of the first {PREVIEW_TRIPLETS} triplets"})
    model_dir = run / "model"
    if trainer.dist.main:
        save_model(model_dir, card, trainer.eval_model.state_dict())
    trainer.dist.close()
    return model_dir


@torch.no_grad()
def _feature_images(fcf, batch) -> torch.Tensor:
    a, b, mask = batch
    return joint_image({"representation": "fcf"}, fcf, a * 2 - 1, b * 2 - 1, (mask == 1).long())


def add_arguments(parser) -> None:
    add_run_arguments(parser, "RdfmigTrainConfig")
    parser.add_argument("--fcf", help="override: FCF model folder")
    parser.add_argument("--loss", choices=("mse", "mcrd"), help="override: epsilon loss")
    parser.add_argument("--representation", choices=("fcf", "concat"), help="override: joint image")
    parser.add_argument("--label-noise", type=float, help="override: share of corrupted training masks")
    parser.add_argument("--vae", help="override: latent variant's autoencoder (SD folder or change-vae model)")


def main(args) -> None:
    print(f"model written to {train_rdfmig(config_from_args(RdfmigTrainConfig, args))}")


def add_vae_arguments(parser) -> None:
    add_run_arguments(parser, "ChangeVaeTrainConfig")
    parser.add_argument("--fcf", help="override: FCF model folder")


def main_vae(args) -> None:
    print(f"model written to {train_change_vae(config_from_args(ChangeVaeTrainConfig, args))}")
