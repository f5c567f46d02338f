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


def resolve_model_dir(model_dir: str, task: str) -> str:
    """The model folder the user chose, or the task's shipped starter model when they chose none."""
    return model_dir or str(starter_model_dir(task))
