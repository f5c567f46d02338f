"""Trainer configs: one base (RunConfig) for the fields every run has, one mixin for the diffusion loss, and every
shipped TOML config loading into its subcommand's config unchanged (old field names included)."""
import argparse
import dataclasses
import importlib
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

import training
from training.changedet import ChangeDetTrainConfig
from training.config import RENAMED_FIELDS, DiffusionLossConfig, RunConfig, load_config
from training.fcf import FcfTrainConfig
from training.fusion import FusionPriorTrainConfig
from training.idgbr import EmbeddingTrainConfig, IdgbrTrainConfig, VaeTrainConfig
from training.rdfmig import ChangeVaeTrainConfig, RdfmigTrainConfig
from training.sar import SarJointNetTrainConfig, SarossTrainConfig
from training.satsynth import SatSynthTrainConfig
from training.segment import SegmentTrainConfig
from training.trainer import TrainingError, TrainSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
# The config class each training subcommand loads its --config into.
SUBCOMMAND_CONFIGS = {
    "segment": SegmentTrainConfig, "satsynth": SatSynthTrainConfig, "satsynth-sr": SatSynthTrainConfig,
    "idgbr-embed": EmbeddingTrainConfig, "idgbr-vae": VaeTrainConfig, "idgbr": IdgbrTrainConfig,
    "sar-jointnet": SarJointNetTrainConfig, "saross": SarossTrainConfig, "fusion-prior": FusionPriorTrainConfig,
    "changedet": ChangeDetTrainConfig, "fcf": FcfTrainConfig, "rdfmig": RdfmigTrainConfig,
    "change-vae": ChangeVaeTrainConfig,
}
# Every shipped config file and the subcommand that reads it.
CONFIG_SUBCOMMANDS = {
    "change_vae_512.toml": "change-vae", "changedet_starter.toml": "changedet", "fcf_starter.toml": "fcf",
    "fusion_prior_starter.toml": "fusion-prior", "idgbr_embed_starter.toml": "idgbr-embed",
    "idgbr_starter.toml": "idgbr", "idgbr_starter_oof1.toml": "idgbr", "idgbr_starter_oof2.toml": "idgbr",
    "idgbr_vae_starter.toml": "idgbr-vae", "rdfmig_latent512.toml": "rdfmig",
    "rdfmig_starter.toml": "rdfmig", "sar_jointnet_stage1_starter.toml": "sar-jointnet",
    "sar_jointnet_stage2_starter.toml": "sar-jointnet", "sar_jointnet_stage3_starter.toml": "sar-jointnet",
    "saross_starter.toml": "saross", "satsynth_sr_starter.toml": "satsynth-sr",
    "satsynth_starter.toml": "satsynth", "segmentation_starter.toml": "segment",
}
DIFFUSION_CONFIGS = {SatSynthTrainConfig, RdfmigTrainConfig, SarJointNetTrainConfig, IdgbrTrainConfig,
                     FusionPriorTrainConfig}


def training_config_classes() -> set[type]:
    """Every *TrainConfig dataclass defined in a training/ module."""
    found = set()
    for module in pkgutil.iter_modules(training.__path__):
        if module.name == "__main__":
            continue
        for value in vars(importlib.import_module(f"training.{module.name}")).values():
            if isinstance(value, type) and value.__name__.endswith("TrainConfig") and dataclasses.is_dataclass(value):
                found.add(value)
    return found


def test_every_shipped_config_has_a_subcommand_and_the_makefile_agrees():
    assert set(CONFIG_SUBCOMMANDS) == {p.name for p in CONFIGS.glob("*.toml")}
    assert set(SUBCOMMAND_CONFIGS.values()) == training_config_classes()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    uses = re.findall(r"-m training (\S+) --config training/configs/(\S+\.toml)", makefile)
    assert uses and all(CONFIG_SUBCOMMANDS[name] == subcommand for subcommand, name in uses)


