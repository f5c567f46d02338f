"""The SAR scaling now lives in core.data.sar_scaling: the SAR dataset readers need it and data sits
below the methods. These names stay for the importers not yet moved (core/oilspill/pipeline.py,
training/sar.py, tests/golden.py); delete this module once they import core.data.sar_scaling."""
from core.data.sar_scaling import INPUT_KINDS, SarScaling, SceneScaler, fit_scene_scaler

__all__ = ["INPUT_KINDS", "SarScaling", "SceneScaler", "fit_scene_scaler"]
