"""SAR oil-spill data: procedural scenes, their GeoTIFFs, dataset readers and torch datasets."""
import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from scipy import ndimage

from core.checkpoint import ClassInfo
from core.data.sar import (AMPLITUDE_DB_RANGE, BINARY_CLASSES, LABEL_NODATA, SAR_BANDS, SAR_CLASSES,
                           SATURATED_SHARE, MosaicDataset, SarCropDataset, make_sar_scene, open_sar_dataset,
                           sar_nodata_columns, saturate, scaled_sample, write_land_mask, write_sar_dataset,
                           write_sar_scene)
from core.data.sar_scaling import SarScaling, SceneScaler
from core.raster import RasterError, hex_to_rgba, read_array, write_geotiff
from tests.conftest import read_polygons, shared_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = range(6)


@pytest.fixture(scope="module")
def scenes():
    return [make_sar_scene(256, 256, seed) for seed in SEEDS]


def test_class_tables_are_the_osd_palette():
    assert SAR_CLASSES == [ClassInfo(0, "sea", "#000000"), ClassInfo(1, "oil", "#00ffff"),
                           ClassInfo(2, "look-alike", "#ff0000"), ClassInfo(3, "ship", "#994c00"),
                           ClassInfo(4, "land", "#009900")]
    assert BINARY_CLASSES == SAR_CLASSES[:2]
    assert SAR_BANDS == ["VV"]


def test_scene_is_deterministic_per_seed(scenes):
    sigma0, labels = make_sar_scene(256, 256, 0)
    np.testing.assert_array_equal(sigma0, scenes[0][0])
    np.testing.assert_array_equal(labels, scenes[0][1])
    assert sigma0.dtype == np.float32 and labels.dtype == np.uint8 and sigma0.shape == labels.shape == (256, 256)
    assert np.mean(scenes[0][0] != scenes[1][0]) > 0.99  # independent speckle per scene


def test_every_class_appears_and_classes_have_their_radiometry(scenes):
    present = set()
    means = {k: [] for k in range(5)}
    for sigma0, labels in scenes:
        assert (sigma0 > 0).all()
        db = 10 * np.log10(sigma0)
        present |= set(np.unique(labels).tolist())
        for k in range(5):
            if (labels == k).any():
                means[k].append(db[labels == k].mean() - db[labels == 0].mean())
        if (labels == 1).any():
            assert db[labels == 1].mean() < db[labels == 0].mean() - 2  # oil damps the sea
        if (labels == 3).any():
            assert db[labels == 3].mean() > db[labels == 0].mean() + 10  # ships are bright
    assert present == {0, 1, 2, 3, 4}
    oil, look_alike, land = (np.mean(means[k]) for k in (1, 2, 4))
    assert oil < look_alike < 0 < land  # look-alikes are darker than the sea but less than oil


def test_look_alikes_are_blobbier_than_oil(scenes):
    """Elongation of each labelled patch (ratio of its principal axes): slicks are long, look-alikes round."""
    def elongations(mask):
        patches, count = ndimage.label(mask)
        for k in range(1, count + 1):
            ys, xs = np.nonzero(patches == k)
            if len(ys) >= 40:
                minor, major = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
                yield np.sqrt(major / minor)
    oil = [e for _, labels in scenes for e in elongations(labels == 1)]
    look_alike = [e for _, labels in scenes for e in elongations(labels == 2)]
    assert len(oil) >= 5 and len(look_alike) >= 5
    assert np.median(oil) > 2 * np.median(look_alike)


def test_land_flag_keeps_the_same_sea():
    seed = next(s for s in SEEDS if (make_sar_scene(128, 128, s)[1] == 4).any())
    with_land, labels = make_sar_scene(128, 128, seed)
    without_land, labels_no_land = make_sar_scene(128, 128, seed, land=False)
    assert not (labels_no_land == 4).any()
    sea = labels != 4
    np.testing.assert_array_equal(with_land[sea], without_land[sea])


