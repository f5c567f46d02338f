"""Procedural, georeferenced, labelled aerial-like scenes.

Demos, tests and starter segmentation models need unlimited labelled imagery without
downloads. Each scene is assembled from what a 0.5-1 m orthophoto of farmland shows -
field parcels, tree canopy, water, roads and buildings with cast shadows - and then
passes through illumination, optics and sensor noise, so telling the classes apart
takes texture, colour and shape rather than a colour lookup.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from core.data.folder import write_class_table
from core.data.procedural import PATH_STEP, fractal_field, noise_field, points_inside, trace_paths, wander
from core.raster import hex_to_rgba, write_geotiff

SCENE_CLASSES = [
    {"value": 0, "name": "bare soil", "color": "#b5926b"},
    {"value": 1, "name": "vegetation", "color": "#3f8f3a"},
    {"value": 2, "name": "water", "color": "#2f6db5"},
    {"value": 3, "name": "road", "color": "#8c8c8c"},
    {"value": 4, "name": "building", "color": "#d9463b"},
]
SCENE_BANDS = ("red", "green", "blue")
SCENE_CRS = "EPSG:32633"

SOIL, VEGETATION, WATER, ROAD, BUILDING = range(5)
LABEL_NODATA = 255

# Surface colours as (red, green, blue, nir) digital numbers before illumination.
_SOIL_COLOURS = np.array([[178, 150, 112, 196], [150, 118, 86, 172], [122, 96, 72, 150],
                          [168, 126, 92, 188], [192, 174, 142, 210]], np.float32)
_GRASS_COLOURS = np.array([[96, 126, 64, 172], [124, 136, 76, 160], [82, 118, 56, 190]], np.float32)
_CROP_COLOURS = np.array([[70, 116, 50, 200], [92, 132, 56, 210], [62, 100, 46, 186]], np.float32)
_CANOPY_COLOURS = np.array([[46, 80, 40, 184], [56, 92, 46, 198], [40, 68, 44, 170]], np.float32)
_WATER_COLOURS = np.array([  # deep, shallow
    [[20, 46, 70, 12], [62, 86, 84, 40]],
    [[28, 56, 48, 14], [74, 92, 70, 44]],
    [[16, 30, 42, 10], [56, 70, 66, 36]]], np.float32)
_ROOF_COLOURS = np.array([[166, 78, 58, 150], [122, 82, 62, 122], [84, 86, 92, 86],
                          [178, 176, 170, 180], [208, 208, 202, 204], [118, 128, 140, 128]],
                         np.float32)
_ROOF_WEIGHTS = np.array([0.35, 0.15, 0.2, 0.15, 0.07, 0.08])
_MARKING_COLOUR = np.array([222, 222, 218, 210], np.float32)
_HAZE_COLOUR = np.array([170, 180, 195, 150], np.float32)
# Shadows are lit only by bluish skylight, and vegetation's NIR plateau drops most.
_SHADOW_TINT = np.array([0.42, 0.46, 0.56, 0.36], np.float32)

def make_scene(height: int, width: int, seed: int, nir: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (bands, H, W), RGB or RGB+NIR, and labels uint8 (H, W) in 0..4.

    The RGB bands are identical with and without NIR, and pixel values are 1..255 so
    that 0 stays free to mark nodata.
    """
    if height < 1 or width < 1:
        raise ValueError(f"Scene size must be positive, got {height}x{width}.")
    rng = np.random.default_rng(seed)
    shape = (height, width)
    yy, xx = np.indices(shape, dtype=np.float32)
    sun_angle = rng.uniform(0, 2 * np.pi)
    to_sun = np.array([np.sin(sun_angle), np.cos(sun_angle)], np.float32)  # (dy, dx)

    parcel, kind, stripes = _parcels(rng, shape, yy, xx)
    soil = _soil(rng, shape, parcel, len(kind), stripes)
    water, water_layer, shore_distance = _water(rng, shape, yy, xx)
    road, road_layer, road_points = _roads(rng, shape)
    building, roof_layer, roof_height = _buildings(rng, shape, road_points, water | road, to_sun)
    vegetation, vegetation_layer, canopy_height = _vegetation(
        rng, shape, kind[parcel], stripes, soil, ~(water | road | building), to_sun)

    labels = np.full(shape, SOIL, np.uint8)
    image = soil * (1 - 0.3 * np.exp(-shore_distance / 2))  # wet banks
    for value, mask, layer in ((VEGETATION, vegetation, vegetation_layer), (WATER, water, water_layer),
                               (ROAD, road, road_layer), (BUILDING, building, roof_layer)):
        labels[mask] = value
        image = np.where(mask, layer, image)
    shadow = _cast_shadow(np.maximum(roof_height, canopy_height), -to_sun)
    image *= np.where(shadow, _SHADOW_TINT[:, None, None], np.float32(1))
    image = _sensor(rng, image)
    return image[:4 if nir else 3], labels