@pytest.mark.parametrize("name", sorted(CONFIG_SUBCOMMANDS))
def test_every_shipped_config_loads_and_gives_train_settings(name):
    path = CONFIGS / name
    cls = SUBCOMMAND_CONFIGS[CONFIG_SUBCOMMANDS[name]]
    cfg = load_config(cls, str(path))
    settings = cfg.train_settings()
    assert isinstance(settings, TrainSettings) and settings.run_dir == cfg.output
    for field in dataclasses.fields(TrainSettings):
        if field.name not in ("run_dir", "warmup_steps"):
            assert getattr(settings, field.name) == getattr(cfg, field.name), field.name
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    for old, new in RENAMED_FIELDS.items():
        if old in written:
            assert getattr(cfg, new) == written[old]


def test_the_common_fields_are_declared_once():
    """Every trainer config is a RunConfig (diffusion ones also a DiffusionLossConfig) and re-declares a shared
    field only to give it another default."""
    for cls in training_config_classes():
        assert issubclass(cls, RunConfig), cls.__name__
        assert issubclass(cls, DiffusionLossConfig) == (cls in DIFFUSION_CONFIGS), cls.__name__
        for base in (RunConfig, DiffusionLossConfig):
            shared = {f.name: f for f in dataclasses.fields(base)} if issubclass(cls, base) else {}
            own = {f.name: f for f in dataclasses.fields(cls)}
            for name in set(vars(cls).get("__annotations__", {})) & set(shared):
                assert own[name].default != shared[name].default, f"{cls.__name__}.{name} repeats the base"


# The Trainer settings the trainers built by hand before RunConfig (defaults of each config).
OLD_DEFAULTS = {  # class: (steps, lr, weight_decay, ema_decay, val_every, checkpoint_every)
    SegmentTrainConfig: (1000, 1e-3, 1e-4, 0.0, 250, 250), SatSynthTrainConfig: (5000, 2e-4, 0.0, 0.999, 1000, 500),
    RdfmigTrainConfig: (3000, 4e-4, 0.0, 0.995, 1000, 500), ChangeVaeTrainConfig: (2000, 1e-3, 1e-4, 0.0, 500, 500),
    SarJointNetTrainConfig: (5000, 1e-4, 0.0, 0.999, 1000, 500), SarossTrainConfig: (2000, 5e-5, 1e-4, 0.0, 250, 250),
    EmbeddingTrainConfig: (2000, 1e-2, 1e-4, 0.0, 250, 500), VaeTrainConfig: (3000, 1e-3, 1e-4, 0.0, 500, 500),
    IdgbrTrainConfig: (5000, 1e-4, 1e-2, 0.999, 1000, 500), ChangeDetTrainConfig: (2000, 1e-3, 1e-4, 0.0, 500, 500),
    FcfTrainConfig: (1500, 1e-3, 0.0, 0.0, 250, 500), FusionPriorTrainConfig: (4000, 4e-4, 0.0, 0.995, 1000, 500),
}


@pytest.mark.parametrize("cls", list(OLD_DEFAULTS), ids=lambda c: c.__name__)
def test_defaults_give_the_same_trainer_settings_as_before(cls):
    required = {f.name: "x" for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    s = cls(**required).train_settings()
    assert (s.steps, s.lr, s.weight_decay, s.ema_decay, s.val_every, s.checkpoint_every) == OLD_DEFAULTS[cls]
    assert (s.seed, s.device, s.resume) == (0, "auto", False)


def test_the_former_name_sample_every_is_read_from_files_and_overrides(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text('data = "d"\noutput = "o"\nsample_every = 7\n')
    assert load_config(FusionPriorTrainConfig, str(config)).val_every == 7
    assert load_config(FusionPriorTrainConfig, str(config), argparse.Namespace(sample_every=3)).val_every == 3
    config.write_text('data = "d"\noutput = "o"\nsample_every = 7\nval_every = 5\n')
    with pytest.raises(TrainingError, match="sample_every is the former name of val_every"):
        load_config(FusionPriorTrainConfig, str(config))
