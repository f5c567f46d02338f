"""Training configs: the fields every run shares (RunConfig), the diffusion trainers' loss choice
(DiffusionLossConfig), and load_config: a JSON or TOML file -> a subcommand's config, with command-line overrides.
A config that cannot run is a TrainingError naming the file and the field."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from training.trainer import TrainSettings, TrainingError

T = TypeVar("T")
# Fields holding paths: relative values in a config file are relative to that file.
PATH_FIELDS = ("data", "output", "encoder_weights", "synthetic", "eval_data", "init", "embedding", "vae", "sd_path",
               "fcf", "dinov2", "init_from", "coarse")
# Former field names, still read from config files and overrides: {old name: current name}.
RENAMED_FIELDS = {"sample_every": "val_every"}


@dataclass(kw_only=True)
class RunConfig:
    """What every training run has. A subcommand's config adds its own fields and re-declares one of these
    only to change its default (keyword-only fields: required ones may follow defaulted ones)."""
    data: str                      # the dataset folder
    output: str                    # run directory; the model goes to OUTPUT/model
    name: str = ""                 # the model card's name; empty: the run directory's name
    batch_size: int = 8
    steps: int = 1000              # total optimiser steps
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.0         # 0: no EMA copy of the weights
    val_every: int = 250           # run the validation (scores or a sample grid) this often; 0: never
    checkpoint_every: int = 250
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = False           # continue from OUTPUT/training_state.pt

    def train_settings(self) -> TrainSettings:
        """What the Trainer needs of this config."""
        return TrainSettings(run_dir=self.output, steps=self.steps, lr=self.lr, weight_decay=self.weight_decay,
                             ema_decay=self.ema_decay, val_every=self.val_every,
                             checkpoint_every=self.checkpoint_every, seed=self.seed, device=self.device,
                             resume=self.resume)


@dataclass(kw_only=True)
class DiffusionLossConfig:
    """Mixin of the diffusion trainers' configs: every one offers the robust MCRD loss besides epsilon-MSE."""
    loss: str = "mse"              # mse | mcrd (robust to noisy data; core.diffusion.losses)
    mcrd_e_max: float = 0.0        # MCRD's e_max and beta (0: core.diffusion.losses' defaults)
    mcrd_beta: float = 0.0

    def loss_criterion(self) -> tuple:
        """(criterion, model-card entry) of the chosen loss."""
        from core.diffusion.losses import diffusion_criterion
        criterion = diffusion_criterion(self.loss, self.mcrd_e_max or None, self.mcrd_beta or None)
        return criterion, ({"loss": "mcrd", "mcrd": criterion.to_dict()} if self.loss == "mcrd" else {"loss": "mse"})


def load_config(cls: type[T], path: str, overrides=None) -> T:
    file = Path(path)
    if not file.is_file():
        raise TrainingError(f"Config file not found: {path}")
    text = file.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if file.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"Cannot parse config {path}: {exc}") from exc
    known = {f.name for f in dataclasses.fields(cls)}
    for old, new in RENAMED_FIELDS.items():
        if old in values and new in known:
            if new in values:
                raise TrainingError(f"Config {path} sets both {old} and {new}: {old} is the former name of {new}.")
            values[new] = values.pop(old)
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingError(f"Unknown key(s) in {path}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    for key in PATH_FIELDS:
        if values.get(key) and not Path(values[key]).is_absolute():
            values[key] = str((file.parent / values[key]).resolve())
    for key, value in (vars(overrides) if overrides is not None else {}).items():
        key = RENAMED_FIELDS.get(key, key)
        if key in known and value not in (None, False):
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise TrainingError(f"Config {path}: {exc}") from exc


def config_from_args(cls: type[T], args) -> T:
    """The config a training subcommand runs: --config with the command line's overrides, its data folder there."""
    cfg = load_config(cls, args.config, args)
    if not Path(cfg.data).is_dir():
        raise TrainingError(f"The data folder {cfg.data} does not exist: check --data (or `data` in {args.config}).")
    return cfg


def add_run_arguments(parser, config_name: str) -> None:
    """The options every training subcommand shares: a config file and a few overrides."""
    parser.add_argument("--config", required=True, help=f"JSON or TOML file with the {config_name} fields")
    parser.add_argument("--data", help="override: dataset folder (images/, masks/, classes.json)")
    parser.add_argument("--output", help="override: run directory; the model goes to OUTPUT/model")
    parser.add_argument("--steps", type=int, help="override: total optimiser steps")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="override: device")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/training_state.pt")


def add_init_from_argument(parser, task: str) -> None:
    """--init-from MODEL: fine-tune a model folder instead of starting from random weights."""
    parser.add_argument("--init-from", dest="init_from", metavar="MODEL",
                        help=f"override: fine-tune this {task} model folder (encoder and decoder from it; the head "
                             "is rebuilt for the data's classes, rows of classes with the same name kept)")
