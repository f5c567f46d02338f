"""Bi-temporal change data: the A/B/label layout, change masks (0/1, 0/255, nodata), procedural pairs whose
only non-global differences are the changed buildings, and patches that keep a, b and mask aligned."""
import numpy as np
import pytest
import rasterio
import torch
from scipy import ndimage

from core.data.change import (CHANGE_FOLDERS, MASK_IGNORE, ChangePatchDataset, list_change_triplets,
                              make_change_pair, read_change_mask, write_change_dataset)
from core.data.scenes import BUILDING, SOIL, VEGETATION, make_scene
from core.raster import RasterError
from tests.conftest import shared_data, write_test_raster

SIZE = 128


def write_triplet(root, name, a, b, mask, mask_nodata=None, a_nodata=None):
    for folder, array, nodata in (("A", a, a_nodata), ("B", b, None), ("label", mask, mask_nodata)):
        write_test_raster(root / folder / f"{name}.tif", array, nodata=nodata)
    return root


def flat_triplet(root, name="x", size=(16, 16), bands=3, value=100):
    image = np.full((bands, *size), value, np.uint8)
    return write_triplet(root, name, image, image, np.zeros(size, np.uint8))


# --- layout and masks -----------------------------------------------------------------------------------------

def test_triplets_are_matched_by_name_and_errors_name_the_folder(tmp_path):
    root = flat_triplet(tmp_path / "set", "b_pair")
    flat_triplet(root, "a_pair")
    triplets = list_change_triplets(root)
    assert [tuple(p.parent.name for p in t) for t in triplets] == [CHANGE_FOLDERS] * 2
    assert [t[0].stem for t in triplets] == ["a_pair", "b_pair"]
    assert all(len({p.name for p in t}) == 1 for t in triplets)

    (root / "label" / "b_pair.tif").unlink()
    with pytest.raises(RasterError, match=r"label.*b_pair"):
        list_change_triplets(root)
    for path in (root / "B").iterdir():
        path.unlink()
    (root / "B").rmdir()
    with pytest.raises(RasterError, match=r"no folder B/"):
        list_change_triplets(root)
    with pytest.raises(RasterError, match="does not exist"):
        list_change_triplets(tmp_path / "nowhere")


def test_masks_zero_one_zero_255_and_nodata(tmp_path):
    zero_one = np.array([[0, 1, 1], [0, 0, 255]], np.uint8)     # 255 = label nodata here
    path = write_test_raster(tmp_path / "m01.tif", zero_one, nodata=255)
    np.testing.assert_array_equal(read_change_mask(path), [[0, 1, 1], [0, 0, MASK_IGNORE]])
    levir = np.array([[0, 255], [255, 0]], np.uint8)
    assert read_change_mask(write_test_raster(tmp_path / "m255.tif", levir)).tolist() == [[0, 1], [1, 0]]
    jpeg_like = np.array([[3, 250], [127, 128]], np.uint8)      # 0/255 with compression noise: threshold 128
    assert read_change_mask(write_test_raster(tmp_path / "mj.tif", jpeg_like)).tolist() == [[0, 1], [0, 1]]
    assert read_change_mask(path).dtype == np.int64


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_dsifn_masks_read_as_zero_one():
    root = shared_data("cd_dsifn")
    triplets = list_change_triplets(root)
    assert len(triplets) == 10
    values = set()
    for _, _, label in triplets:
        mask = read_change_mask(label)
        assert mask.shape == (256, 256)
        values |= set(np.unique(mask).tolist())
    assert values == {0, 1}


