"""Synthetic scenes: deterministic, well-formed, learnable and written as proper GeoTIFFs."""
import json

import numpy as np
import pytest
import rasterio

from core.data.scenes import (SCENE_BANDS, SCENE_CLASSES, SCENE_CRS, make_scene, scene_transform,
                              write_scene, write_scene_dataset)
from core.raster import hex_to_rgba


def test_classes_are_the_published_legend():
    assert SCENE_CLASSES == [
        {"value": 0, "name": "bare soil", "color": "#b5926b"},
        {"value": 1, "name": "vegetation", "color": "#3f8f3a"},
        {"value": 2, "name": "water", "color": "#2f6db5"},
        {"value": 3, "name": "road", "color": "#8c8c8c"},
        {"value": 4, "name": "building", "color": "#d9463b"},
    ]
    assert SCENE_BANDS == ("red", "green", "blue")


def test_same_seed_gives_identical_scene():
    first, second = make_scene(96, 80, seed=7, nir=True), make_scene(96, 80, seed=7, nir=True)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_different_seeds_differ():
    (image_a, labels_a), (image_b, labels_b) = make_scene(96, 96, 1), make_scene(96, 96, 2)
    assert np.mean(image_a != image_b) > 0.5
    assert not np.array_equal(labels_a, labels_b)


@pytest.mark.parametrize("nir, bands", [(False, 3), (True, 4)])
def test_shapes_dtypes_and_ranges(nir, bands):
    image, labels = make_scene(128, 160, seed=3, nir=nir)
    assert image.shape == (bands, 128, 160) and image.dtype == np.uint8
    assert labels.shape == (128, 160) and labels.dtype == np.uint8
    assert labels.max() <= 4
    assert image.min() >= 1, "0 is reserved for nodata"
    assert image.std() > 10, "a scene must not be flat"


def test_nir_only_appends_a_band():
    rgb, labels = make_scene(64, 64, seed=5)
    rgbn, labels_nir = make_scene(64, 64, seed=5, nir=True)
    np.testing.assert_array_equal(rgb, rgbn[:3])
    np.testing.assert_array_equal(labels, labels_nir)


@pytest.mark.parametrize("height, width", [(17, 9), (9, 17), (1, 1), (3, 120), (200, 37)])
def test_odd_and_tiny_sizes(height, width):
    for seed in range(4):
        image, labels = make_scene(height, width, seed, nir=True)
        assert image.shape == (4, height, width) and labels.shape == (height, width)
        assert labels.max() <= 4


def test_rejects_empty_size():
    with pytest.raises(ValueError):
        make_scene(0, 10, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_every_class_present_at_256(seed):
    _, labels = make_scene(256, 256, seed)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}


def test_classes_separable_by_colour():
    means = []
    for seed in range(3):
        image, labels = make_scene(256, 256, seed, nir=True)
        means.append([image[:, labels == value].astype(float).mean(axis=1) for value in range(5)])
    soil, vegetation, water, road, building = np.mean(means, axis=0)
    red, nir = 0, 3
    assert vegetation[nir] > water[nir] + 80
    assert (vegetation[nir] - vegetation[red]) / (vegetation[nir] + vegetation[red]) > \
        (soil[nir] - soil[red]) / (soil[nir] + soil[red]) + 0.1
    assert water[:3].mean() < min(soil[:3].mean(), road[:3].mean(), building[:3].mean())
    assert np.abs(road[:3] - soil[:3]).max() > 15
    assert np.abs(building[:3] - soil[:3]).max() > 15
    assert abs(road[0] - road[2]) < 15, "roads are grey"


def test_scene_transform_is_a_plausible_utm_origin():
    transform = scene_transform(256, 128, seed=4, resolution=0.5)
    assert len(transform) == 6
    res, rot_x, x0, rot_y, neg_res, y0 = transform
    assert (res, rot_x, rot_y, neg_res) == (0.5, 0.0, 0.0, -0.5)
    assert 166_000 < x0 < 834_000 and 4_000_000 < y0 < 7_000_000
    assert scene_transform(256, 128, seed=4) == transform
    assert scene_transform(256, 128, seed=5)[2:6:3] != transform[2:6:3]


def test_write_scene_round_trips_through_rasterio(tmp_path):
    image_path, label_path = tmp_path / "img.tif", tmp_path / "lbl.tif"
    write_scene(image_path, label_path, 40, 56, seed=9, nir=True, nodata_border=3, resolution=1.0)
    image, labels = make_scene(40, 56, seed=9, nir=True)
    expected_transform = rasterio.Affine(*scene_transform(40, 56, seed=9, resolution=1.0))

    with rasterio.open(image_path) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8"
        assert src.crs == rasterio.crs.CRS.from_string(SCENE_CRS)
        assert src.transform.almost_equals(expected_transform)
        assert src.nodata == 0
        assert src.descriptions == ("red", "green", "blue", "nir")
        written = src.read()
    assert (written[:, :3] == 0).all() and (written[:, -3:] == 0).all()
    assert (written[:, :, :3] == 0).all() and (written[:, :, -3:] == 0).all()
    np.testing.assert_array_equal(written[:, 3:-3, 3:-3], image[:, 3:-3, 3:-3])

    with rasterio.open(label_path) as src:
        assert src.crs == rasterio.crs.CRS.from_string(SCENE_CRS)
        assert src.transform.almost_equals(expected_transform)
        assert src.nodata == 255
        colormap = src.colormap(1)
        written_labels = src.read(1)
    for cls in SCENE_CLASSES:
        assert colormap[cls["value"]] == hex_to_rgba(cls["color"])
    assert (written_labels[:3] == 255).all() and (written_labels[:, -3:] == 255).all()
    np.testing.assert_array_equal(written_labels[3:-3, 3:-3], labels[3:-3, 3:-3])


def test_write_scene_without_border_has_no_nodata(tmp_path):
    write_scene(tmp_path / "img.tif", tmp_path / "lbl.tif", 24, 24, seed=1)
    with rasterio.open(tmp_path / "img.tif") as src:
        assert src.nodata is None and src.count == 3
        assert src.descriptions == SCENE_BANDS
        assert src.read().min() >= 1
    with rasterio.open(tmp_path / "lbl.tif") as src:
        assert src.read(1).max() <= 4


def test_write_scene_dataset_layout(tmp_path):
    folder = write_scene_dataset(tmp_path / "ds", count=3, size=32, seed=11, nir=True)
    assert folder == tmp_path / "ds"
    images = sorted(p.name for p in (folder / "images").glob("*.tif"))
    masks = sorted(p.name for p in (folder / "masks").glob("*.tif"))
    assert images == masks == ["scene_0000.tif", "scene_0001.tif", "scene_0002.tif"]
    meta = json.loads((folder / "classes.json").read_text())
    assert meta == {"classes": SCENE_CLASSES, "bands": ["red", "green", "blue", "nir"]}
    pixels = []
    for name in images:
        with rasterio.open(folder / "images" / name) as src:
            assert src.count == 4 and (src.width, src.height) == (32, 32)
            pixels.append(src.read())
    assert not np.array_equal(pixels[0], pixels[1]), "each scene gets its own seed"