@pytest.mark.parametrize("kind", ["linear", "db", "amplitude"])
def test_written_scene_is_georeferenced_with_nodata(tmp_path, kind):
    seed = next(s for s in range(50) if sar_nodata_columns(96, s))
    strip = sar_nodata_columns(96, seed)
    image, labels = tmp_path / "sar.tif", tmp_path / "labels.tif"
    write_sar_scene(image, labels, 80, 96, seed, kind=kind, resolution=20.0)
    sigma0, expected = make_sar_scene(80, 96, seed)
    with rasterio.open(image) as src, rasterio.open(labels) as lab:
        assert src.crs.to_epsg() == 32634 and lab.crs.to_epsg() == 32634
        assert src.transform == lab.transform and src.transform.a == 20.0 and src.transform.e == -20.0
        assert src.descriptions == ("VV",)
        assert lab.nodata == LABEL_NODATA and lab.dtypes[0] == "uint8"
        assert lab.colormap(1)[1] == hex_to_rgba("#00ffff")
        data, label_data = src.read(1), lab.read(1)
        if kind == "amplitude":
            assert src.dtypes[0] == "uint8" and src.nodata == 0
            assert (data[:, :strip] == 0).all() and (data[:, strip:] >= 1).all()
            low, high = AMPLITUDE_DB_RANGE
            db = 10 * np.log10(sigma0[:, strip:])
            assert np.abs(data[:, strip:] - np.clip(1 + 254 * (db - low) / (high - low), 1, 255)).max() <= 0.5 + 1e-3
        else:
            assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
            assert np.isnan(data[:, :strip]).all() and np.isfinite(data[:, strip:]).all()
            valid = sigma0[:, strip:] if kind == "linear" else 10 * np.log10(sigma0[:, strip:])
            np.testing.assert_allclose(data[:, strip:], valid, rtol=1e-5, atol=1e-5)
    assert (label_data[:, :strip] == LABEL_NODATA).all()
    np.testing.assert_array_equal(label_data[:, strip:], expected[:, strip:])
    _, valid = read_array(image)
    assert valid.sum() == 80 * (96 - strip)


def test_folder_dataset_round_trip_with_soft_labels(tmp_path):
    root = write_sar_dataset(tmp_path / "ds", count=3, size=48, seed=1, kind="db")
    assert json.loads((root / "classes.json").read_text())["bands"] == ["VV"]
    soft = _write_soft(root, stems=["scene_0000"])
    dataset = open_sar_dataset(root)
    assert dataset.layout == "folder" and len(dataset) == 3 and dataset.classes == SAR_CLASSES
    raw, valid, labels, dtype = dataset.read(0)
    assert raw.shape == valid.shape == labels.shape == (48, 48) and dtype == "float32"
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {-100, 0, 1, 2, 3, 4}
    assert (labels[~valid] == -100).all() and (labels[valid] >= 0).all()
    np.testing.assert_allclose(dataset.read_soft(0), soft["scene_0000"])
    assert dataset.read_soft(1) is None
    image = root / "images" / "scene_0001.tif"
    data, _ = read_array(image)
    data[0, :3] = np.nan  # nodata in the image that the mask does not mark
    with rasterio.open(image) as src:
        write_geotiff(image, data, crs_wkt=src.crs.to_wkt(), transform=tuple(src.transform)[:6], nodata=src.nodata)
    raw, valid, labels, _ = dataset.read(1)
    assert not valid[:3].any() and (labels[:3] == -100).all() and (labels[3:][valid[3:]] >= 0).all()


def test_land_mask_polygons_cover_the_land_pixels(tmp_path):
    seed = next(s for s in SEEDS if (make_sar_scene(96, 96, s)[1] == 4).any())
    image, labels = tmp_path / "sar.tif", tmp_path / "labels.tif"
    write_sar_scene(image, labels, 96, 96, seed, resolution=10.0)
    land_pixels = (rasterio.open(labels).read(1) == 4).sum()
    rows, crs = read_polygons(write_land_mask(labels, tmp_path / "land.gpkg"))
    assert rows and {r["class_name"] for r in rows} == {"land"}
    assert sum(r["geometry"].area for r in rows) == pytest.approx(land_pixels * 100.0)
    assert crs.to_epsg() == 32634


def test_side_by_side_reader_on_real_crops():
    root = shared_data("sar_oilspill")
    dataset = open_sar_dataset(root, "train")
    assert dataset.layout == "side-by-side" and len(dataset) == 4 and dataset.classes == BINARY_CLASSES
    oil = total = 0
    for i in range(len(dataset)):
        raw, valid, labels, dtype = dataset.read(i)
        assert raw.shape == labels.shape == (256, 256) and valid.all() and dtype == "uint8"
        assert set(np.unique(labels)) == {0, 1}
        assert raw[labels == 1].mean() < raw[labels == 0].mean() - 20  # oil is dark
        oil, total = oil + (labels == 1).sum(), total + labels.size
    assert 0.01 < oil / total < 0.9
    assert len(open_sar_dataset(root, "test")) == 11
    assert len(open_sar_dataset(root / "train")) == 4  # a split folder given directly


