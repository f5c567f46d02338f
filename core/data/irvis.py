"""Procedural, co-registered infrared / visible pairs for the fusion demo, tests and starter prior.

Each pair renders one procedural aerial scene (core.data.scenes) twice, as the two sensors see it
at dusk: the visible camera keeps texture and colour but loses what lies in deep shade and low
light; the thermal camera (long-wave IR, coarser optics) shows surface temperature - warm roads
and roofs, cool water and vegetation - and hot targets (vehicles, people, chimneys) that the
visible image hides in the dark. Fusion has to take texture from one and targets from the other.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from core.data.images import IR_FOLDER, VISIBLE_FOLDER
from core.data.scenes import BUILDING, ROAD, SCENE_CRS, SOIL, VEGETATION, WATER, make_scene, scene_transform
from core.raster import write_geotiff

# Relative surface temperature by class (0 cold .. 1 hot) at dusk.
_TEMPERATURE = {SOIL: 0.5, VEGETATION: 0.32, WATER: 0.2, ROAD: 0.62, BUILDING: 0.55}


def make_irvis_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Infrared uint8 (H, W) and visible uint8 (3, H, W) of one scene, pixel values 1..255."""
    rgb, labels = make_scene(height, width, seed)
    rng = np.random.default_rng([seed, 7])
    targets = _hot_targets(rng, labels)
    light = _dusk_light(rng, labels.shape)

    visible = rgb.astype(np.float32) * light
    visible = np.where(targets > 0, visible * 0.7, visible)       # targets: barely darker than their surroundings
    visible += rng.uniform(2, 5) * rng.standard_normal(visible.shape).astype(np.float32) * (1.3 - light)

    temperature = np.vectorize(_TEMPERATURE.get, otypes=[np.float32])(labels)
    roofs, count = ndimage.label(labels == BUILDING)
    temperature += np.concatenate([[0], rng.uniform(-0.12, 0.2, count)]).astype(np.float32)[roofs]
    temperature += 0.05 * (rgb.mean(axis=0) / 255 - 0.5)          # darker surfaces absorb more sun
    temperature = np.maximum(temperature, targets)
    infrared = ndimage.gaussian_filter(temperature, rng.uniform(1.0, 1.6))   # coarser thermal optics
    infrared = infrared * rng.uniform(0.85, 1.0) + rng.uniform(0.0, 0.08)
    infrared += 0.012 * rng.standard_normal(infrared.shape).astype(np.float32)
    return _to_uint8(255 * infrared), _to_uint8(visible)


def write_irvis_pair(infrared_path: str | os.PathLike, visible_path: str | os.PathLike, height: int, width: int,
                     seed: int, resolution: float = 0.5) -> None:
    """Both images as GeoTIFFs on the same grid (UTM 33N)."""
    infrared, visible = make_irvis_pair(height, width, seed)
    crs_wkt = rasterio.crs.CRS.from_string(SCENE_CRS).to_wkt()
    transform = scene_transform(height, width, seed, resolution)
    write_geotiff(infrared_path, infrared, crs_wkt=crs_wkt, transform=transform, band_names=["thermal infrared"])
    write_geotiff(visible_path, visible, crs_wkt=crs_wkt, transform=transform, band_names=["red", "green", "blue"])


def write_irvis_dataset(folder: str | os.PathLike, count: int, size: int, seed: int) -> Path:
    """`count` pairs as folder/ir/pair_NNNN.tif and folder/vi/pair_NNNN.tif."""
    folder = Path(folder)
    for index, pair_seed in enumerate(np.random.SeedSequence(seed).generate_state(count)):
        name = f"pair_{index:04d}.tif"
        write_irvis_pair(folder / IR_FOLDER / name, folder / VISIBLE_FOLDER / name, size, size, int(pair_seed))
    return folder


def _dusk_light(rng, shape) -> np.ndarray:
    """Illumination 0.08..1: a broad gradient with large dark pools (unlit streets, deep shade)."""
    yy, xx = np.indices(shape, dtype=np.float32) / max(shape)
    angle = rng.uniform(0, 2 * np.pi)
    light = 0.5 + 0.5 * (np.cos(angle) * yy + np.sin(angle) * xx).clip(0, 1)
    pools = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(shape) / 12)
    pools = pools > np.quantile(pools, rng.uniform(0.7, 0.85))
    light = np.where(ndimage.gaussian_filter(pools.astype(np.float32), 3) > 0.5, 0.12, light)
    return ndimage.gaussian_filter(light, 2).clip(0.08, 1)[None]


def _hot_targets(rng, labels) -> np.ndarray:
    """Temperature (0 where none) of small hot objects: vehicles on roads, people and hot spots anywhere."""
    targets = np.zeros(labels.shape, np.float32)
    height, width = labels.shape
    road = np.argwhere(labels == ROAD)
    count = int(rng.integers(4, 10) * height * width / 256 ** 2)
    for k in range(count):
        on_road = len(road) and k % 3 != 2
        y, x = road[rng.integers(len(road))] if on_road else (rng.integers(height), rng.integers(width))
        long_axis, short_axis = (rng.uniform(3, 6), rng.uniform(1.5, 2.5)) if on_road else (1.5, 1.5)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.ogrid[:height, :width]
        u = (yy - y) * np.cos(angle) + (xx - x) * np.sin(angle)
        v = -(yy - y) * np.sin(angle) + (xx - x) * np.cos(angle)
        inside = (u / long_axis) ** 2 + (v / short_axis) ** 2 <= 1
        targets[inside] = rng.uniform(0.85, 1.0)
    return targets


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.round(array), 1, 255).astype(np.uint8)
