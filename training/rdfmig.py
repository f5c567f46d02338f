"""`python -m training rdfmig`: fit the RDF-MIG joint (date A, date B, change mask) diffusion model.

Reads a change folder (A/, B/, label/; core.data.change) and, for the FCF representation, a
trained FCF model (`python -m training fcf`), frozen here. `loss = "mcrd"` swaps the epsilon-MSE
for the robust MCRD loss (sigma from e_max and beta by the supplement's Eq. 16; core.losses).
`label_noise` corrupts that share of the training masks (a benchmark of robustness: noisy labels
are what MCRD is for). Writes `<output>/model` plus training state, log.csv, curves.png and
sample grids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.change.fcf import load_fcf
from core.change.rdfmig import TASK, architecture_for, build_denoiser, joint_image, sample_triplets
from core.checkpoint import ModelCard, Normalization, save_model
from core.data.change import ChangePatchDataset, list_change_triplets
from core.raster import raster_info
from core.synthesis.satsynth import diffusion_loss, training_scheduler
from training.config import add_run_arguments, diffusion_loss_option, load_config
from training.trainer import Trainer, TrainSettings, seed_everything


@dataclass
class RdfmigTrainConfig:
    data: str
    output: str
    fcf: str = ""                  # FCF model folder (required for representation "fcf")
    name: str = ""
    representation: str = "fcf"    # fcf | concat (the supplement's ablation)
    loss: str = "mse"              # mse | mcrd
    mcrd_e_max: float = 0.0        # 0: core.losses' default
    mcrd_beta: float = 0.0
    label_noise: float = 0.0       # share of training masks replaced by a wrong one (robustness benchmark)
    preset: str = "small"
    patch_size: int = 64
    batch_size: int = 16
    samples_per_image: int = 4
    steps: int = 3000
    lr: float = 4e-4
    ema_decay: float = 0.995
    sample_every: int = 1000       # save a grid of generated triplets (DDIM-20) this often; 0: never
    checkpoint_every: int = 500
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = False


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
    fcf, fcf_card = (load_fcf(cfg.fcf) if cfg.representation == "fcf" else (None, None))
    if fcf is not None:
        if fcf.bands != bands:
            raise SystemExit(f"FCF model '{cfg.fcf}' reduces {fcf.bands}-band images but '{cfg.data}' has {bands}.")
        fcf.requires_grad_(False).eval()
    architecture = architecture_for(cfg.preset, cfg.representation, bands)
    criterion, loss_entry = diffusion_loss_option(cfg)
    seed_everything(cfg.seed)
    model = build_denoiser(architecture)
    scheduler = training_scheduler()
    run = Path(cfg.output)
    trainer = Trainer(model, TrainSettings(
        run_dir=str(run), steps=cfg.steps, lr=cfg.lr, weight_decay=0.0, ema_decay=cfg.ema_decay,
        val_every=cfg.sample_every or cfg.steps, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed,
        device=cfg.device, resume=cfg.resume))
    if fcf is not None:
        fcf.to(trainer.device)
    train_set = NoisyMasks(dataset, cfg.label_noise, cfg.seed) if cfg.label_noise > 0 else dataset
    loader = trainer.loader(train_set, cfg.batch_size, cfg.num_workers)

    def loss_fn(net, batch):
        a, b, mask = batch
        x0 = joint_image(architecture, fcf, a * 2 - 1, b * 2 - 1, (mask == 1).long())
        return diffusion_loss(net, scheduler, x0, criterion=criterion)

    def sample_grid(net):
        from core.change.generate import save_triplet_grid
        generated = sample_triplets(net, architecture, fcf, count=4, steps=20, seed=cfg.seed, size=cfg.patch_size)
        save_triplet_grid(generated, run / f"samples_{trainer.step:06d}.png")
        return {}

    trainer.fit(loader, loss_fn, sample_grid if cfg.sample_every else None)
    extra = {**loss_entry, "steps": trainer.step, "label_noise": cfg.label_noise,
             "dtype": raster_info(triplets[0][0]).dtype, "fcf": fcf_card.name if fcf_card else None,
             "fcf_architecture": fcf_card.architecture if fcf_card else None,
             "scaling": "x01 = (raw - mean) / std per band (dataset range), then 2 x01 - 1"}
    state = trainer.eval_model.state_dict()
    if fcf is not None:   # one folder holds everything sampling needs: the denoiser and the FCF decoder
        state = {**{f"denoiser.{k}": v for k, v in state.items()},
                 **{f"fcf.{k}": v for k, v in fcf.state_dict().items()}}
    else:
        state = {f"denoiser.{k}": v for k, v in state.items()}
    low, high = dataset.unit_ranges()
    card = ModelCard(task=TASK, name=cfg.name or run.name, architecture=architecture,
                     bands=list(dataset.band_names),
                     normalization=Normalization(mean=[low] * bands, std=[high - low] * bands),
                     tile_size=cfg.patch_size,
                     training_data=f"{Path(cfg.data).resolve().name}: {len(triplets)} triplets", extra=extra)
    model_dir = run / "model"
    if trainer.dist.main:
        save_model(model_dir, card, state)
    trainer.dist.close()
    return model_dir


def add_arguments(parser) -> None:
    add_run_arguments(parser, "RdfmigTrainConfig")
    parser.add_argument("--fcf", help="override: FCF model folder")
    parser.add_argument("--loss", choices=("mse", "mcrd"), help="override: epsilon loss")
    parser.add_argument("--representation", choices=("fcf", "concat"), help="override: joint image")
    parser.add_argument("--label-noise", type=float, help="override: share of corrupted training masks")


def main(args) -> None:
    print(f"model written to {train_rdfmig(load_config(RdfmigTrainConfig, args.config, args))}")