def test_osd_reader(tmp_path):
    for split, count in (("train", 2), ("test", 1)):
        for k in range(count):
            ids = np.zeros((12, 20), np.uint8)
            ids[2:5, 3:9], ids[6:8, :4], ids[9, 10], ids[:, 18:] = 1, 2, 3, 4
            ids[11, 0] = 7  # not an OSD class
            _save(tmp_path / split / "images" / f"img_{k}.jpg", np.where(ids == 1, 30, 160).astype(np.uint8), rgb=True)
            _save(tmp_path / split / "labels_1D" / f"img_{k}.png", ids)
    dataset = open_sar_dataset(tmp_path, "train")
    assert dataset.layout == "osd" and len(dataset) == 2 and dataset.classes == SAR_CLASSES
    raw, valid, labels, dtype = dataset.read(1)
    assert raw.shape == (12, 20) and dtype == "uint8" and valid.all()
    expected = ids.astype(np.int64)
    expected[11, 0] = -100
    np.testing.assert_array_equal(labels, expected)
    assert raw[labels == 1].mean() < 60 < raw[labels == 0].mean()
    assert len(open_sar_dataset(tmp_path, "test")) == 1
    (tmp_path / "test" / "labels_1D" / "img_0.png").unlink()
    with pytest.raises(RasterError, match="img_0.jpg"):
        open_sar_dataset(tmp_path, "test")


@pytest.mark.parametrize("oil_white", [True, False])
def test_sos_reader_decides_mask_polarity(tmp_path, oil_white):
    oil = np.zeros((16, 16), bool)
    oil[4:8, 2:12] = True
    mask = np.where(oil == oil_white, 255, 0).astype(np.uint8)
    image = np.where(oil, 40, 170).astype(np.uint8)
    for name in ("palsar", "sentinel"):
        _save(tmp_path / "train" / name / "10_sat.jpg", image)
        _save(tmp_path / "train" / name / "10_mask.png", mask)
        _save(tmp_path / "test" / name / "sat" / "7.jpg", image)
        _save(tmp_path / "test" / name / "gt" / "7.png", mask)
    for split in ("train", "test", "train/palsar"):
        dataset = open_sar_dataset(tmp_path, split)
        assert dataset.layout == "sos" and dataset.classes == BINARY_CLASSES
        assert len(dataset) == (1 if "/" in split else 2) and dataset.oil_is_white == oil_white
        raw, valid, labels, _ = dataset.read(0)
        np.testing.assert_array_equal(labels, oil.astype(np.int64))
    (tmp_path / "test" / "sentinel" / "gt" / "7.png").unlink()
    with pytest.raises(RasterError, match="sentinel"):
        open_sar_dataset(tmp_path, "test")