def scene_transform(height: int, width: int, seed: int, resolution: float = 0.5) -> tuple[float, ...]:
    """Affine (res, 0, x0, 0, -res, y0) placing the scene somewhere in UTM 33N over Europe.

    Drawn from its own stream so the origin never perturbs the scene content.
    """
    rng = np.random.default_rng([seed, 33])
    x0 = float(np.floor(rng.uniform(300_000, 700_000 - width * resolution)))
    y0 = float(np.floor(rng.uniform(4_700_000 + height * resolution, 5_900_000)))
    return (float(resolution), 0.0, x0, 0.0, -float(resolution), y0)


def write_scene(image_path: str | os.PathLike, label_path: str | os.PathLike, height: int, width: int,
                seed: int, nir: bool = False, nodata_border: int = 0, resolution: float = 0.5) -> None:
    """Write a scene and its labels as GeoTIFFs; `nodata_border` px of frame exercise nodata handling."""
    image, labels = make_scene(height, width, seed, nir)
    image_nodata = label_nodata = None
    colormap = {c["value"]: hex_to_rgba(c["color"]) for c in SCENE_CLASSES}
    if nodata_border > 0:
        frame = np.ones(labels.shape, bool)
        frame[nodata_border:-nodata_border, nodata_border:-nodata_border] = False
        image[:, frame] = 0
        labels[frame] = LABEL_NODATA
        image_nodata, label_nodata = 0, LABEL_NODATA
        colormap[LABEL_NODATA] = (0, 0, 0, 0)
    crs_wkt = rasterio.crs.CRS.from_string(SCENE_CRS).to_wkt()
    transform = scene_transform(height, width, seed, resolution)
    write_geotiff(image_path, image, crs_wkt=crs_wkt, transform=transform, nodata=image_nodata,
                  band_names=scene_bands(nir))
    write_geotiff(label_path, labels, crs_wkt=crs_wkt, transform=transform, nodata=label_nodata,
                  colormap=colormap, band_names=["class"])


def write_scene_dataset(folder: str | os.PathLike, count: int, size: int, seed: int,
                        nir: bool = False) -> Path:
    """Write `count` square scenes in the folder dataset layout (images/, masks/, classes.json)."""
    folder = Path(folder)
    scene_seeds = np.random.SeedSequence(seed).generate_state(count)  # distinct streams per scene
    for index, scene_seed in enumerate(scene_seeds):
        name = f"scene_{index:04d}.tif"
        write_scene(folder / "images" / name, folder / "masks" / name, size, size, int(scene_seed), nir)
    folder.mkdir(parents=True, exist_ok=True)
    write_class_table(folder, SCENE_CLASSES, scene_bands(nir))
    return folder


def scene_bands(nir: bool = False) -> list[str]:
    """Band names in file order, for band descriptions and classes.json."""
    return [*SCENE_BANDS, "nir"] if nir else list(SCENE_BANDS)


# --- scene elements ------------------------------------------------------------------------------

def _parcels(rng, shape, yy, xx):
    """Voronoi field parcels, each bare (0), crop (1) or grass (2), with a row/furrow pattern."""
    height, width = shape
    count = max(2, int(height * width / rng.uniform(60, 110) ** 2))
    vegetated = rng.uniform(0.25, 0.5)
    kind = rng.choice(3, count, p=[1 - vegetated, vegetated / 2, vegetated / 2])
    seeds = np.zeros(shape, bool)
    ids = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    seeds[ys, xs] = True
    ids[ys, xs] = np.arange(count)
    _, (near_y, near_x) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    parcel = ids[near_y, near_x]
    angle = rng.uniform(0, np.pi, count).astype(np.float32)
    period = rng.uniform(3, 7, count).astype(np.float32)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle)[parcel] + yy * np.sin(angle)[parcel])
                     / period[parcel])
    return parcel, kind, stripes


