"""Config files (JSON or TOML) -> a subcommand's dataclass, with command-line overrides."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# Fields holding paths: relative values in a config file are relative to that file.
PATH_FIELDS = ("data", "output", "encoder_weights", "synthetic", "eval_data", "init", "embedding", "vae", "sd_path",
               "fcf", "dinov2")


def load_config(cls: type[T], path: str, overrides=None) -> T:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"Config file not found: {path}")
    text = file.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if file.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"Cannot parse config {path}: {exc}") from exc
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"Unknown key(s) in {path}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    for key in PATH_FIELDS:
        if values.get(key) and not Path(values[key]).is_absolute():
            values[key] = str((file.parent / values[key]).resolve())
    for key, value in vars(overrides or {}).items() if overrides is not None else ():
        if key in known and value not in (None, False):
            values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise SystemExit(f"Config {path}: {exc}") from exc


def add_run_arguments(parser, config_name: str) -> None:
    """The options every training subcommand shares: a config file and a few overrides."""
    parser.add_argument("--config", required=True, help=f"JSON or TOML file with the {config_name} fields")
    parser.add_argument("--data", help="override: dataset folder (images/, masks/, classes.json)")
    parser.add_argument("--output", help="override: run directory; the model goes to OUTPUT/model")
    parser.add_argument("--steps", type=int, help="override: total optimiser steps")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="override: device")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/training_state.pt")


def diffusion_loss_option(cfg) -> tuple:
    """(criterion, model-card entry) from a diffusion config's `loss` ("mse" | "mcrd"), `mcrd_e_max` and
    `mcrd_beta` (0: core.diffusion.losses' defaults): every diffusion trainer offers the robust MCRD loss this way."""
    from core.diffusion.losses import diffusion_criterion
    criterion = diffusion_criterion(cfg.loss, cfg.mcrd_e_max or None, cfg.mcrd_beta or None)
    return criterion, ({"loss": "mcrd", "mcrd": criterion.to_dict()} if cfg.loss == "mcrd" else {"loss": "mse"})