def test_unrecognised_layout_names_the_folder(tmp_path):
    _save(tmp_path / "train" / "square.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(RasterError, match=str(tmp_path)):
        open_sar_dataset(tmp_path)
    with pytest.raises(RasterError, match="does not exist"):
        open_sar_dataset(tmp_path / "missing")


def test_crop_dataset_items(tmp_path):
    root = write_sar_dataset(tmp_path / "ds", count=2, size=40, seed=3)
    dataset = open_sar_dataset(root)
    train = SarCropDataset(dataset, SarScaling(), crop=32, samples_per_image=3)
    assert len(train) == 6
    x, labels, soft = train[0]
    assert x.shape == (1, 32, 32) and x.dtype.is_floating_point and labels.shape == (32, 32)
    assert soft.shape == (5, 32, 32) and not soft.any()
    assert -1 <= x.min() < -0.8 and 0.8 < x.max() <= 1   # the scene's stretch, not the crop's
    evaluation = SarCropDataset(dataset, SarScaling(), crop=48, train=False)
    assert len(evaluation) == 2
    x, labels, soft = evaluation[1]
    full_x, full_labels, _ = scaled_sample(dataset, 1, SarScaling())
    np.testing.assert_array_equal(labels[:40, :40].numpy(), full_labels)
    np.testing.assert_allclose(x[0, :40, :40].numpy(), full_x)
    assert (labels[40:] == -100).all() and (labels[:, 40:] == -100).all() and (x[0, 40:] == 0).all()


def test_saturated_product_clips_the_brightest_share_and_restretches_the_rest(scenes):
    sigma0 = scenes[0][0]
    stretched = SceneScaler.fit(sigma0, None, "float32", SarScaling())(sigma0)
    saturated = saturate(stretched, 0.09)
    # the same scene as an 8-bit product that clipped its brightest 9%, through the same 1-99% stretch
    clipped = np.minimum(sigma0, np.percentile(sigma0, 91))
    expected = SceneScaler.fit(clipped, None, "float32", SarScaling())(clipped)
    np.testing.assert_allclose(saturated, expected, atol=1e-4)
    assert 0.09 <= (saturated >= 1 - 1e-6).mean() < 0.1   # a flat top, as real 8-bit crops have (test8: 9%)
    assert saturated.min() == -1


def test_crop_dataset_saturates_the_share_of_images_it_is_asked_to(tmp_path):
    root = write_sar_dataset(tmp_path / "ds", count=1, size=64, seed=3)
    dataset = open_sar_dataset(root)
    plain = SarCropDataset(dataset, SarScaling(), crop=64, samples_per_image=20)
    always = SarCropDataset(dataset, SarScaling(), crop=64, samples_per_image=20, saturation=1.0)
    top = lambda x: float((x >= 1 - 1e-6).float().mean())   # noqa: E731
    assert all(top(plain[i][0]) <= 0.011 for i in range(20))
    assert all(SATURATED_SHARE[0] - 0.005 <= top(always[i][0]) <= SATURATED_SHARE[1] + 0.01 for i in range(20))
    evaluation = SarCropDataset(dataset, SarScaling(), crop=64, train=False, saturation=1.0)
    assert top(evaluation[0][0]) <= 0.011   # never when scoring


def test_crop_dataset_on_real_crops():
    dataset = open_sar_dataset(shared_data("sar_oilspill"), "train")
    x, labels, soft = SarCropDataset(dataset, SarScaling(), crop=128)[2]
    assert x.shape == (1, 128, 128) and labels.shape == (128, 128) and soft.shape == (2, 128, 128)
    assert not soft.any() and set(labels.unique().tolist()) <= {0, 1}
    assert x.min() >= -1 and x.max() <= 1


def test_mosaic_places_tiles_in_their_quadrants(tmp_path):
    root = write_sar_dataset(tmp_path / "gen", count=4, size=24, seed=5)
    soft = _write_soft(root, stems=[f"scene_{k:04d}" for k in range(4)])
    dataset = open_sar_dataset(root)
    mosaic = MosaicDataset(dataset, SarScaling())
    assert len(mosaic) == 1 and len(MosaicDataset(dataset, SarScaling(), length=7)) == 7
    x, labels, mosaic_soft = mosaic.compose([2, 0, 3, 1])
    assert x.shape == (1, 48, 48) and labels.shape == (48, 48) and mosaic_soft.shape == (5, 48, 48)
    for (top, left), tile in zip([(0, 0), (0, 24), (24, 0), (24, 24)], [2, 0, 3, 1]):
        tile_x, tile_labels, _ = scaled_sample(dataset, tile, SarScaling())
        np.testing.assert_array_equal(labels[top:top + 24, left:left + 24].numpy(), tile_labels)
        np.testing.assert_allclose(x[0, top:top + 24, left:left + 24].numpy(), tile_x)
        np.testing.assert_allclose(mosaic_soft[:, top:top + 24, left:left + 24].numpy(), soft[f"scene_{tile:04d}"])
    x, labels, _ = mosaic[0]
    tiles = [scaled_sample(dataset, k, SarScaling())[1] for k in range(4)]
    for top, left in [(0, 0), (0, 24), (24, 0), (24, 24)]:
        quadrant = labels[top:top + 24, left:left + 24].numpy()
        assert any(np.array_equal(quadrant, tile) for tile in tiles)


def _write_soft(root, stems):
    """Soft labels like a teacher's: 0.8 on the hard class, the rest spread over the others."""
    soft = {}
    for stem in stems:
        labels = rasterio.open(root / "masks" / f"{stem}.tif").read(1)
        probs = np.full((5, *labels.shape), 0.05, np.float32)
        for k in range(5):
            probs[k][labels == k] = 0.8
        with rasterio.open(root / "images" / f"{stem}.tif") as src:
            write_geotiff(root / "soft" / f"{stem}.tif", probs, crs_wkt=src.crs.to_wkt(),
                          transform=tuple(src.transform)[:6])
        soft[stem] = probs
    return soft


def _save(path, array, rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack([array] * 3, -1) if rgb else array).save(path, quality=95)