def _soil(rng, shape, parcel, count, stripes):
    """Per-parcel soil colour, mottled, with plough furrows in about half of the fields."""
    colour = _SOIL_COLOURS[rng.integers(0, len(_SOIL_COLOURS), count)].T * rng.normal(1, 0.06, count)
    furrowed = rng.random(count) < 0.5
    shade = (1 + 0.10 * fractal_field(rng, shape, 70, 3) + 0.06 * fractal_field(rng, shape, 6, 2)
             + 0.06 * noise_field(rng, shape, 0) + 0.07 * np.where(furrowed[parcel], stripes, 0))
    return colour.astype(np.float32)[:, parcel] * shade


def _water(rng, shape, yy, xx):
    """Lakes with ragged shores and/or a meandering river; dark, deeper away from the shore."""
    height, width = shape
    water = np.zeros(shape, bool)
    lakes = rng.poisson(0.7 * height * width / 256 ** 2)
    has_river = rng.random() < 0.5
    for _ in range(lakes if lakes or has_river else 1):
        radius = rng.uniform(12, 50)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        reach = int(2.5 * radius)  # the ragged shore never strays further from the centre
        window = np.s_[max(0, int(cy) - reach):int(cy) + reach, max(0, int(cx) - reach):int(cx) + reach]
        ragged = 0.3 * fractal_field(rng, water[window].shape, radius * 0.6, 3)
        water[window] |= np.hypot(yy[window] - cy, xx[window] - cx) / radius + ragged < 1
    if has_river:
        ys, xs, _ = wander(rng, shape, swing=rng.uniform(0.3, 0.9), wavelength=rng.uniform(40, 90))
        half_width = rng.uniform(4, 14) * (1 + 0.25 * noise_field(rng, (1, len(ys)), 40 / PATH_STEP)[0])
        distance, near_half, _, _ = trace_paths(shape, [(ys, xs, half_width)])
        water |= distance <= near_half
    depth = _distance(water)
    deep, shallow = _WATER_COLOURS[rng.integers(0, len(_WATER_COLOURS))] * rng.normal(1, 0.05)
    near_shore = np.exp(-depth / rng.uniform(2, 6))
    wind = rng.uniform(0, np.pi)
    ripple = np.sin(2 * np.pi * (xx * np.cos(wind) + yy * np.sin(wind)) / rng.uniform(3, 6)
                    + 3 * noise_field(rng, shape, 20))
    shade = 1 + 0.05 * ripple + 0.06 * fractal_field(rng, shape, 30, 2) + 0.03 * noise_field(rng, shape, 0)
    layer = (deep[:, None, None] * (1 - near_shore) + shallow[:, None, None] * near_shore) * shade
    return water, layer, _distance(~water)


def _roads(rng, shape):
    """Roads crossing the scene plus side roads branching off them, asphalt or concrete."""
    height, width = shape
    paths = []
    for _ in range(1 + rng.poisson(0.6 * np.sqrt(height * width) / 256)):
        ys, xs, heading = wander(rng, shape, swing=rng.uniform(0, 0.35) * (rng.random() < 0.6),
                                  wavelength=rng.uniform(80, 200))
        paths.append((ys, xs, heading, rng.uniform(2, 6)))
    for _ in range(rng.poisson(1.2 * np.sqrt(height * width) / 256)):
        ys, xs, heading, _ = paths[rng.integers(0, len(paths))]
        inside = np.flatnonzero(points_inside(shape, ys, xs))
        if not inside.size:
            continue
        at = rng.choice(inside)
        turn = rng.choice([-1, 1]) * np.pi / 2 + rng.normal(0, 0.2)
        paths.append((*wander(rng, shape, swing=rng.uniform(0, 0.3), wavelength=rng.uniform(60, 150),
                              start=(ys[at], xs[at]),
                              heading=heading[at] + turn, length=rng.uniform(40, 40 + 1.5 * max(shape))),
                      rng.uniform(2, 4.5)))
    distance, half, along, which = trace_paths(shape, [(ys, xs, half) for ys, xs, _, half in paths])
    road = distance <= half

    tone = np.where(rng.random(len(paths)) < 0.25, rng.uniform(150, 180, len(paths)),
                    rng.uniform(75, 130, len(paths))).astype(np.float32)[which]
    colour = np.stack([tone, tone, tone * 1.03, tone * 1.05])
    wheel_tracks = np.exp(-((distance - half * 0.5) / 1.2) ** 2)
    shade = (1 + 0.06 * fractal_field(rng, shape, 12, 2) + 0.05 * noise_field(rng, shape, 0)
             - 0.08 * wheel_tracks)
    layer = colour * shade
    centre_dashes = (half >= 3.5) & (distance < 0.8) & (along % 16 < 8)
    edge_lines = (half >= 5) & (np.abs(distance - (half - 1.5)) < 0.5)
    markings = (centre_dashes | edge_lines)[None]
    layer = np.where(markings, 0.4 * layer + 0.6 * _MARKING_COLOUR[:, None, None], layer)

    points = [np.concatenate(values) for values in zip(*(
        (ys[keep], xs[keep], heading[keep], np.full(keep.sum(), half_width))
        for ys, xs, heading, half_width in paths for keep in [points_inside(shape, ys, xs)]))]
    return road, layer, points