# --- procedural pairs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_procedural_pair_changes_only_on_the_mask(seed):
    """Inside the mask B departs from A far beyond the noise; elsewhere (away from vegetation, which changes
    with the season, and from the changed buildings' shadows) B is a per-band linear function of A plus noise."""
    a, b, mask = make_change_pair(SIZE, SIZE, seed)
    _, labels = make_scene(SIZE, SIZE, seed)
    assert a.dtype == b.dtype == mask.dtype == np.uint8 and a.shape == b.shape == (3, SIZE, SIZE)
    assert a.min() >= 1 and b.min() >= 1 and set(np.unique(mask)) <= {0, 1}
    changed = mask.astype(bool)
    assert 0.005 < changed.mean() < 0.2

    # The mask is whole footprints: each of A's buildings is changed entirely or not at all, and new ones
    # stand on A's soil or vegetation.
    buildings, _ = ndimage.label(labels == BUILDING)
    sites, n_sites = ndimage.label(changed)
    for site in range(1, n_sites + 1):
        pixels = sites == site
        demolished = np.unique(buildings[pixels])
        demolished = demolished[demolished > 0]
        if demolished.size:       # exactly the footprint(s) of A's building(s), nothing around them
            np.testing.assert_array_equal(pixels, np.isin(buildings, demolished))
        else:                     # a new building on A's soil or vegetation
            assert np.isin(labels[pixels], [SOIL, VEGETATION]).all()

    away = ~(ndimage.binary_dilation(changed, iterations=14) |
             ndimage.binary_dilation(labels == VEGETATION, iterations=3))
    assert away.mean() > 0.1
    outside_std, inside_error = [], []
    for band in range(3):
        fit = np.polyfit(a[band][away].astype(float), b[band][away].astype(float), 1)
        residual = b[band].astype(float) - np.polyval(fit, a[band].astype(float))
        outside_std.append(residual[away].std())
        assert np.percentile(np.abs(residual[away]), 99) < 15
        inside_error.append(np.abs(residual[changed]).mean())
        # white noise: no structure left in 16 px blocks (a gradient or a local change would show here)
        blocks = (np.where(away, residual, 0).reshape(8, 16, 8, 16).sum((1, 3)),
                  away.reshape(8, 16, 8, 16).sum((1, 3)))
        block_means = blocks[0][blocks[1] >= 64] / blocks[1][blocks[1] >= 64]
        assert np.abs(block_means).max() < 2.0
    assert max(outside_std) < 5.0                          # sensor noise only (1.5-4 DN in A, 1.5-3 in B)
    assert np.mean(inside_error) > 5 * max(outside_std)
    # every changed building stands out on its own
    for site in range(1, n_sites + 1):
        pixels = sites == site
        difference = np.abs(b[:, pixels].astype(float) - a[:, pixels].astype(float)).mean()
        assert difference > 12, f"changed site {site} of seed {seed} barely differs from A"


def test_changed_fraction_is_a_few_percent_on_average():
    fractions = [make_change_pair(SIZE, SIZE, seed)[2].mean() for seed in range(10, 18)]
    assert 0.03 <= np.mean(fractions) <= 0.10


def test_nir_adds_a_fourth_band_and_keeps_rgb_and_mask():
    a3, b3, m3 = make_change_pair(96, 112, 5)
    a4, b4, m4 = make_change_pair(96, 112, 5, nir=True)
    assert a4.shape == b4.shape == (4, 96, 112)
    np.testing.assert_array_equal(a4[:3], a3)
    np.testing.assert_array_equal(b4[:3], b3)
    np.testing.assert_array_equal(m4, m3)
    scene, labels = make_scene(96, 112, 5, nir=True)
    np.testing.assert_array_equal(a4, scene)
    vegetation = labels == VEGETATION
    assert b4[3][vegetation].mean() > b4[0][vegetation].mean()    # NIR stays the bright band of vegetation


def test_dataset_on_disk_is_georeferenced_with_band_names_and_a_coloured_label(tmp_path):
    folder = write_change_dataset(tmp_path / "cd", count=2, size=64, seed=3, nir=True)
    triplets = list_change_triplets(folder)
    assert [t[0].name for t in triplets] == ["pair_0000.tif", "pair_0001.tif"]
    for a, b, label in triplets:
        with rasterio.open(a) as sa, rasterio.open(b) as sb, rasterio.open(label) as sl:
            assert sa.crs.to_epsg() == sb.crs.to_epsg() == sl.crs.to_epsg() == 32633
            assert sa.transform == sb.transform == sl.transform and sa.res == (0.5, 0.5)
            assert sa.descriptions == sb.descriptions == ("red", "green", "blue", "nir")
            assert sl.descriptions == ("change",) and sl.dtypes[0] == "uint8"
            assert sl.colormap(1)[1] == (255, 0, 0, 255) and sl.colormap(1)[0] == (0, 0, 0, 255)
            assert set(np.unique(sl.read(1))) <= {0, 1}


