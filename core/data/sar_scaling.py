"""SAR values -> model inputs in [-1, 1], the same way in training and in QGIS.

SAR layers come as linear backscatter (sigma0, float), as dB (float, mostly negative) or as
8/16-bit amplitude images (OSD and SOS are JPEGs). The input kind is detected from the data
type and values unless the user says it; linear power is converted to dB; then values are
stretched between two percentiles of the whole scene (image) and clipped. Percentiles of the
scene, not of each tile, so that tiles of one scene share one stretch; they are computed on a
decimated read, so memory does not grow with the scene.

It sits in data/ because the SAR dataset readers (core.data.sar) and the oil-spill pipeline both use it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

INPUT_KINDS = ("auto", "linear", "db", "amplitude")
LINEAR_FLOOR = 1e-6            # sigma0 below this (-60 dB) is clamped before the logarithm
SCENE_SAMPLE_PIXELS = 1_000_000


@dataclass
class SarScaling:
    """Stored in the model card (extra["sar_scaling"]) so inference repeats training exactly."""
    to_db: bool = True                                   # linear input -> 10 log10 before stretching
    clip_percentiles: tuple[float, float] = (1.0, 99.0)  # stretch between these percentiles of the scene

    def as_dict(self) -> dict:
        return {"to_db": self.to_db, "clip_percentiles": list(self.clip_percentiles)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "SarScaling":
        data = dict(data or {})
        if "clip_percentiles" in data:
            data["clip_percentiles"] = tuple(data["clip_percentiles"])
        return cls(**data)


def detect_input_kind(dtype: str, values: np.ndarray) -> str:
    """Integer data: amplitude DN; float with negative values: dB; other float: linear power."""
    if np.issubdtype(np.dtype(dtype), np.integer):
        return "amplitude"
    finite = values[np.isfinite(values)]
    if finite.size and np.mean(finite < 0) > 0.01:
        return "db"
    return "linear"


def to_log_scale(raw: np.ndarray, kind: str, scaling: SarScaling) -> np.ndarray:
    """dB for linear input when the card asks for it; other kinds unchanged."""
    if kind == "linear" and scaling.to_db:
        return (10.0 * np.log10(np.maximum(raw, LINEAR_FLOOR))).astype(np.float32)
    return raw.astype(np.float32, copy=False)


@dataclass
class SceneScaler:
    """One scene's stretch: kind of input and the two percentile values (after the dB step)."""
    kind: str
    low: float
    high: float
    scaling: SarScaling

    @classmethod
    def fit(cls, raw: np.ndarray, valid: np.ndarray, dtype: str, scaling: SarScaling,
            kind: str = "auto") -> "SceneScaler":
        """From an image (or a decimated read of a scene) and its validity mask."""
        values = raw[valid] if valid is not None else raw.ravel()
        if values.size == 0:
            raise ValueError("The SAR image has no valid pixel (all nodata).")
        if kind == "auto":
            kind = detect_input_kind(dtype, values)
        if kind not in INPUT_KINDS:
            raise ValueError(f"Unknown SAR input kind '{kind}'; choose one of {', '.join(INPUT_KINDS)}.")
        logged = to_log_scale(values, kind, scaling)
        low, high = np.percentile(logged, scaling.clip_percentiles)
        if not high > low:
            high = low + 1e-3
        return cls(kind, float(low), float(high), scaling)

    def __call__(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Raw values -> float32 in [-1, 1]; invalid pixels -> 0 (the middle of the range)."""
        x = (to_log_scale(raw, self.kind, self.scaling) - self.low) / (self.high - self.low)
        x = np.clip(x, 0.0, 1.0) * 2.0 - 1.0
        if valid is not None:
            x = np.where(valid, x, 0.0)
        return x.astype(np.float32)

    def describe(self) -> str:
        unit = {"linear": "dB (from linear)" if self.scaling.to_db else "linear",
                "db": "dB", "amplitude": "DN"}[self.kind]
        return f"{self.kind} input, stretched {self.low:.2f} .. {self.high:.2f} {unit}"


def fit_scene_scaler(path: str | os.PathLike, band: int, scaling: SarScaling, kind: str = "auto",
                     max_pixels: int = SCENE_SAMPLE_PIXELS) -> SceneScaler:
    """SceneScaler for a whole raster from a decimated read (at most `max_pixels` pixels)."""
    from rasterio.enums import Resampling

    from core.raster import open_raster
    with open_raster(path) as src:
        step = max(1, int(np.ceil(np.sqrt(src.width * src.height / max_pixels))))
        shape = (max(1, src.height // step), max(1, src.width // step))
        data = src.read(band, out_shape=shape, resampling=Resampling.nearest)   # keeps the value distribution
        if np.iscomplexobj(data):
            data = np.abs(data)
        dtype = src.dtypes[band - 1]
        valid = np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.ones(shape, bool)
        if src.nodata is not None and not np.isnan(src.nodata):
            valid &= data != src.nodata
    return SceneScaler.fit(data.astype(np.float32), valid, dtype, scaling, kind)