def _buildings(rng, shape, road_points, blocked, to_sun):
    """Rotated rectangular houses lining the roads (a few stand alone), gabled or flat-roofed."""
    height, width = shape
    building = np.zeros(shape, bool)
    layer = np.zeros((4, *shape), np.float32)
    roof_height = np.zeros(shape, np.float32)
    grain = noise_field(rng, shape, 0.7)
    ys, xs, headings, half_widths = road_points
    wanted = rng.integers(4, 16) * height * width / 256 ** 2
    placed = 0
    for _ in range(int(np.ceil(wanted * 6))):
        if placed >= wanted:
            break
        length = rng.uniform(8, 40)
        depth = rng.uniform(8, min(length, 24))
        if len(ys) and rng.random() < 0.85:
            at = rng.integers(0, len(ys))
            side = rng.choice([-1, 1]) * (headings[at] + np.pi / 2)
            offset = half_widths[at] + rng.uniform(2, 10) + depth / 2
            cy, cx = ys[at] + offset * np.sin(side), xs[at] + offset * np.cos(side)
            angle = headings[at] + rng.normal(0, 0.05)
        else:
            cy, cx, angle = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0, np.pi)
        reach = int(np.hypot(length, depth) / 2) + 4
        top, left = max(0, int(cy) - reach), max(0, int(cx) - reach)
        window = np.s_[top:min(height, int(cy) + reach), left:min(width, int(cx) + reach)]
        wy, wx = np.indices(building[window].shape, dtype=np.float32)
        dy, dx = wy + top - cy, wx + left - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)  # along the ridge
        v = dy * np.cos(angle) - dx * np.sin(angle)
        footprint = (np.abs(u) <= length / 2) & (np.abs(v) <= depth / 2)
        clearance = (np.abs(u) <= length / 2 + 2) & (np.abs(v) <= depth / 2 + 2)
        if not footprint.any() or (clearance & (blocked[window] | building[window])).any():
            continue
        placed += 1
        colour = _ROOF_COLOURS[rng.choice(len(_ROOF_COLOURS), p=_ROOF_WEIGHTS)] * rng.normal(1, 0.06)
        walls = rng.uniform(2.5, 4) + depth * rng.uniform(0.1, 0.25)
        if rng.random() < 0.55:
            across = np.array([np.cos(angle), -np.sin(angle)])  # +v direction as (dy, dx)
            slope_light = 0.25 * np.sign(v) * (across @ to_sun)
            shade = 1 + slope_light + 0.1 * (np.abs(v) < 0.8) + 0.04 * np.sin(np.pi * np.abs(v))
            surface = walls + depth / 4 - np.abs(v) / 2
        else:
            rim = np.minimum(length / 2 - np.abs(u), depth / 2 - np.abs(v)) < 1.2
            shade = 1 - 0.12 * rim
            surface = np.full(u.shape, walls)
            for _ in range(rng.integers(0, 4)):
                unit_u, unit_v = rng.uniform(-0.35, 0.35, 2) * (length, depth)
                unit = (np.abs(u - unit_u) < 1.5) & (np.abs(v - unit_v) < 1.5)
                shade, surface = shade + 0.2 * unit, surface + 1.5 * unit
        shade = shade + 0.05 * grain[window]
        building[window] |= footprint
        layer[(slice(None), *window)] = np.where(footprint, colour[:, None, None] * shade,
                                                 layer[(slice(None), *window)])
        roof_height[window] = np.where(footprint, surface, roof_height[window])
    return building, layer, roof_height


