"""What the plugin can list before any model is loaded: where resources and starter models
live, and the device choices. Imports nothing heavy, so QGIS starts fast."""
from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"
STARTER_MODELS_DIR = RESOURCES_DIR / "models"
# The shipped default model of each task, trained by `make starter-models`.
STARTER_MODELS = {"segmentation": "segmentation_starter", "satsynth": "satsynth_starter",
                  "satsynth-sr": "satsynth_sr_starter", "idgbr": "idgbr_starter", "saross": "saross_starter",
                  "sar-jointnet": "sar_jointnet_starter", "fusion-prior": "fusion_prior_starter",
                  "changedet": "changedet_starter", "fcf": "fcf_starter", "rdfmig": "rdfmig_starter"}
DEVICE_CHOICES = ("auto", "cuda", "cpu")


def starter_model_dir(task: str) -> Path:
    return STARTER_MODELS_DIR / STARTER_MODELS[task]