# --- patches -----------------------------------------------------------------------------------------------------

def asymmetric_l(size=16):
    """An L with arms of different lengths and a dot: no rotation or flip maps it onto itself."""
    shape = np.zeros((size, size), bool)
    shape[3, 3:10] = True
    shape[3:7, 3] = True
    shape[12, 13] = True
    return shape


def test_train_patches_share_one_rotation_and_flip(tmp_path):
    shape = asymmetric_l()
    a = np.full((3, 16, 16), 20, np.uint8)
    b = np.full((3, 16, 16), 20, np.uint8)
    a[0][shape] = 240
    b[2][shape] = 240
    root = write_triplet(tmp_path / "set", "l", a, b, shape.astype(np.uint8) * 255)
    dataset = ChangePatchDataset(list_change_triplets(root), 16, samples_per_image=64, train=True)
    assert len(dataset) == 64
    torch.manual_seed(0)
    seen = set()
    for i in range(len(dataset)):
        pa, pb, pm = dataset[i]
        assert pa.dtype == pb.dtype == torch.float32 and pm.dtype == torch.int64
        assert pa.shape == pb.shape == (3, 16, 16) and pm.shape == (16, 16)
        assert 0 <= pa.min() and pa.max() <= 1
        marked = (pa[0] > 0.5).numpy()
        np.testing.assert_array_equal(marked, (pb[2] > 0.5).numpy())
        np.testing.assert_array_equal(marked, (pm == 1).numpy())
        seen.add(marked.tobytes())
    assert len(seen) == 8          # all eight rotations / flips occur, never two different ones at once


def test_eval_tiles_cover_every_pixel_once_and_pad_small_images(tmp_path):
    root = tmp_path / "set"
    rng = np.random.default_rng(0)
    big = rng.integers(1, 255, (3, 40, 56)).astype(np.uint8)
    label = (rng.random((40, 56)) < 0.3).astype(np.uint8)
    write_triplet(root, "big", big, big, label)
    small = np.full((3, 20, 24), 50, np.uint8)
    small[:, 0, 0] = 0                                     # A's nodata
    write_triplet(root, "small", small, small, np.ones((20, 24), np.uint8), a_nodata=0)
    dataset = ChangePatchDataset(list_change_triplets(root), 32, samples_per_image=9, train=False)
    assert len(dataset) == 2 * 2 + 1
    counted = changed = 0
    for i in range(4):             # "big" comes first (sorted names): tiles at rows 0, 8 and columns 0, 24
        _, _, mask = dataset[i]
        counted += int((mask != MASK_IGNORE).sum())
        changed += int((mask == 1).sum())
    assert counted == 40 * 56 and changed == label.sum()
    a, _, mask = dataset[4]
    assert a.shape == (3, 32, 32)
    assert (mask[20:] == MASK_IGNORE).all() and (mask[:, 24:] == MASK_IGNORE).all() and (a[:, 20:] == 0).all()
    assert mask[0, 0] == MASK_IGNORE and a[:, 0, 0].eq(0).all()
    assert int((mask == 1).sum()) == 20 * 24 - 1
    assert torch.allclose(a[:, 5, 5], torch.full((3,), 50 / 255))


def test_non_8bit_images_are_stretched_and_band_counts_must_match(tmp_path):
    root = tmp_path / "set"
    a = np.random.default_rng(1).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    b = (np.random.default_rng(2).integers(0, 4000, (3, 32, 32))).astype(np.uint16)
    write_triplet(root, "p", a, b, np.zeros((32, 32), np.uint8))
    dataset = ChangePatchDataset(list_change_triplets(root), 32, train=False)
    _, pb, _ = dataset[0]
    assert 0 <= pb.min() < 0.02 and 0.98 < pb.max() <= 1
    assert dataset.unit_ranges()[0] == 0 and dataset.unit_ranges()[1] > 3900

    write_test_raster(root / "B" / "p.tif", b[:2])
    with pytest.raises(RasterError, match=r"A/p.tif' has 3 band\(s\) but .*B/p.tif' has 2"):
        ChangePatchDataset(list_change_triplets(root), 32)