def _vegetation(rng, shape, parcel_kind, stripes, soil, free, to_sun):
    """Tree canopy (woods and lone trees), crop fields in rows, grass fields and weedy patches."""
    woods = fractal_field(rng, shape, 60, 3) > rng.uniform(0.8, 1.6)
    crown = rng.uniform(2, 3.5)
    density = np.where(woods, 0.7 / (2 * crown) ** 2, rng.uniform(0.0003, 0.0015))
    trunks = (rng.random(shape, dtype=np.float32) < density) * rng.uniform(0.6, 1.3, shape)
    crowns = ndimage.gaussian_filter(trunks.astype(np.float32), crown) * np.float32(2 * np.pi * crown ** 2)
    canopy = ((crowns > 0.35) | woods) & free
    weeds = (fractal_field(rng, shape, 20, 3) > 1.4) & (parcel_kind == 0)
    crop = parcel_kind == 1
    vegetation = canopy | crop | weeds | (parcel_kind == 2)

    grass_colour = _GRASS_COLOURS[rng.integers(0, len(_GRASS_COLOURS))] * rng.normal(1, 0.05)
    grass = grass_colour[:, None, None] * (1 + 0.08 * fractal_field(rng, shape, 20, 2)
                                           + 0.07 * noise_field(rng, shape, 1.5) + 0.05 * noise_field(rng, shape, 0))
    crop_colour = _CROP_COLOURS[rng.integers(0, len(_CROP_COLOURS))] * rng.normal(1, 0.05)
    plant_cover = np.clip(0.65 + 0.5 * stripes, 0, 1) * (1 + 0.05 * noise_field(rng, shape, 0))
    crops = crop_colour[:, None, None] * plant_cover + soil * (1 - plant_cover)

    canopy_colour = _CANOPY_COLOURS[rng.integers(0, len(_CANOPY_COLOURS))] * rng.normal(1, 0.05)
    slope_y, slope_x = ndimage.sobel(crowns, 0) / 8, ndimage.sobel(crowns, 1) / 8
    sunlit = np.clip(2 * (slope_y * to_sun[0] + slope_x * to_sun[1]), -0.4, 0.4)
    gaps = 0.55 + 0.45 * np.clip(crowns / 0.8, 0, 1)  # forest floor between crowns lies in shade
    trees = canopy_colour[:, None, None] * gaps * (1 + sunlit + 0.08 * fractal_field(rng, shape, 25, 2)
                                                   + 0.15 * noise_field(rng, shape, 0.8))
    layer = np.where(canopy, trees, np.where(crop, crops, grass))
    canopy_height = np.where(canopy, crowns * rng.uniform(2.5, 5), 0).astype(np.float32)
    return vegetation, layer, canopy_height


# --- geometry ------------------------------------------------------------------------------------

def _distance(mask):
    """Distance to the nearest False pixel, large where there is none (EDT needs a background)."""
    if mask.all():
        return np.full(mask.shape, 1e4, np.float32)
    return ndimage.distance_transform_edt(mask).astype(np.float32)


def shifted(array, dy, dx):
    """out[y, x] = array[y - dy, x - dx], zero outside."""
    out = np.zeros_like(array)
    height, width = array.shape
    if abs(dy) < height and abs(dx) < width:
        out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
            array[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def _cast_shadow(surface, direction):
    """Pixels shaded by raised surfaces: something h px tall shades up to h px along `direction`.

    Heights are in shadow-length pixels, so the sun elevation is folded into them.
    """
    shadow = np.zeros(surface.shape, bool)
    for step in range(1, int(np.ceil(surface.max())) + 1):
        caster = shifted(surface, int(round(step * direction[0])), int(round(step * direction[1])))
        shadow |= caster >= surface + step
    return shadow


def _sensor(rng, image):
    """Optical blur, exposure, white balance, haze, tone curve and read noise for this acquisition."""
    image = ndimage.gaussian_filter(image, (0, *[rng.uniform(0.3, 0.7)] * 2))
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.95, 1.05, 4).astype(np.float32)
    haze = np.float32(rng.uniform(0, 0.12))
    image = image * gain[:, None, None] * (1 - haze) + haze * _HAZE_COLOUR[:, None, None]
    image = 255 * np.clip(image / 255, 0, 1) ** np.float32(rng.uniform(0.85, 1.15))
    image += np.float32(rng.uniform(1.5, 4)) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 1, 255).astype(np.uint8)
